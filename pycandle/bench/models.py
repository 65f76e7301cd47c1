"""Whole models: PyTorch eager against the Candle crate PyCandle generates for them.

The models are a models.yaml's (by default bench/models.yaml: a speaker encoder, the Tacotron-2
text encoder and a token tagger at their published sizes); each of a model's trace cases is a
row. PyCandle itself records them and generates their crate (`pycandle record` and `codegen`,
up to date checks included), into the scratch directories that config names (under target/).
This module then adds one binary to that crate, `src/bin/pycandle_bench.rs`, written from the
manifests: it loads any of the crate's models and serves timed forwards on stdin/stdout:

* `info`: the recurrent kernels' path (`pycandle_runtime::kernel_path()`), the thread count and
  the instruction sets the binary was compiled for and the CPU has;
* `load ROW MODEL WEIGHTS INPUTS`: loads MODEL (`Model::load` on the recorded weights) and the
  tensors of INPUTS (the forward's arguments by name, and `expected`, PyTorch's first output),
  runs it once and answers with the largest difference from `expected`;
* `run ROW`: one timed forward; `drop ROW`; `quit`.

`pycandle_bench --mem MODEL WEIGHTS INPUTS` is one forward in a fresh process, for peak memory;
`--loop MODEL WEIGHTS INPUTS N` runs N forwards and prints their median, for profilers.

The binary is built in release mode; PyTorch runs the model built by the factory, as `record`
built it (same seed, so the same weights), under `torch.no_grad()`, in this process.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from pycandle.bench.common import (
    ROOT, Served, alternate, cargo_executable, fresh_memory, measure_forward, ratio_cell, ratios,
    summary, torch_memory_cmd,
)

CONFIG = ROOT / "bench" / "models.yaml"
CONTENDERS = ("pytorch", "pycandle")
BIN = "pycandle_bench"
DEFAULT_ROUNDS = 10


@dataclass(frozen=True)
class Row:
    name: str  # `model[case]`
    model: str
    case: int
    inputs: dict[str, list[int]]  # forward argument -> shape


def rows(cfg, models: list[str]) -> list[Row]:
    """Every trace case of every model, from their manifests."""
    from pycandle.manifest import Manifest

    out = []
    for name in models:
        manifest = Manifest.load(cfg.artifacts / name / "manifest.json")
        for case, spec in enumerate(manifest.cases):
            out.append(Row(f"{name}[{case}]", name, case,
                           {k: list(v["shape"]) for k, v in spec["inputs"].items()}))
    return out


def row_names(cfg) -> list[str]:
    """What `--only` may name without recording anything: models, and `model[case]` rows."""
    return [n for mc in cfg.models for n in
            [mc.name, *(f"{mc.name}[{i}]" for i in range(len(mc.inputs)))]]


# ---------------------------------------------------------------------------------------------
# The Rust side

_SERVE_HEAD = '''\
//! Serves timed forwards of this crate's models to `python -m pycandle.bench`.
//! Written by `pycandle/bench/models.py` from the manifests; rewritten on every run.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use candle_core::{bail, DType, Device, Error, Result, Tensor};
use candle_nn::VarBuilder;

/// One forward of a loaded model on its inputs: its first output.
type Forward = Box<dyn Fn() -> Result<Tensor>>;

fn take(inputs: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    inputs
        .remove(name)
        .ok_or_else(|| Error::Msg(format!("the inputs file has no tensor {name:?}")))
}

#[allow(unused_variables)]
fn build(model: &str, weights: &str, inputs: &mut HashMap<String, Tensor>) -> Result<Forward> {
    let weights = candle_core::safetensors::load(weights, &Device::Cpu)?;
    Ok(match model {
'''

_SERVE_ARM = '''\
        "{name}" => {{
            let vb = VarBuilder::from_tensors(weights, DType::{dtype}, &Device::Cpu);
            let model = {lib}::{name}::{struct}::load(vb)?;
{takes}
            Box::new(move || {{
                let {pattern} = model.forward({args})?;
                Ok({first})
            }})
        }}
'''

_SERVE_TAIL = '''\
        other => bail!("this crate has no model {other:?}"),
    })
}

/// The model and its inputs, with PyTorch's output when the file has one.
fn load(model: &str, weights: &str, inputs: &str) -> Result<(Forward, Option<Tensor>)> {
    let mut inputs = candle_core::safetensors::load(inputs, &Device::Cpu)?;
    let expected = inputs.remove("expected");
    Ok((build(model, weights, &mut inputs)?, expected))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    if a.dims() != b.dims() {
        bail!("output shape {:?}, PyTorch's {:?}", a.dims(), b.dims());
    }
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

fn timed(forward: &Forward) -> Result<f64> {
    let start = Instant::now();
    let out = forward()?;
    let seconds = start.elapsed().as_secs_f64();
    drop(out);
    Ok(seconds)
}

fn json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The instruction sets this binary was compiled for, and those the CPU has.
fn info() -> String {
    let mut compiled: Vec<&str> = Vec::new();
    let mut detected: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! feature {
            ($($f:tt),*) => {$(
                if cfg!(target_feature = $f) { compiled.push($f); }
                if std::is_x86_feature_detected!($f) { detected.push($f); }
            )*};
        }
        feature!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f");
    }
    format!(
        "{{\\"kernel_path\\": {:?}, \\"gemm\\": {:?}, \\"threads\\": {}, \\"compiled_features\\": {}, \\"detected_features\\": {}}}",
        pycandle_runtime::example::kernel_name(),
        pycandle_runtime::example::gemm_kernel_name(),
        pycandle_runtime::kernel::default_threads(),
        json_list(&compiled),
        json_list(&detected),
    )
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn serve() -> Result<()> {
    let mut loaded: HashMap<String, Forward> = HashMap::new();
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["info"] => info(),
            ["load", row, model, weights, inputs] => {
                let start = Instant::now();
                let (forward, expected) = load(model, weights, inputs)?;
                let load_seconds = start.elapsed().as_secs_f64();
                let out = forward()?;
                let err = match expected {
                    Some(e) => format!("{:e}", max_abs_diff(&out, &e)?),
                    None => "null".to_string(),
                };
                loaded.insert(row.to_string(), forward);
                format!(
                    "{{\\"max_abs_err\\": {err}, \\"load_seconds\\": {load_seconds}, \\"output_shape\\": {:?}}}",
                    out.dims()
                )
            }
            ["run", row] => {
                let Some(forward) = loaded.get(*row) else {
                    bail!("{row} is not loaded")
                };
                format!("{{\\"seconds\\": {}}}", timed(forward)?)
            }
            ["drop", row] => {
                loaded.remove(*row);
                format!("{{\\"dropped\\": {row:?}}}")
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        };
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--serve"] => serve(),
        ["--mem", model, weights, inputs] => {
            let (forward, _) = load(model, weights, inputs)?;
            // Writing 5 to clear_refs resets the high-water mark to the current size.
            let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
            let rss_before = proc_status_kb("VmRSS");
            let seconds = timed(&forward)?;
            println!(
                "{{\\"rss_before_kb\\": {rss_before}, \\"hwm_kb\\": {}, \\"hwm_reset\\": {reset}, \\"seconds\\": {seconds}}}",
                proc_status_kb("VmHWM")
            );
            Ok(())
        }
        ["--loop", model, weights, inputs, n] => {
            let n: usize = n.parse().map_err(Error::wrap)?;
            let (forward, _) = load(model, weights, inputs)?;
            let mut times = (0..n.max(1)).map(|_| timed(&forward)).collect::<Result<Vec<_>>>()?;
            times.sort_by(f64::total_cmp);
            println!("{model}: median {:.3} ms over {n} forwards", times[times.len() / 2] * 1e3);
            Ok(())
        }
        _ => bail!("usage: pycandle_bench --serve | --mem MODEL WEIGHTS INPUTS | --loop MODEL WEIGHTS INPUTS N"),
    }
}
'''


def render_serve(cfg, models: list[str]) -> str:
    """The serving binary's source for `models` of the crate `cfg.crate`."""
    from pycandle.codegen import cargo, rustfmt
    from pycandle.lowering.lower import lower
    from pycandle.manifest import Manifest
    from pycandle.rust import rust_str

    lib = cargo.lib_name(cfg.crate)
    arms = []
    for name in models:
        manifest = Manifest.load(cfg.artifacts / name / "manifest.json")
        ir = lower(manifest)
        locals_ = [f"in_{i}" for i in range(len(manifest.inputs))]
        takes = "\n".join(f"            let {local} = take(inputs, {rust_str(key)})?;"
                          for local, key in zip(locals_, manifest.inputs))
        arms.append(_SERVE_ARM.format(
            name=name, dtype=ir.dtype, lib=lib, struct=ir.struct, takes=takes,
            pattern=ir.out_pattern, args=", ".join(f"&{v}" for v in locals_),
            first=ir.model_checks[0].var))
    return rustfmt(_SERVE_HEAD + "".join(arms) + _SERVE_TAIL, "the benchmark's server")


