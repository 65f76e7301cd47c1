"""Recurrent layers: PyTorch against Candle's candle-nn layers and PyCandle's.

For each shape, random weights are drawn in PyTorch and saved (PyTorch's parameter names, plus the
input and PyTorch's output) to safetensors in a temporary directory. The Rust benchmark
(pycandle/runtime/benches/recurrent.rs) is built and started in its `--serve` mode; then one
loop, after warm-up, times the three contenders in rotating order on the same weights and input,
with the same number of threads:

* pytorch: eager `torch.nn.LSTM` / `torch.nn.GRU` under `torch.no_grad()`, in this process;
* baseline: `candle_nn::lstm` / `candle_nn::gru` layers stacked and run with `RNN::seq` (the way
  candle-transformers' EncodecLSTM does);
* pycandle: `pycandle_runtime::Lstm` / `Gru`, as generated code uses them (on the CPU, each layer
  is one call of the kernels in `pycandle_runtime::kernel`, input projection included).

Run through `python -m pycandle.bench` (see the package's docstring).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pycandle.bench.common import (
    ROOT, Served, alternate, cargo_executable, fresh_memory, measure_forward, ratio_cell, ratios,
    summary, torch_memory_cmd,
)

CONTENDERS = ("pytorch", "baseline", "pycandle")

# name, kind, input size, hidden size, layers, bidirectional, steps, batch, rounds (default)
SHAPES = [
    # The VoiceEncoder's LSTM, one utterance and a batch.
    ("lstm3x256_b1", "lstm", 40, 256, 3, False, 160, 1, 30),
    ("lstm3x256_b10", "lstm", 40, 256, 3, False, 160, 10, 20),
    # A large bidirectional encoder.
    ("bilstm2x512_b16", "lstm", 512, 512, 2, True, 400, 16, 5),
    ("bigru2x512_b16", "gru", 512, 512, 2, True, 400, 16, 5),
]
NAMES = [row[0] for row in SHAPES]


def _spec(row: tuple) -> dict:
    name, kind, input_size, hidden, layers, bidirectional, steps, batch, rounds = row
    return {"name": name, "kind": kind, "input_size": input_size, "hidden_size": hidden,
            "num_layers": layers, "bidirectional": bidirectional, "steps": steps, "batch": batch,
            "rounds": rounds}


def _module(spec: dict):
    import torch

    cls = torch.nn.LSTM if spec["kind"] == "lstm" else torch.nn.GRU
    return cls(spec["input_size"], spec["hidden_size"], num_layers=spec["num_layers"],
               bidirectional=spec["bidirectional"]).eval()


def write_shape(spec: dict, directory: Path, seed: int = 0) -> Path:
    """Random weights, input and PyTorch's output for `spec`; returns the file prefix."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    module = _module(spec)
    x = torch.randn(spec["steps"], spec["batch"], spec["input_size"])
    with torch.no_grad():
        y = module(x)[0]
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors.update(input=x.contiguous(), output=y.contiguous())
    prefix = directory / spec["name"]
    save_file(tensors, f"{prefix}.safetensors")
    Path(f"{prefix}.json").write_text(json.dumps(spec))
    return prefix


def load_torch(prefix: str):
    """The PyTorch module and input saved under `prefix`."""
    import torch
    from safetensors.torch import load_file

    spec = json.loads(Path(f"{prefix}.json").read_text())
    tensors = load_file(f"{prefix}.safetensors")
    module = _module(spec)
    module.load_state_dict({k: v for k, v in tensors.items() if k not in ("input", "output")})
    torch.set_grad_enabled(False)
    return module, tensors["input"]


def torch_memory(prefix: str) -> dict:
    """One PyTorch forward in this (fresh) process: resident-set growth, as the Rust side does."""
    module, x = load_torch(prefix)
    return measure_forward(lambda: module(x))


def build_bench(env: dict, avx512: bool = True) -> str:
    """Builds the Rust benchmark (without the runtime's `avx512` feature, Candle's matmuls on
    AVX2, for not `avx512`); returns the path of its executable."""
    cmd = ["cargo", "bench", "-p", "pycandle-runtime", "--bench", "recurrent", "--no-run",
           "--message-format=json", *([] if avx512 else ["--no-default-features"])]
    return cargo_executable(cmd, ROOT, env, "recurrent")


def time_shape(spec: dict, prefix: Path, rust: Served, rounds: int, warmup: int,
               gap: float) -> dict:
    """Times the three contenders in rotating order; returns raw seconds and summaries."""
    import torch

    module, x = load_torch(str(prefix))
    check = rust.ask(f"load {spec['name']} {prefix}")

    def pytorch() -> float:
        start = time.perf_counter()
        module(x)
        return time.perf_counter() - start

    def rust_side(contender: str):
        return lambda: rust.ask(f"run {spec['name']} {contender}")["seconds"]

    with torch.no_grad():
        seconds = alternate({"pytorch": pytorch, "baseline": rust_side("baseline"),
                             "pycandle": rust_side("pycandle")}, rounds, warmup, gap)
    rust.ask(f"drop {spec['name']}")
    return {
        "check": check,
        "seconds": seconds,
        "summary": {c: summary(v) for c, v in seconds.items()},
        "ratios": ratios(seconds, [("pycandle", "pytorch"), ("baseline", "pycandle"),
                                   ("baseline", "pytorch")]),
    }


def memory_shape(prefix: Path, exe: str, env: dict, threads: int) -> dict:
    """Each contender's resident-set growth over one forward, each in a fresh process."""
    return {c: fresh_memory(torch_memory_cmd(threads, "--torch-memory", str(prefix))
                            if c == "pytorch" else [exe, "--mem", str(prefix), c], env)
            for c in CONTENDERS}


def run(names: list[str], args, env: dict, console) -> dict:
    """Times the shapes `names`; returns their results by name."""
    console.print("[bold]building[/bold] the Rust benchmark of recurrent layers")
    exe = build_bench(env, avx512=args.isa != "avx2")
    results = {}
    with tempfile.TemporaryDirectory(prefix="pycandle-bench-") as tmp, Served(exe, env) as rust:
        for spec in (_spec(row) for row in SHAPES if row[0] in names):
            prefix = write_shape(spec, Path(tmp))
            rounds = args.rounds or spec["rounds"]
            console.print(f"[bold]timing[/bold] {spec['name']} ({rounds} rounds)")
            r = time_shape(spec, prefix, rust, rounds, args.warmup, args.gap)
            if not args.no_memory:
                r["memory"] = memory_shape(prefix, exe, env, args.threads)
            r["spec"] = spec
            results[spec["name"]] = r
    return results


def table(results: dict, title: str):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title))
    for col in ("shape", "PyTorch ms", "candle-nn ms", "PyCandle ms", "PyCandle/PyTorch",
                "candle-nn/PyCandle", "peak RSS growth MB (PT / cn / PC)", "max |err| PyCandle"):
        t.add_column(col, justify="left" if col == "shape" else "right")
    for name, r in results.items():
        s, q = r["summary"], r["ratios"]
        mem = r.get("memory")
        mem_cell = " / ".join(f"{mem[c]['growth_mb']:.0f}" for c in CONTENDERS) if mem else "-"
        t.add_row(name, *(f"{s[c]['median'] * 1e3:.1f}" for c in CONTENDERS),
                  ratio_cell(q["pycandle/pytorch"]), ratio_cell(q["baseline/pycandle"]), mem_cell,
                  f"{r['check']['pycandle_err']:.1e}")
    return t


def worst_error(results: dict) -> float:
    return max((r["check"]["pycandle_err"] for r in results.values()), default=0.0)
