"""codegen: manifests -> Rust modules, parity tests, Cargo.toml and lib.rs upkeep.

Works from the manifests alone (no torch import). Every model is lowered before anything is
written, so an unsupported construct leaves the crate as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pycandle.codegen import cargo
from pycandle.codegen.lower import ModelIR, lower
from pycandle.errors import PyCandleError
from pycandle.fsutil import write_atomic
from pycandle.manifest import Manifest

_TEMPLATES = Path(__file__).parent / "templates"


class CodegenError(PyCandleError):
    pass


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def rustfmt(source: str, what: str) -> str:
    exe = shutil.which("rustfmt")
    if exe is None:
        raise CodegenError("rustfmt not found: install it with `rustup component add rustfmt`")
    proc = subprocess.run([exe, "--edition", "2021", "--emit", "stdout"], input=source,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CodegenError(f"generated Rust for {what} does not parse (a PyCandle bug):\n"
                           f"{proc.stderr.strip()}\n--- source ---\n{source}")
    return proc.stdout


def render_model(ir: ModelIR) -> str:
    return rustfmt(_env.get_template("model.rs.j2").render(ir=ir), f"model '{ir.name}'")


def render_parity(ir: ModelIR, crate: str, artifacts_rel: str) -> str:
    text = _env.get_template("parity.rs.j2").render(
        ir=ir, crate=crate, artifacts=artifacts_rel, atol=_f(ir.atol), rtol=_f(ir.rtol))
    return rustfmt(text, f"the parity test of '{ir.name}'")


def _f(v: float) -> str:
    text = repr(float(v))
    return text if any(c in text for c in ".eE") else text + ".0"


@dataclass(frozen=True)
class Generated:
    model: str
    files: dict[Path, str]


def generate_model(manifest_path: Path, crate_dir: Path, artifacts_dir: Path) -> Generated:
    manifest = Manifest.load(manifest_path)
    ir = lower(manifest)
    crate = cargo.lib_name(crate_dir)
    rel = Path(os.path.relpath(artifacts_dir.resolve(), crate_dir.resolve())).as_posix()
    return Generated(manifest.name, {
        crate_dir / "src" / f"{ir.name}.rs": render_model(ir),
        crate_dir / "tests" / "parity" / f"{ir.name}.rs": render_parity(ir, crate, rel),
    })


def codegen(crate_dir: Path, artifacts_root: Path, models: list[str],
            progress=None) -> list[Path]:
    """Generate every model; returns the files that changed. All or nothing."""
    generated: list[Generated] = []
    errors: list[str] = []
    for name in models:
        try:
            generated.append(generate_model(artifacts_root / name / "manifest.json", crate_dir,
                                            artifacts_root / name))
        except PyCandleError as e:
            errors.append(str(e))
        if progress is not None:
            progress(name)
    if errors:
        raise CodegenError("codegen stopped; nothing was written:\n" + "\n".join(errors))
    files: dict[Path, str] = {}
    for g in generated:
        files.update(g.files)
    modules = cargo.generated_modules(crate_dir) | {g.model for g in generated}
    files[crate_dir / "Cargo.toml"] = cargo.cargo_toml_text(crate_dir)
    files[crate_dir / "src" / "lib.rs"] = cargo.lib_rs_text(crate_dir, modules)
    # All parity tests form one test binary (one link, however many models)
    files[crate_dir / "tests" / "parity" / "main.rs"] = cargo.parity_main_text(
        cargo.generated_modules(crate_dir, "tests/parity") | {g.model for g in generated})
    try:
        crate_dir.mkdir(parents=True, exist_ok=True)
        changed = [path for path, text in sorted(files.items()) if write_atomic(path, text)]
    except OSError as e:
        raise CodegenError(f"cannot write the crate at {crate_dir}: {e}") from None
    return changed