def prepare(cfg, models: list[str], env: dict, force: bool, console,
            profile: str = "release", avx512: bool = True) -> str:
    """Records and generates `models` with PyCandle (when not up to date), adds the serving
    binary and builds it with the cargo `profile` (for not `avx512`, with the runtime's
    `avx512` feature off); returns its executable."""
    from pycandle.cli import cmd_codegen, cmd_record

    lock = cfg.crate / "Cargo.lock"
    if not lock.exists():  # the same crate versions as the workspace: candle builds once
        cfg.crate.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "Cargo.lock", lock)
    if cmd_record(cfg, models, force) or cmd_codegen(cfg, models, force):
        raise RuntimeError("PyCandle could not record or generate the benchmark's models")
    # every model of the crate, so that a run with --only keeps the others servable
    source = render_serve(cfg, [m.name for m in cfg.models
                                if (cfg.crate / "src" / f"{m.name}.rs").is_file()])
    target = cfg.crate / "src" / "bin" / f"{BIN}.rs"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_text() != source:
        target.write_text(source)
    console.print(f"[bold]building[/bold] {BIN} ({profile}) in {cfg.crate}")
    cmd = ["cargo", "build", "--profile", profile, "--bin", BIN, "--message-format=json"]
    features = (contextlib.nullcontext() if avx512
                else runtime_without_default_features(cfg.crate / "Cargo.toml"))
    with features:
        return cargo_executable(cmd, cfg.crate, env, BIN)


