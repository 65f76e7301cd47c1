from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture
def cargo_env(monkeypatch):
    """Shares the workspace's target dir so scratch crates reuse the compiled candle."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is required for this test (install a Rust toolchain)")
    monkeypatch.setenv("CARGO_TARGET_DIR", os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    return os.environ


def pin_lockfile(crate_dir: Path) -> None:
    """Scratch crates resolve the same crate versions as the workspace."""
    crate_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Cargo.lock", crate_dir / "Cargo.lock")


def run_pipeline(root: Path, modules: dict[str, str], models_yaml: str, capsys) -> str:
    """Write the user's modules and models.yaml (its crate: `crate`) under `root`, run
    `pycandle all` there and return what it printed; a failure shows the end of its output."""
    from pycandle.cli import main

    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    (root / "models.yaml").write_text(models_yaml)
    pin_lockfile(root / "crate")
    code = main(["all", "--config", str(root / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    return captured.out


def assert_clippy_clean(crate_dir: Path) -> None:
    """Generated code must pass clippy with warnings as errors (rustfmt ran in codegen)."""
    clippy = subprocess.run(
        ["cargo", "clippy", "--quiet", "--manifest-path", str(crate_dir / "Cargo.toml"),
         "--all-targets", "--", "-D", "warnings"], capture_output=True, text=True)
    assert clippy.returncode == 0, clippy.stderr
