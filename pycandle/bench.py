"""Benchmark of recurrent layers: PyTorch against Candle's candle-nn layers and PyCandle's.

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

Peak memory is measured by running one forward of each contender in a fresh process: the growth
of the resident set (Linux VmHWM, reset just before the forward) over its size before.

Prints a table with the medians and the ratios pycandle/pytorch and baseline/pycandle (medians of the
per-round ratios, which the rotation pairs up), and writes everything to reports/bench.json.

    python pycandle/bench.py [--rounds N] [--warmup N] [--threads N] [--only NAME ...]
                             [--no-memory] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def _proc_status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def torch_memory(prefix: str, threads: int) -> dict:
    """One PyTorch forward in this (fresh) process: resident-set growth, as the Rust side does."""
    import torch

    torch.set_num_threads(threads)
    module, x = load_torch(prefix)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        reset = True
    except OSError:
        reset = False
    before = _proc_status_kb("VmRSS")
    start = time.perf_counter()
    module(x)
    seconds = time.perf_counter() - start
    return {"rss_before_kb": before, "hwm_kb": _proc_status_kb("VmHWM"), "hwm_reset": reset,
            "seconds": seconds}


def build_bench(env: dict) -> str:
    """Builds the Rust benchmark; returns the path of its executable."""
    cmd = ["cargo", "bench", "-p", "pycandle-runtime", "--bench", "recurrent", "--no-run",
           "--message-format=json"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for msg in messages:
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "recurrent" \
                and msg.get("executable") and done.returncode == 0:
            return msg["executable"]
    rendered = "".join(m["message"].get("rendered") or "" for m in messages
                       if m.get("reason") == "compiler-message")
    raise RuntimeError(f"building the Rust benchmark failed:\n{rendered}")


class RustBench:
    """The Rust benchmark in `--serve` mode."""

    def __init__(self, exe: str, env: dict):
        self.proc = subprocess.Popen([exe, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the Rust benchmark exited while answering {line!r}")
        return json.loads(reply)

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def _summary(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2], "min": min(xs),
            "max": max(xs), "n": len(xs)}


def time_shape(spec: dict, prefix: Path, rust: RustBench, rounds: int, warmup: int) -> dict:
    """Times the three contenders in rotating order; returns raw seconds and summaries."""
    import torch

    module, x = load_torch(str(prefix))
    check = rust.ask(f"load {spec['name']} {prefix}")

    def run(contender: str) -> float:
        if contender == "pytorch":
            start = time.perf_counter()
            module(x)
            return time.perf_counter() - start
        return rust.ask(f"run {spec['name']} {contender}")["seconds"]

    with torch.no_grad():
        for _ in range(warmup):
            for c in CONTENDERS:
                run(c)
        seconds = {c: [] for c in CONTENDERS}
        for i in range(rounds):
            order = CONTENDERS[i % 3:] + CONTENDERS[:i % 3]
            for c in order:
                seconds[c].append(run(c))
    rust.ask(f"drop {spec['name']}")
    paired = {
        "pycandle/pytorch": [k / p for k, p in zip(seconds["pycandle"], seconds["pytorch"])],
        "baseline/pycandle": [b / k for b, k in zip(seconds["baseline"], seconds["pycandle"])],
        "baseline/pytorch": [b / p for b, p in zip(seconds["baseline"], seconds["pytorch"])],
    }
    return {
        "check": check,
        "seconds": seconds,
        "summary": {c: _summary(v) for c, v in seconds.items()},
        "ratios": {k: _summary(v) for k, v in paired.items()},
    }


def memory_shape(prefix: Path, exe: str, env: dict, threads: int) -> dict:
    """Each contender's resident-set growth over one forward, each in a fresh process."""
    out = {}
    for c in CONTENDERS:
        if c == "pytorch":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-memory", str(prefix),
                   "--threads", str(threads)]
        else:
            cmd = [exe, "--mem", str(prefix), c]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
        m = json.loads(done.stdout.strip().splitlines()[-1])
        m["growth_mb"] = max(0, m["hwm_kb"] - m["rss_before_kb"]) / 1024
        out[c] = m
    return out


def _ratio_cell(q: dict) -> str:
    return f"{q['median']:.2f} [{q['p25']:.2f}-{q['p75']:.2f}]"


def _table(results: dict, threads: int, load: tuple[float, float]):
    from rich.markup import escape
    from rich.table import Table

    title = (f"Recurrent layers, f32, CPU, {threads} threads (medians; ratios: median of "
             f"per-round ratios [p25-p75]); load average {load[0]:.2f} before, {load[1]:.2f} after")
    t = Table(title=escape(title))
    for col in ("shape", "PyTorch ms", "candle-nn ms", "PyCandle ms", "PyCandle/PyTorch",
                "candle-nn/PyCandle", "peak RSS growth MB (PT / cn / PC)", "max |err| PyCandle"):
        t.add_column(col, justify="left" if col == "shape" else "right")
    for name, r in results.items():
        s, q = r["summary"], r["ratios"]
        mem = r.get("memory")
        mem_cell = " / ".join(f"{mem[c]['growth_mb']:.0f}" for c in CONTENDERS) if mem else "-"
        t.add_row(name, *(f"{s[c]['median'] * 1e3:.1f}" for c in CONTENDERS),
                  _ratio_cell(q["pycandle/pytorch"]), _ratio_cell(q["baseline/pycandle"]), mem_cell,
                  f"{r['check']['pycandle_err']:.1e}")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="timed rounds per shape (default: per shape)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for every contender (default: all cores)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="shapes to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    ap.add_argument("--torch-memory", metavar="PREFIX", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.torch_memory:
        print(json.dumps(torch_memory(args.torch_memory, args.threads)))
        return 0

    import torch
    from rich.console import Console

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    torch.set_num_threads(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    specs = [_spec(row) for row in SHAPES]
    if args.only:
        unknown = set(args.only) - {s["name"] for s in specs}
        if unknown:
            ap.error(f"unknown shapes {sorted(unknown)}; known: {[s['name'] for s in specs]}")
        specs = [s for s in specs if s["name"] in args.only]

    console.print("[bold]building[/bold] the Rust benchmark")
    exe = build_bench(env)
    results = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pycandle-bench-") as tmp:
        rust = RustBench(exe, env)
        try:
            for spec in specs:
                prefix = write_shape(spec, Path(tmp))
                rounds = args.rounds or spec["rounds"]
                console.print(f"[bold]timing[/bold] {spec['name']} ({rounds} rounds)")
                r = time_shape(spec, prefix, rust, rounds, args.warmup)
                if not args.no_memory:
                    r["memory"] = memory_shape(prefix, exe, env, args.threads)
                r["spec"] = spec
                results[spec["name"]] = r
        finally:
            rust.close()

    load_after = os.getloadavg()
    console.print(_table(results, args.threads, (load_before[0], load_after[0])))
    report = {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "loadavg_before": load_before,
                    "loadavg_after": load_after},
        "rounds_warmup": args.warmup,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    console.print(f"wrote {args.out}")
    worst = max((r["check"]["pycandle_err"] for r in results.values()), default=0.0)
    if worst > 1e-4:
        console.print(f"[red]PyCandle output differs from PyTorch by {worst:.1e}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