@contextlib.contextmanager
def runtime_without_default_features(manifest: Path):
    """The crate's dependency on the runtime with `default-features = false` while the block
    runs (a feature set only the crate's own manifest can choose); the file's text is put back
    after."""
    text = manifest.read_text()
    doc = tomlkit.parse(text)
    entry = doc.get("dependencies", {}).get("pycandle-runtime")
    if not isinstance(entry, dict):
        raise RuntimeError(f"{manifest}: no [dependencies] entry for pycandle-runtime")
    entry["default-features"] = False
    manifest.write_text(tomlkit.dumps(doc))
    try:
        yield
    finally:
        manifest.write_text(text)


# ---------------------------------------------------------------------------------------------
# PyTorch's side


def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    for item in value:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def torch_model(cfg, name: str):
    """The model as `record` built it (factory, kwargs, seed, weights), in eval mode."""
    import torch

    from pycandle.record import build_model

    torch.set_grad_enabled(False)
    return build_model(cfg, cfg.select([name])[0])


def write_inputs(cfg, row: Row, model, directory: Path) -> tuple[Path, dict]:
    """The row's recorded inputs and PyTorch's first output on them (`expected`), in one file."""
    from safetensors.torch import load_file, save_file

    from pycandle.manifest import golden_input_key

    golden = load_file(str(cfg.artifacts / row.model / "golden.safetensors"))
    inputs = {k: golden[golden_input_key(row.case, k)].contiguous() for k in row.inputs}
    expected = _first_tensor(model(**inputs)).contiguous()
    path = directory / f"{row.model}.{row.case}.safetensors"
    save_file({**inputs, "expected": expected}, str(path))
    return path, inputs


