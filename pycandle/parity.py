"""parity: run the generated crate's parity tests and report, layer by layer.

cargo does the work; each generated test writes a JSON report per model and trace case to
$PYCANDLE_REPORT_DIR. Python gathers them, prints a table per model and names the first
layer that diverges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pycandle.errors import PyCandleError
from pycandle.fsutil import write_atomic


class ParityError(PyCandleError):
    pass


@dataclass
class CaseResult:
    model: str
    case: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the test did not produce a report

    @property
    def first_failure(self) -> dict[str, Any] | None:
        return next((e for e in self.entries if not e["pass"]), None)

    @property
    def passed(self) -> bool:
        return self.error is None and self.first_failure is None and bool(self.entries)




def run_cargo_tests(crate_dir: Path, models: list[str], report_dir: Path,
                    console: Console) -> subprocess.CompletedProcess[str]:
    cargo = shutil.which("cargo")
    if cargo is None:
        raise ParityError("cargo not found: install a Rust toolchain (https://rustup.rs) "
                          "and make sure `cargo` is on PATH")
    manifest = crate_dir / "Cargo.toml"
    if not manifest.is_file():
        raise ParityError(f"{manifest} not found: run `pycandle codegen` first")
    missing = [m for m in models if not (crate_dir / "tests" / "parity" / f"{m}.rs").is_file()]
    if missing:
        raise ParityError(f"no parity test for {', '.join(missing)} in {crate_dir / 'tests'}: "
                          "run `pycandle codegen` first")
    # --no-fail-fast: every model's tests run and report, whichever fails
    cmd = [cargo, "test", "--no-fail-fast", "--manifest-path", str(manifest)]
    cmd += ["--test", "parity", "--", "--test-threads=1"] + [f"{m}::" for m in models]
    env = {**os.environ, "CARGO_TERM_COLOR": os.environ.get("CARGO_TERM_COLOR", "never"),
           "PYCANDLE_REPORT_DIR": str(report_dir)}
    with console.status("cargo test: building and running the parity tests…"):
        return subprocess.run(cmd, env=env, capture_output=True, text=True)


def collect(report_dir: Path, models: list[str], num_cases: dict[str, int],
            cargo_output: str) -> list[CaseResult]:
    results = []
    for m in models:
        for case in range(num_cases[m]):
            path = report_dir / f"{m}.case{case}.json"
            if not path.is_file():
                results.append(CaseResult(m, case, error=_failure_excerpt(cargo_output, m, case)))
                continue
            data = json.loads(path.read_text())
            results.append(CaseResult(m, case, data["entries"]))
    return results


def _failure_excerpt(output: str, model: str, case: int) -> str:
    marker = f"---- {model}::case{case} stdout ----"
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if marker in line:
            return "\n".join(lines[i + 1:i + 12]).strip()
    errors = [l for l in lines if l.startswith("error") or "panicked" in l]
    return "\n".join(errors[:12]) or "the test produced no report (see cargo's output)"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def print_report(results: list[CaseResult], console: Console) -> None:
    by_model: dict[str, list[CaseResult]] = {}
    for r in results:
        by_model.setdefault(r.model, []).append(r)
    for model, cases in by_model.items():
        table = Table(title=f"parity: {model}", title_justify="left", show_lines=False)
        for col in ("case", "kind", "layer", "output", "shape", "max abs", "max rel", "cosine",
                    "result"):
            table.add_column(col, justify="right" if col.startswith(("max", "cos")) else "left")
        for r in cases:
            if r.error:
                table.add_row(str(r.case), "-", "-", "-", "-", "-", "-", "-", "[red]ERROR[/red]")
                continue
            for e in r.entries:
                ok = "[green]pass[/green]" if e["pass"] else "[red]FAIL[/red]"
                table.add_row(str(r.case), e["kind"], e["layer"], e["output"],
                              "x".join(map(str, e["shape"])), _fmt(e["max_abs"]),
                              _fmt(e["max_rel"]),
                              "n/a" if e["cosine"] is None else f"{e['cosine']:.6f}", ok)
        console.print(table)
        for r in cases:
            if r.error:
                console.print(f"[red]{model} case {r.case}: no report[/red]\n{r.error}")


def summarize(results: list[CaseResult]) -> list[str]:
    """One line per failing model and case, naming the first diverging layer."""
    lines = []
    for r in results:
        if r.error:
            lines.append(f"{r.model} case {r.case}: the parity test failed to run: "
                         f"{r.error.splitlines()[0] if r.error else ''}")
        elif not r.entries:
            lines.append(f"{r.model} case {r.case}: the report is empty")
        elif r.first_failure:
            e = r.first_failure
            lines.append(f"{r.model} case {r.case}: first diverging {e['kind']} is "
                         f"'{e['layer']}' (output {e['output']}): max abs {_fmt(e['max_abs'])}, "
                         f"max rel {_fmt(e['max_rel'])}")
    return lines


def parity(crate_dir: Path, models: list[str], num_cases: dict[str, int], report_path: Path,
           console: Console) -> list[CaseResult]:
    with tempfile.TemporaryDirectory(prefix="pycandle-parity-") as tmp:
        proc = run_cargo_tests(crate_dir, models, Path(tmp), console)
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0 and "error: could not compile" in proc.stderr:
            raise ParityError("the generated crate does not compile:\n"
                              + "\n".join(proc.stderr.splitlines()[-40:]))
        results = collect(Path(tmp), models, num_cases, output)
    print_report(results, console)
    write_atomic(report_path, json.dumps(
        [{"model": r.model, "case": r.case, "error": r.error, "entries": r.entries}
         for r in results], indent=1, sort_keys=True) + "\n")
    if proc.returncode != 0 and all(r.passed for r in results):
        raise ParityError("cargo test failed although every report passed:\n"
                          + "\n".join(output.splitlines()[-30:]))
    return results
