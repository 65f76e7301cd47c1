"""End to end through the real pipeline: record -> codegen -> cargo test parity."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("torch")

from conftest import ROOT, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402

pytestmark = pytest.mark.cargo


def run(*args: str) -> int:
    return main(list(args))


def test_example_models_pass_parity_at_every_trace_shape(tmp_path, cargo_env, capsys):
    """The README's main job on a copy of the repo's models.yaml and examples."""
    shutil.copy(ROOT / "models.yaml", tmp_path / "models.yaml")
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pin_lockfile(tmp_path / "generated")
    config = str(tmp_path / "models.yaml")
    assert run("all", "--config", config) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    models = [m.name for m in load_config(tmp_path / "models.yaml").models]
    assert f"parity: {2 * len(models)} passed, 0 failed" in out
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert {(r["model"], r["case"]) for r in report} == {(m, c) for m in models for c in (0, 1)}
    for r in report:
        kinds = {e["kind"] for e in r["entries"]}
        # every model has a layer fed golden inputs and an end-to-end check; recurrent layers
        # that can stream (one direction, no explicit state, not packed) also run in chunks
        streams = r["model"] in ("voice_encoder", "frame_scorer")
        expected = {"layer", "model"} | ({"stream"} if streams else set())
        assert kinds == expected, r
        assert all(e["pass"] for e in r["entries"])
    # every LSTM output is checked in isolation, not only the ones the model uses
    lstm = [e for r in report if r["model"] == "voice_encoder" for e in r["entries"]
            if e["layer"] == "lstm"]
    assert {(e["kind"], e["output"]) for e in lstm} == {
        (k, o) for k in ("layer", "stream") for o in ("output", "h_n", "c_n")}
    # the generated crate is clippy-clean (rustfmt-formatted by codegen itself)
    clippy = subprocess.run(
        ["cargo", "clippy", "--quiet", "--manifest-path", str(tmp_path / "generated" / "Cargo.toml"),
         "--all-targets", "--", "-D", "warnings"], capture_output=True, text=True)
    assert clippy.returncode == 0, clippy.stderr
    # the same generated code as the repo's generated/ crate (byte-identical codegen)
    for name in models:
        assert (tmp_path / "generated" / "src" / f"{name}.rs").read_text() == \
            (ROOT / "generated" / "src" / f"{name}.rs").read_text()


def test_a_diverging_layer_is_named(tmp_path, cargo_env, capsys):
    """Corrupt one recorded golden output: parity fails and names that layer first."""
    from safetensors.torch import load_file, save_file

    shutil.copy(ROOT / "models.yaml", tmp_path / "models.yaml")
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pin_lockfile(tmp_path / "generated")
    config = str(tmp_path / "models.yaml")
    for stage in ("record", "codegen"):
        assert run(stage, "--config", config, "--model", "mlp") == 0
    golden_path = tmp_path / "artifacts" / "mlp" / "golden.safetensors"
    golden = load_file(golden_path)
    golden["c1.layer_2.out.0"] = golden["c1.layer_2.out.0"] + 0.01  # the second Linear's output
    save_file(golden, golden_path)
    capsys.readouterr()
    assert run("parity", "--config", config, "--model", "mlp") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "mlp case 1: first diverging layer is '2' (output 0)" in err, err
    assert "1 passed, 1 failed" in err
