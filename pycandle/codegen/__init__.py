"""codegen: manifests -> Rust modules, parity tests, Cargo.toml and lib.rs upkeep.

Works from the manifests alone (no torch import). Every model is lowered before anything is
written, so an unsupported construct leaves the crate as it was. Each file is replaced
atomically, in an order that keeps the crate buildable if the run is killed: a model's module
and parity test before the `mod` lines that name them, Cargo.toml last.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pycandle.codegen import cargo
from pycandle import names
from pycandle.enums import DType, EntryKind, parse
from pycandle.lowering import ModelIR, lower
from pycandle.errors import PyCandleError
from pycandle.fsutil import remove_stale_temps, write_atomic
from pycandle.manifest import Manifest
from pycandle.rust import rust_str

_TEMPLATES = Path(__file__).parent / "templates"


class CodegenError(PyCandleError):
    pass


class CrateWriteError(CodegenError):
    """The crate directory cannot be written (the CLI adds where models.yaml names it)."""


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
_env.filters["rs"] = rust_str  # every string literal of the templates goes through it


def _rustfmt_exe() -> str:
    exe = shutil.which("rustfmt")
    if exe is None:
        raise CodegenError("rustfmt not found on PATH: install it with `rustup component add "
                           "rustfmt` (https://rustup.rs for a Rust toolchain)")
    return exe


def rustfmt(source: str, what: str) -> str:
    exe = _rustfmt_exe()
    proc = subprocess.run([exe, "--edition", "2021", "--emit", "stdout"], input=source,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CodegenError(f"generated Rust for {what} does not parse (a PyCandle bug):\n"
                           f"{proc.stderr.strip()}\n--- source ---\n{source}")
    return proc.stdout


def render_model(ir: ModelIR) -> str:
    return rustfmt(_env.get_template("model.rs.j2").render(ir=ir), f"model '{ir.name}'")


def render_parity(ir: ModelIR, crate: str, artifacts_rel: str) -> str:
    # Text from models.yaml (the artifacts path) and the manifest reaches Rust only as string
    # literals made by rust_str, whatever it holds.
    text = _env.get_template("parity.rs.j2").render(
        ir=ir, crate=crate, artifacts=artifacts_rel, atol=_f(ir.atol), rtol=_f(ir.rtol),
        kinds=EntryKind)
    return rustfmt(text, f"the parity test of '{ir.name}'")


@dataclass(frozen=True)
class ExampleInput:
    key: str  # the forward() argument, as named in an inputs file
    local: str
    shape: tuple[int, ...]  # the first trace case's
    dtype: str  # Candle's DType variant


def render_example(ir: ModelIR, manifest: Manifest, crate: str, artifacts_rel: str) -> str:
    """examples/<model>.rs: load the weights, run `forward` once, print output shapes and time."""
    taken = set(names.EXAMPLE_LOCALS)
    inputs = []
    for key, arg in zip(manifest.inputs, ir.args):
        local = arg.name
        while local in taken:
            local += "_input"
        taken.add(local)
        spec = manifest.cases[0]["inputs"][key]
        inputs.append(ExampleInput(key, local, tuple(spec["shape"]),
                                   parse(DType, spec["dtype"], "input dtype").candle))
    text = _env.get_template("example.rs.j2").render(
        ir=ir, crate=crate, inputs=inputs, weights=f"{artifacts_rel}/weights.safetensors")
    return rustfmt(text, f"the example of '{ir.name}'")


def _f(v: float) -> str:
    text = repr(float(v))
    return text if any(c in text for c in ".eE") else text + ".0"


def _check_ours(crate_dir: Path, files: dict[Path, str]) -> None:
    """Codegen replaces only files it wrote (they carry its mark); lib.rs and Cargo.toml are
    edited in place, the user's text kept. Anything else in the way stops the run before
    anything is written, naming the file."""
    vendored = crate_dir / cargo.VENDORED
    if vendored.is_symlink() or (vendored.exists() and not _vendored_is_ours(vendored)):
        raise CrateWriteError(
            f"{vendored} exists and is not PyCandle's copy of its runtime (its Cargo.toml lacks "
            f"the `{cargo.GENERATED_MARK}` mark); it is left alone and nothing was changed: "
            "move it away")
    for path in files:
        if path.name in ("lib.rs", "Cargo.toml") and path.parent in (crate_dir, crate_dir / "src"):
            continue
        if vendored in path.parents:
            continue  # the whole folder is PyCandle's, checked above
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise CrateWriteError(f"{path} is not a file PyCandle wrote; it is left alone and "
                                  "nothing was changed: move it away, or rename the model")
        if path.is_file():
            try:
                head = path.read_text(encoding="utf-8", errors="replace")[:600]
            except OSError as e:
                raise CrateWriteError(f"cannot read {path}: {e.strerror}; nothing was "
                                      "changed") from None
            if cargo.GENERATED_MARK not in head:
                raise CrateWriteError(
                    f"{path} exists and was not written by PyCandle (it lacks the "
                    f"`{cargo.GENERATED_MARK}` mark); it is left alone and nothing was "
                    "changed: move it away, or rename the model")


def _vendored_is_ours(folder: Path) -> bool:
    toml = folder / "Cargo.toml"
    if not folder.is_dir() or toml.is_symlink() or not toml.is_file():
        return False
    head = toml.read_text(encoding="utf-8", errors="replace")[:600]
    return cargo.GENERATED_MARK in head


@dataclass(frozen=True)
class Generated:
    model: str
    files: dict[Path, str]


def generate_model(manifest_path: Path, crate_dir: Path, artifacts_dir: Path,
                   lib: str | None = None) -> Generated:
    manifest = Manifest.load(manifest_path)
    ir = lower(manifest)
    crate = lib or cargo.lib_name(crate_dir)
    # The stable path artifacts/<model>, not where its symlink points (one recording's files)
    artifacts_dir = artifacts_dir.parent.resolve() / artifacts_dir.name
    rel = Path(os.path.relpath(artifacts_dir, crate_dir.resolve())).as_posix()
    return Generated(manifest.name, {
        crate_dir / "src" / f"{ir.name}.rs": render_model(ir),
        crate_dir / "tests" / "parity" / f"{ir.name}.rs": render_parity(ir, crate, rel),
        crate_dir / "examples" / f"{ir.name}.rs": render_example(ir, manifest, crate, rel),
    })


def codegen(crate_dir: Path, artifacts_root: Path, models: list[str],
            progress=None) -> list[Path]:
    """Generate every model; returns the files that changed. All or nothing: nothing is written
    unless every model generates."""
    _rustfmt_exe()  # checked once, not for every model
    lib = cargo.lib_name(crate_dir)  # an unreadable Cargo.toml stops here, reported once
    generated: list[Generated] = []
    errors: list[str] = []
    for name in models:
        try:
            generated.append(generate_model(artifacts_root / name / "manifest.json", crate_dir,
                                            artifacts_root / name, lib))
        except PyCandleError as e:
            text = str(e)
            errors.append(text if f"'{name}'" in text else f"model '{name}': {text}")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            # a manifest that parses but does not hold together (edited by hand, or written
            # by another version): its file, not a traceback
            errors.append(f"model '{name}': {artifacts_root / name / 'manifest.json'}: "
                          f"malformed manifest ({type(e).__name__}: {str(e)[:200]}); run "
                          "`pycandle record --force` to record it again")
        if progress is not None:
            progress(name)
    if errors:
        raise CodegenError("codegen stopped; nothing was written:\n" + "\n".join(errors))
    # In dependency order: the modules and tests, then the lists that name them (a `mod x;`
    # never precedes x.rs), Cargo.toml last (a new crate exists only once it is complete).
    files: dict[Path, str] = {}
    for g in sorted(generated, key=lambda g: g.model):
        files.update(sorted(g.files.items()))
    modules = cargo.generated_modules(crate_dir) | {g.model for g in generated}
    files[crate_dir / "src" / "lib.rs"] = cargo.lib_rs_text(crate_dir, modules)
    # All parity tests form one test binary (one link, however many models)
    files[crate_dir / "tests" / "parity" / "main.rs"] = cargo.parity_main_text(
        cargo.generated_modules(crate_dir, "tests/parity") | {g.model for g in generated})
    # The runtime the crate carries (its Cargo.toml last: the copy is complete before it)
    vendored = cargo.vendored_runtime(crate_dir)
    files.update(sorted(vendored.items(), key=lambda item: item[0].name == "Cargo.toml"))
    files[crate_dir / "Cargo.toml"] = cargo.cargo_toml_text(crate_dir, modules)
    _check_ours(crate_dir, files)
    stale = cargo.stale_vendored(crate_dir, files)
    changed: list[Path] = []
    try:
        for folder in {path.parent for path in files}:  # what a killed run left
            remove_stale_temps(folder)
        for path, text in files.items():
            if write_atomic(path, text):
                changed.append(path)
        for path in stale:  # sources the runtime no longer has
            path.unlink()
            changed.append(path)
    except OSError as e:
        done = (f"{len(changed)} file(s) were updated before the error, the others are as "
                "they were" if changed else "nothing was changed")
        raise CrateWriteError(f"cannot write the crate at {crate_dir}: {e.strerror or e} "
                              f"({e.filename or crate_dir}); {done}; make {crate_dir} a "
                              "writable directory and run codegen again") from None
    return changed
