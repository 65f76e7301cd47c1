"""`pycandle codegen` skips a run that would change nothing, and only such a run (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from handmade import speaker_encoder
from pycandle.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
crate: crate
models:
  - name: speaker
    factory: model:Speaker
    inputs:
      - mels: {shape: [2, 10, 8]}
      - mels: {shape: [1, 7, 8]}
"""


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYCANDLE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "project"
    (root / "artifacts" / "speaker").mkdir(parents=True)
    (root / "artifacts" / "speaker" / "manifest.json").write_text(speaker_encoder().dumps())
    (root / "models.yaml").write_text(CONFIG)
    return root


def codegen(root: Path, capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["codegen", "--config", str(root / "models.yaml"), *args]) == 0
    return capsys.readouterr().out


def crate(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root / "crate").as_posix(): p.read_bytes()
            for p in sorted((root / "crate").rglob("*")) if p.is_file()}


def test_a_second_codegen_is_skipped_without_importing_the_generator(project, capsys):
    out = codegen(project, capsys)
    # model, parity test, example, parity main.rs, Cargo.toml, lib.rs; the runtime's copy
    assert out.count("\nwrote ") == 6 and "updated crate/vendor/pycandle-runtime, the runtime's copy" in out
    probe = textwrap.dedent(f"""\
        import json, sys
        from pycandle.cli import main
        code = main(["codegen", "--config", {str(project / "models.yaml")!r}])
        json.dump({{"code": code, "loaded": sorted(m for m in (
            "torch", "jinja2", "tomlkit", "pycandle.codegen") if m in sys.modules)}}, sys.stderr)
        """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": subprocess.os.environ["PATH"],
                               "PYCANDLE_CACHE_DIR": str(project.parent / "cache")})
    assert json.loads(proc.stderr) == {"code": 0, "loaded": []}, proc.stderr
    assert "0 file(s) changed" in proc.stdout and "(up to date)" in proc.stdout


def _delete(root: Path) -> None:
    (root / "crate" / "src" / "speaker.rs").unlink()


def _edit(root: Path) -> None:
    path = root / "crate" / "tests" / "parity" / "speaker.rs"
    path.write_text(path.read_text() + "// edited\n")


def _add(root: Path) -> None:
    # a module that claims to be generated: lib.rs would name it
    text = (root / "crate" / "src" / "speaker.rs").read_text()
    (root / "crate" / "src" / "other.rs").write_text(text)


@pytest.mark.parametrize("change", [_delete, _edit])
def test_a_changed_or_missing_file_is_written_again(project, capsys, change):
    codegen(project, capsys)
    before = crate(project)
    change(project)
    out = codegen(project, capsys)
    assert "(up to date)" not in out and "1 file(s) changed" in out
    assert crate(project) == before
    assert "(up to date)" in codegen(project, capsys)


def test_a_new_file_in_the_crate_runs_codegen_in_full(project, capsys):
    codegen(project, capsys)
    _add(project)
    out = codegen(project, capsys)
    assert "(up to date)" not in out and "pub mod other;" in \
        (project / "crate" / "src" / "lib.rs").read_text()


def test_a_changed_manifest_and_force_run_codegen(project, capsys):
    codegen(project, capsys)
    before = crate(project)
    manifest = project / "artifacts" / "speaker" / "manifest.json"
    manifest.write_text(speaker_encoder().dumps().replace('"atol": 1e-05', '"atol": 0.001'))
    assert "(up to date)" not in codegen(project, capsys)
    assert crate(project) != before
    assert "(up to date)" in codegen(project, capsys)
    out = codegen(project, capsys, "--force")
    assert "(up to date)" not in out and "0 file(s) changed" in out


def test_a_failed_codegen_leaves_no_stamp(project, capsys):
    codegen(project, capsys)
    (project / "artifacts" / "speaker" / "manifest.json").write_text("{}")
    assert main(["codegen", "--config", str(project / "models.yaml")]) != 0
    (project / "artifacts" / "speaker" / "manifest.json").write_text(speaker_encoder().dumps())
    assert "(up to date)" not in codegen(project, capsys)
