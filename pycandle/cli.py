"""`pycandle record|codegen|parity|coverage [--config FILE] [--model NAME ...]`.

Each command is a plain function over the previous stage's files, so nox, the command line and
the tests all run the same pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from pycandle.config import Config, load_config
from pycandle.errors import PyCandleError

# Wide enough for the parity tables when output goes to a file or CI log.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def _progress(total: int, verb: str) -> tuple[Progress, callable]:
    bar = Progress(TextColumn(f"[bold]{verb}[/bold] {{task.description}}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), console=console, transient=True)
    task = bar.add_task("", total=total)

    def step(name: str) -> None:
        bar.update(task, advance=1, description=name)

    return bar, step


def cmd_record(cfg: Config, names: list[str] | None, force: bool = False) -> int:
    from pycandle.depfile import why_stale  # reads files only: no torch, no user code
    from pycandle.fsutil import tidy_dir_versions

    models = cfg.select(names)
    stale = {mc.name: "--force" if force else why_stale(cfg, mc) for mc in models}
    for mc in models:
        if stale[mc.name] is None:
            console.print(f"{mc.name}: up to date (use --force to record again)")
            try:
                tidy_dir_versions(cfg.artifacts / mc.name)  # leftovers of a killed run
            except OSError:
                pass  # only housekeeping: the recording itself is complete
        elif not force:
            console.print(f"{mc.name}: recording ({escape(stale[mc.name])})")
    todo = [mc for mc in models if stale[mc.name] is not None]
    if not todo:
        return 0
    from pycandle.record import record  # torch is imported only here

    bar, step = _progress(len(todo), "record")
    with bar:
        recordings, _ = record(cfg, todo, progress=step, force=True)
    for rec in recordings:
        m = rec.manifest
        console.print(f"recorded [bold]{m.name}[/bold]: {len(m.nodes)} graph nodes, "
                      f"{len(m.cases)} trace case(s), {len(rec.golden)} golden tensors "
                      f"-> {escape(str(cfg.artifacts / m.name))}")
        for w in m.warnings:
            console.print(f"  [yellow]warning[/yellow]: {escape(str(w))}")
    return 0


def cmd_codegen(cfg: Config, names: list[str] | None, force: bool = False) -> int:
    from pycandle import codegen_stamp  # tells a no-op without importing the code generator

    models = [m.name for m in cfg.select(names)]
    if not force and codegen_stamp.is_current(cfg.crate, cfg.artifacts, models):
        console.print(f"codegen: {len(models)} model(s), 0 file(s) changed in "
                      f"{escape(str(cfg.crate))} (up to date)", soft_wrap=True)
        return 0
    stamp = codegen_stamp.Stamp.before(cfg.crate, cfg.artifacts, models)
    from pycandle.codegen import CrateWriteError, codegen
    from pycandle.codegen.cargo import VENDORED

    bar, step = _progress(len(models), "codegen")
    try:
        with bar:
            changed = codegen(cfg.crate, cfg.artifacts, models, progress=step)
        stamp.save()
    except CrateWriteError as e:
        named = ", ".join(f"'{m}'" for m in models)
        raise PyCandleError(f"{cfg.where('crate')} model{'s' * (len(models) > 1)} {named}: {e}") \
            from None
    root = cfg.root

    def shown(path: Path) -> str:
        return escape(str(path.relative_to(root) if path.is_relative_to(root) else path))

    vendored = cfg.crate / VENDORED
    runtime = [p for p in changed if vendored in p.parents]
    for path in changed:
        if vendored not in path.parents:
            console.print(f"wrote {shown(path)}", soft_wrap=True)
    if runtime:  # one line for the copy of the runtime
        console.print(f"updated {shown(vendored)}, the runtime's copy ({len(runtime)} file(s))",
                      soft_wrap=True)
    console.print(f"codegen: {len(models)} model(s), {len(changed)} file(s) changed in "
                  f"{escape(str(cfg.crate))}", soft_wrap=True)
    return 0


def cmd_parity(cfg: Config, names: list[str] | None, force: bool = False) -> int:
    from pycandle.parity import parity, summarize

    models = cfg.select(names)
    report = cfg.root / "reports" / "parity.json"
    results = parity(cfg.crate, [m.name for m in models],
                     {m.name: len(m.inputs) for m in models}, report, console, cfg.artifacts)
    failures = summarize(results)
    passed = sum(1 for r in results if r.passed)
    if failures:
        for line in failures:
            err_console.print(f"[red]FAIL[/red] {escape(line)}")
        err_console.print(f"parity: {passed} passed, {len(results) - passed} failed "
                          f"(model x trace case); report: {escape(str(report))}")
        return 1
    console.print(f"parity: {passed} passed, 0 failed (model x trace case); report: "
                  f"{escape(str(report))}")
    return 0


def cmd_coverage(cfg: Config | None, names: list[str] | None, force: bool = False) -> int:
    """Without a config: everything supported. With one: per model, the layers and ops it uses
    and every one that is not supported; read from its recording when that is up to date,
    otherwise traced in PyTorch (nothing is written)."""
    from pycandle import registry

    if cfg is None:
        cov = registry.coverage()
        console.print("[bold]layers[/bold]")
        for name, doc in cov.layers:
            console.print(f"  {name}" + (f": {doc}" if doc else ""))
        console.print("[bold]functions and Tensor methods[/bold]")
        for name, spellings, doc in cov.ops:
            console.print(f"  {name}: {', '.join(spellings)}" + (f" ({doc})" if doc else ""))
        return 0

    from pycandle import depfile
    from pycandle.errors import UnsupportedError
    from pycandle.manifest import Manifest
    from pycandle.support import used

    code = 0
    for mc in cfg.select(names):
        recorded = depfile.why_stale(cfg, mc) is None
        if recorded:  # recorded from exactly these inputs by this PyCandle: no need to trace
            manifest = Manifest.load(cfg.artifacts / mc.name / "manifest.json")
        else:
            from pycandle.record import record_model

            try:
                manifest = record_model(cfg, mc).manifest
            except UnsupportedError as e:
                code = 1
                console.print(f"[red]{mc.name}[/red]: {len(e.problems)} unsupported")
                for p in e.problems:
                    console.print(f"  - {escape(str(p))}")
                continue
        layers, ops = used(manifest)
        console.print(f"[green]{mc.name}[/green]: supported{' (as recorded)' if recorded else ''}; "
                      f"layers: {', '.join(layers) or '-'}; functions: {', '.join(ops) or '-'}")
    return code


COMMANDS = {"record": cmd_record, "codegen": cmd_codegen, "parity": cmd_parity,
            "coverage": cmd_coverage}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycandle", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=[*COMMANDS, "all"],
                   help="stage to run; 'all' runs record, codegen and parity")
    p.add_argument("--config", default="models.yaml", type=Path,
                   help="models.yaml to use (default: ./models.yaml)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="only this model (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="record again even when the artifacts are up to date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "coverage" and not args.config.exists() \
                and str(args.config) == parser().get_default("config"):
            return cmd_coverage(None, None)
        cfg = load_config(args.config)
        if args.command == "all":
            for step in (cmd_record, cmd_codegen, cmd_parity):
                code = step(cfg, args.models, args.force)
                if code:
                    return code
            return 0
        return COMMANDS[args.command](cfg, args.models, args.force)
    except PyCandleError as e:
        err_console.print(f"[red]error[/red]: {escape(str(e))}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
