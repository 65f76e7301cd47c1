"""What both benchmarks share: the alternating timing loop, statistics, a Rust process served
line by line, peak memory in a fresh process, the machine's description and table cells."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# PyTorch's OpenMP workers spin for a while after a call and would steal a core from the next
# contender: every timed call is preceded by this much idle time (seconds).
DEFAULT_GAP = 0.3


def summary(xs: list[float]) -> dict:
    """Median, quartiles, extremes and count of `xs`."""
    # inclusive: with few rounds the quartiles stay between the extremes
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2], "min": min(xs),
            "max": max(xs), "n": len(xs)}


def alternate(run: dict[str, Callable[[], float]], rounds: int, warmup: int,
              gap: float = DEFAULT_GAP) -> dict[str, list[float]]:
    """Calls each contender once per round (each call returns its own seconds), the order
    rotating from round to round so that every contender follows every other equally often;
    `warmup` untimed rounds first and `gap` seconds of idle time before every call."""
    names = list(run)
    for _ in range(warmup):
        for name in names:
            time.sleep(gap)
            run[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(gap)
            seconds[name].append(run[name]())
    return seconds


def ratios(seconds: dict[str, list[float]], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """For each (a, b): the summary of the per-round ratios a/b (the rounds pair them up)."""
    return {f"{a}/{b}": summary([x / y for x, y in zip(seconds[a], seconds[b])])
            for a, b in pairs}


class Served:
    """A Rust benchmark executable in its `--serve` mode: one command per line on stdin, one
    JSON object per line on stdout."""

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

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cargo_executable(cmd: list[str], cwd: Path, env: dict, target: str) -> str:
    """Runs a `cargo build/bench ... --message-format=json` command; returns the path of the
    executable of the target named `target`."""
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for msg in messages:
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == target \
                and msg.get("executable") and done.returncode == 0:
            return msg["executable"]
    rendered = "".join(m["message"].get("rendered") or "" for m in messages
                       if m.get("reason") == "compiler-message")
    raise RuntimeError(f"building the Rust benchmark {target} failed:\n{rendered}")


# ---------------------------------------------------------------------------------------------
# Memory: the growth of the resident set over one forward, in a fresh process


def proc_status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_forward(forward: Callable[[], object]) -> dict:
    """One call of `forward` in this process, the resident set's high-water mark reset just
    before it (the same fields as the Rust side's `--mem`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        reset = True
    except OSError:
        reset = False
    before = proc_status_kb("VmRSS")
    start = time.perf_counter()
    forward()
    seconds = time.perf_counter() - start
    return {"rss_before_kb": before, "hwm_kb": proc_status_kb("VmHWM"), "hwm_reset": reset,
            "seconds": seconds}


def fresh_memory(cmd: list[str], env: dict) -> dict:
    """Runs `cmd`, which prints `measure_forward`'s JSON as its last line; adds `growth_mb`."""
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
    m = json.loads(done.stdout.strip().splitlines()[-1])
    m["growth_mb"] = max(0, m["hwm_kb"] - m["rss_before_kb"]) / 1024
    return m


def torch_memory_cmd(threads: int, *args: str) -> list[str]:
    """This package run in a fresh interpreter to measure one PyTorch forward."""
    return [sys.executable, "-m", "pycandle.bench", "--threads", str(threads), *args]


# What limits every contender to AVX2 and FMA (`--isa avx2`): PyTorch's ATen kernels, oneDNN
# and MKL, and PyCandle's own kernels. Candle's matmuls follow the runtime's `avx512` feature.
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "MKL_ENABLE_INSTRUCTIONS": "AVX2", "PYCANDLE_KERNEL": "avx2"}


def limit_to_avx2() -> str | None:
    """Sets `AVX2_ONLY_ENV` in this process's environment, which its children inherit; returns
    why it cannot be, or None. PyTorch reads its part when it starts: it must not have yet."""
    if "torch" in sys.modules:
        return "PyTorch has already started in this process; run the benchmark on its own"
    _, flags = cpu()
    if flags and not {"avx2", "fma"} <= flags:
        return "this CPU has no AVX2 and FMA"
    os.environ.update(AVX2_ONLY_ENV)
    return None


def child_env(threads: int) -> dict:
    """The environment of every process the benchmark starts: the same thread count for Candle
    (Rayon) and PyTorch (OpenMP), and this checkout's `pycandle` importable."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    return env


# ---------------------------------------------------------------------------------------------
# The machine

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_bf16", "amx_tile")


def cpu() -> tuple[str, set[str]]:
    """The CPU model and the flags /proc/cpuinfo reports (none where it cannot be read)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def machine() -> dict:
    """CPU model, core count, the SIMD extensions the CPU reports, PyTorch's kernel level."""
    model, flags = cpu()
    info = {"cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "simd": [f for f in SIMD_FLAGS if f in flags], "loadavg_before": os.getloadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return info


def describe(m: dict, rust: dict | None = None) -> str:
    """One line about the machine and, when known, the Rust side's instruction sets."""
    text = (f"CPU: {m['cpu']}, {m['cpus']} cores; SIMD: {' '.join(m['simd']) or '-'}"
            f"{' (limited to AVX2)' if m.get('isa') == 'avx2' else ''}; "
            f"PyTorch {m.get('torch', '?')} kernels: {m.get('torch_cpu_capability', '?')}")
    if rust:
        text += (f"; PyCandle kernels (recurrent, Conv1d): {rust['kernel_path']}; "
                 f"Candle matmul (gemm): {rust.get('gemm', '?')}; Rust compiled for: "
                 f"{' '.join(rust['compiled_features']) or 'baseline x86-64'}")
    return text


def isa_mismatch(m: dict, rust: dict) -> str | None:
    """Why the Rust side's matmuls do not run what the run asked for, or None: natively on an
    AVX-512 CPU they should be gemm's AVX-512 kernels, limited to AVX2 its FMA ones."""
    gemm = rust.get("gemm")
    if m.get("isa") == "avx2":
        return None if gemm == "fma" else f"Candle's matmuls ran {gemm}, not AVX2 (fma)"
    if "avx512f" in m.get("simd", ()) and gemm != "avx512f":
        return (f"Candle's matmuls ran {gemm} on this AVX-512 CPU: the crate's dependency on "
                "pycandle-runtime has its default `avx512` feature off")
    return None


def ratio_cell(q: dict) -> str:
    return f"{q['median']:.2f} [{q['p25']:.2f}-{q['p75']:.2f}] ({q['min']:.2f}-{q['max']:.2f})"
