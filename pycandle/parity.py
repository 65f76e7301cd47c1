"""parity: run the generated crate's parity tests and report, layer by layer.

cargo does the work; each generated test writes a JSON report per model and trace case to
$PYCANDLE_REPORT_DIR. Python gathers them, prints a table per model, names the first
layer that diverges and writes the results as JSON and as an HTML page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pycandle.enums import EntryKind, UnknownValue, parse
from pycandle.errors import PyCandleError
from pycandle.fsutil import write_atomic
from pycandle.html_report import render as render_html


class ParityError(PyCandleError):
    pass


@dataclass
class CaseResult:
    model: str
    case: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the test did not produce a report
    atol: float | None = None  # the tolerance the test checked with (None: unknown)
    rtol: float | None = None

    @property
    def first_failure(self) -> dict[str, Any] | None:
        return next((e for e in self.entries if not e["pass"]), None)

    @property
    def passed(self) -> bool:
        return self.error is None and self.first_failure is None and bool(self.entries)


# pycandle_runtime::parity: what a parity test prints for an error the user must act on, and
# the variable naming the artifacts it must read
ERROR_PREFIX = "pycandle-error: "
ARTIFACTS_ENV = "PYCANDLE_PARITY_ARTIFACTS"

# libtest's line for a finished test, as `--test-threads=1` prints it
_TEST_DONE = re.compile(r"^test (\S+) \.\.\. (?:ok|FAILED|ignored)")


def _unit_count(cargo: str, manifest: Path, env: dict[str, str]) -> int | None:
    """About how many compiler artifacts building the crate's parity test produces: a library
    per package the crate depends on (its dev-dependencies included), a build script per package
    that has one, and the test itself. None when `cargo metadata` fails (cargo test will say why).
    """
    version = subprocess.run([cargo, "-vV"], capture_output=True, text=True, env=env)
    host = next((line.split(":", 1)[1].strip() for line in version.stdout.splitlines()
                 if line.startswith("host:")), None)
    cmd = [cargo, "metadata", "--format-version", "1", "--manifest-path", str(manifest)]
    if host:
        cmd += ["--filter-platform", host]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None
    meta = json.loads(proc.stdout)
    packages = {p["id"]: p for p in meta["packages"]}
    deps = {n["id"]: n["deps"] for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"]
                if Path(p["manifest_path"]).resolve() == manifest.resolve())
    seen, todo = set(), [root]
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        todo += [d["pkg"] for d in deps[pkg]
                 if pkg == root or any(k["kind"] != "dev" for k in d["dep_kinds"])]
    build_scripts = sum(any("custom-build" in t["kind"] for t in packages[p]["targets"])
                        for p in seen)
    return len(seen) + build_scripts + 1


def _run_with_progress(cmd: list[str], env: dict[str, str], units: int | None, tests: int,
                       console: Console) -> subprocess.CompletedProcess[str]:
    """Run `cargo test --message-format=json-render-diagnostics`: one bar advances per compiled
    artifact (up to the estimate `units`), then one per finished test. The returned stdout is
    libtest's output without cargo's JSON messages."""
    stdout: list[str] = []
    compiled = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with (Progress(*columns, console=console, transient=True) as progress,
          tempfile.TemporaryFile() as stderr,
          subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr,
                           encoding="utf-8", errors="replace") as proc):
        build = progress.add_task("cargo: compiling", total=units)
        run = progress.add_task("cargo: parity tests", total=tests, start=False)
        for line in proc.stdout:
            if line.startswith('{"reason":'):
                message = json.loads(line)
                if message["reason"] == "compiler-artifact":
                    compiled += 1
                    progress.update(build, completed=min(compiled, units or compiled),
                                    description=f"cargo: compiled {message['target']['name']}")
                elif message["reason"] == "build-finished":  # the estimate was only that
                    progress.update(build, total=compiled, completed=compiled,
                                    description="cargo: compiled")
                    progress.start_task(run)
                continue
            stdout.append(line)
            if done := _TEST_DONE.match(line):
                progress.update(run, advance=1, description=f"cargo: tested {done[1]}")
        proc.wait()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(stdout), errors)


def run_cargo_tests(crate_dir: Path, models: list[str], num_tests: int, report_dir: Path,
                    console: Console, artifacts: Path | None = None
                    ) -> subprocess.CompletedProcess[str]:
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
    cmd = [cargo, "test", "--no-fail-fast", "--message-format=json-render-diagnostics",
           "--manifest-path", str(manifest)]
    cmd += ["--test", "parity", "--", "--test-threads=1"] + [f"{m}::" for m in models]
    env = {**os.environ, "CARGO_TERM_COLOR": os.environ.get("CARGO_TERM_COLOR", "never"),
           "PYCANDLE_REPORT_DIR": str(report_dir)}
    if artifacts is not None:
        # the test binary checks that it reads these artifacts (not another project's)
        env[ARTIFACTS_ENV] = str(artifacts)
    else:
        env.pop(ARTIFACTS_ENV, None)
    return _run_with_progress(cmd, env, _unit_count(cargo, manifest, env), num_tests, console)


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
            entries = data["entries"]
            for e in entries:  # the closed set the generated tests write: anything else is a bug
                try:
                    e["kind"] = parse(EntryKind, e["kind"], "parity entry kind")
                except UnknownValue as err:
                    raise PyCandleError(f"{path}: {err}; run `pycandle codegen` and parity "
                                        "again") from None
            results.append(CaseResult(m, case, entries, atol=data["atol"], rtol=data["rtol"]))
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
                console.print(f"[red]{model} case {r.case}: no report[/red]\n{escape(r.error)}")


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
            line = (f"{r.model} case {r.case}: first diverging {e['kind']} is "
                    f"'{e['layer']}' (output {e['output']}): max abs {_fmt(e['max_abs'])}, "
                    f"max rel {_fmt(e['max_rel'])}")
            block = next((b for b in r.entries if not b["pass"] and b["kind"] == "block"), None)
            if block is not None and block is not e:
                line += f"; first diverging block is '{block['layer']}'"
            lines.append(line)
    return lines


def user_errors(output: str) -> list[str]:
    """The errors parity tests printed for the user (a test binary of another project, a
    damaged golden file), each once, in order."""
    found: list[str] = []
    for line in output.splitlines():
        at = line.find(ERROR_PREFIX)
        if at >= 0:
            message = line[at + len(ERROR_PREFIX):].strip()
            if message and message not in found:
                found.append(message)
    return found


def parity(crate_dir: Path, models: list[str], num_cases: dict[str, int], report_path: Path,
           console: Console, artifacts: Path | None = None) -> list[CaseResult]:
    """Run the parity tests of `models` in the crate; with `artifacts`, the tests check that
    they read the recordings there (and stop with an error otherwise)."""
    with tempfile.TemporaryDirectory(prefix="pycandle-parity-") as tmp:
        proc = run_cargo_tests(crate_dir, models, sum(num_cases[m] for m in models), Path(tmp),
                               console, artifacts)
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0 and "error: could not compile" in proc.stderr:
            raise ParityError("the generated crate does not compile:\n"
                              + "\n".join(proc.stderr.splitlines()[-40:]))
        problems = user_errors(output) if proc.returncode != 0 else []
        if problems:
            raise ParityError("; ".join(problems))
        results = collect(Path(tmp), models, num_cases, output)
    print_report(results, console)
    write_atomic(report_path, json.dumps(
        [{"model": r.model, "case": r.case, "error": r.error, "atol": r.atol, "rtol": r.rtol,
          "entries": r.entries} for r in results], indent=1, sort_keys=True) + "\n")
    html_path = report_path.with_suffix(".html")
    write_atomic(html_path, render_html(results))
    console.print(f"HTML report: {escape(str(html_path))}")
    if proc.returncode != 0 and all(r.passed for r in results):
        raise ParityError("cargo test failed although every report passed:\n"
                          + "\n".join(output.splitlines()[-30:]))
    return results