def torch_memory(config: str, model: str, inputs: str) -> dict:
    """One PyTorch forward of `model` in this (fresh) process."""
    from safetensors.torch import load_file

    from pycandle.config import load_config

    cfg = load_config(config)
    module = torch_model(cfg, model)
    tensors = {k: v for k, v in load_file(inputs).items() if k != "expected"}
    return measure_forward(lambda: module(**tensors))


# ---------------------------------------------------------------------------------------------
# The run


def run(cfg, models: list[str], only_rows: set[str] | None, args, env: dict,
        console) -> tuple[dict, dict]:
    """Times every row of `models` (or only `only_rows`); returns the results by row and what
    the Rust side reported about itself."""
    exe = prepare(cfg, models, env, args.force_record, console, args.cargo_profile,
                  avx512=args.isa != "avx2")
    weights = {m: cfg.artifacts / m / "weights.safetensors" for m in models}
    results = {}
    with tempfile.TemporaryDirectory(prefix="pycandle-bench-") as tmp, Served(exe, env) as rust:
        info = rust.ask("info")
        for model in models:
            module = torch_model(cfg, model)
            for row in rows(cfg, [model]):
                if only_rows and row.name not in only_rows and model not in only_rows:
                    continue
                path, inputs = write_inputs(cfg, row, module, Path(tmp))
                rounds = args.rounds or DEFAULT_ROUNDS
                shapes = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in row.inputs.items())
                console.print(f"[bold]timing[/bold] {row.name} ({shapes}; {rounds} rounds)")
                check = rust.ask(f"load {row.name} {row.model} {weights[model]} {path}")

                def pytorch() -> float:
                    start = time.perf_counter()
                    module(**inputs)
                    return time.perf_counter() - start

                seconds = alternate(
                    {"pytorch": pytorch,
                     "pycandle": lambda: rust.ask(f"run {row.name}")["seconds"]},
                    rounds, args.warmup, args.gap)
                rust.ask(f"drop {row.name}")
                r = {"model": model, "case": row.case, "inputs": row.inputs, "check": check,
                     "seconds": seconds,
                     "summary": {c: summary(v) for c, v in seconds.items()},
                     "ratios": ratios(seconds, [("pycandle", "pytorch")])}
                if not args.no_memory:
                    r["memory"] = {
                        "pytorch": fresh_memory(torch_memory_cmd(
                            args.threads, "--torch-model-memory", str(cfg.path), model,
                            str(path)), env),
                        "pycandle": fresh_memory(
                            [exe, "--mem", model, str(weights[model]), str(path)], env),
                    }
                results[row.name] = r
    return results, info


def table(results: dict, title: str):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title))
    for col in ("model [case]", "inputs", "PyTorch ms", "PyCandle ms",
                "PyCandle/PyTorch median [p25-p75] (min-max)", "peak RSS growth MB (PT / PC)",
                "max |err|"):
        t.add_column(escape(col), justify="left" if col in ("model [case]", "inputs") else "right")
    for name, r in results.items():
        s, mem = r["summary"], r.get("memory")
        t.add_row(escape(name),
                  ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["inputs"].items()),
                  *(f"{s[c]['median'] * 1e3:.1f}" for c in CONTENDERS),
                  ratio_cell(r["ratios"]["pycandle/pytorch"]),
                  " / ".join(f"{mem[c]['growth_mb']:.0f}" for c in CONTENDERS) if mem else "-",
                  f"{r['check']['max_abs_err']:.1e}")
    return t


def worst_error(results: dict) -> float:
    return max((r["check"]["max_abs_err"] or 0.0 for r in results.values()), default=0.0)
