"""End to end through the real pipeline: record -> codegen -> cargo test parity."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from pathlib import Path

import pytest

pytest.importorskip("torch")

import tomlkit  # noqa: E402

from conftest import ROOT, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.codegen.cargo import RUNTIME_DIR  # noqa: E402
from pycandle.config import load_config  # noqa: E402

pytestmark = pytest.mark.cargo


def run(*args: str) -> int:
    return main(list(args))


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    """The repo's models.yaml and examples in a scratch directory, recorded and generated into
    a new crate there (recorded once for the tests below)."""
    root = tmp_path_factory.mktemp("examples")
    shutil.copy(ROOT / "models.yaml", root / "models.yaml")
    shutil.copytree(ROOT / "examples", root / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pin_lockfile(root / "generated")
    for stage in ("record", "codegen"):
        assert run(stage, "--config", str(root / "models.yaml")) == 0
    return root


def test_committed_generated_crate_is_what_codegen_writes(examples):
    """The repo's generated/ is exactly what codegen writes from models.yaml: the same files,
    byte for byte (so running codegen on it would change none), its vendored runtime included.
    The package name's hash of the models (derived) is set aside."""
    committed_dir, fresh_dir = ROOT / "generated", examples / "generated"

    def files(crate: Path) -> dict[str, bytes]:
        return {p.relative_to(crate).as_posix(): p.read_bytes() for p in sorted(crate.rglob("*"))
                if p.is_file() and p.name != "Cargo.lock"}  # the lock file is the test's copy

    def package(crate: Path) -> str:
        name = tomlkit.parse((crate / "Cargo.toml").read_text())["package"]["name"]
        assert re.fullmatch(r"generated-[0-9a-f]{8}", name), name  # see cargo.package_name
        return name

    committed, fresh = files(committed_dir), files(fresh_dir)
    # A new crate's package name hashes the models it starts with; an existing crate keeps its
    # name when models are added, so the committed one may carry an earlier model list's hash.
    fresh["Cargo.toml"] = fresh["Cargo.toml"].replace(
        f'name = "{package(fresh_dir)}"'.encode(), f'name = "{package(committed_dir)}"'.encode())
    stale = sorted(rel for rel in committed.keys() | fresh.keys()
                   if committed.get(rel) != fresh.get(rel))
    assert stale == [], ("generated/ is not what `pycandle codegen` writes from models.yaml "
                         f"(run `python3 -m nox -s parity` and commit generated/): {stale}")
    # ... and its runtime is the one in this checkout, source for source
    sources = {p.relative_to(RUNTIME_DIR).as_posix(): p.read_bytes()
               for p in sorted((RUNTIME_DIR / "src").rglob("*.rs"))}
    vendored = {rel.removeprefix("vendor/pycandle-runtime/"): data for rel, data in committed.items()
                if rel.startswith("vendor/pycandle-runtime/src/")}
    assert vendored == sources


def test_generated_crate_stands_alone(examples, cargo_env, tmp_path):
    """The crate and its recording, copied to a new folder, test and run with no PyCandle:
    cargo sees no package outside the copy (but crates.io's), and runs in an environment
    without Python's variables or the virtualenv on the PATH."""
    away = tmp_path / "elsewhere"
    shutil.copytree(examples / "generated", away / "crate", symlinks=False,
                    ignore=shutil.ignore_patterns("target"))
    for model in load_config(examples / "models.yaml").models:  # links resolved
        shutil.copytree(examples / "artifacts" / model.name, away / "artifacts" / model.name)
    cargo = shutil.which("cargo")
    # cargo's folder and the system's (the C linker), none of the virtualenv's
    env = {"PATH": os.pathsep.join([str(Path(cargo).parent), "/usr/bin", "/bin"]),
           "HOME": os.environ["HOME"],
           "CARGO_TARGET_DIR": os.environ["CARGO_TARGET_DIR"]}
    for var in ("CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"):
        if var in os.environ:
            env[var] = os.environ[var]
    manifest = str(away / "crate" / "Cargo.toml")
    # A package name of its own: two crates of one name and layout in one CARGO_TARGET_DIR
    # would share their test binaries (see cargo.package_name), and the original runs on.
    toml = Path(manifest).read_text()
    Path(manifest).write_text(re.sub(r'(?m)^name = "generated-[0-9a-f]+"$',
                                     'name = "standalone-copy"', toml, count=1))

    meta = subprocess.run([cargo, "metadata", "--format-version", "1", "--manifest-path",
                           manifest], capture_output=True, text=True, env=env, check=True)
    outside = [p["manifest_path"] for p in json.loads(meta.stdout)["packages"]
               if p["source"] is None and away not in Path(p["manifest_path"]).parents]
    assert outside == []
    test = subprocess.run([cargo, "test", "--quiet", "--manifest-path", manifest],
                          capture_output=True, text=True, env=env, cwd=away)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert re.search(r"test result: ok\. [1-9]\d* passed", test.stdout), test.stdout
    example = subprocess.run([cargo, "run", "--quiet", "--manifest-path", manifest,
                              "--example", "padded_gru"],
                             capture_output=True, text=True, env=env, cwd=away)
    assert example.returncode == 0, example.stderr[-3000:]
    assert re.fullmatch(r"output 0: \[5, 1, 4\]\noutput 1: \[5, 24\]\n"
                        r"forward: \S+ \(recurrent kernels: (avx2|portable)\)\n",
                        example.stdout), example.stdout
    # the portable kernels, forced on a CPU that has AVX2, pass parity too
    portable = subprocess.run([cargo, "run", "--quiet", "--manifest-path", manifest,
                               "--example", "voice_encoder"], capture_output=True, text=True,
                              env={**env, "PYCANDLE_KERNEL": "portable"}, cwd=away)
    assert portable.returncode == 0 and "(recurrent kernels: portable)" in portable.stdout, \
        portable.stdout + portable.stderr[-2000:]
    forced = subprocess.run([cargo, "test", "--quiet", "--manifest-path", manifest,
                             "--test", "parity", "voice_encoder"], capture_output=True, text=True,
                            env={**env, "PYCANDLE_KERNEL": "portable"}, cwd=away)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]


def test_example_models_pass_parity_at_every_trace_shape(examples, cargo_env, capsys):
    """The README's main job on a copy of the repo's models.yaml and examples."""
    tmp_path = examples
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
        streams = r["model"] in ("voice_encoder", "frame_scorer", "token_tagger")
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


RECURRENT_PATTERNS = """
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class TwoPasses(nn.Module):
    \"\"\"One LSTM called twice: the second pass resumes from the first's final state.\"\"\"

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)

    def forward(self, first, second):
        a, state = self.lstm(first)
        b, (h, c) = self.lstm(second, state)
        return torch.cat([a, b], dim=1), h, c


class CellLoop(nn.Module):
    \"\"\"A VAD-style cell stepped in a Python loop over a fixed number of frames.\"\"\"

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(3, 5)
        self.gru_cell = nn.GRUCell(5, 4)

    def forward(self, frames, h, c):
        g = None
        for t in range(4):
            h, c = self.cell(frames[:, t], (h, c))
            g = self.gru_cell(h, g)
        return g, c


class SortedPacked(nn.Module):
    \"\"\"pack_padded_sequence with enforce_sorted=True, time-major, into a bidirectional RNN.\"\"\"

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 4, bidirectional=True, nonlinearity="relu")

    def forward(self, x, lengths):
        out, h = self.rnn(pack_padded_sequence(x, lengths))
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, h
"""

PATTERNS_YAML = """\
crate: crate
models:
  - name: two_passes
    factory: patterns:TwoPasses
    inputs:
      - first: {shape: [2, 5, 4], low: -1, high: 1}
        second: {shape: [2, 3, 4], low: -1, high: 1}
      - first: {shape: [1, 7, 4], low: -1, high: 1}
        second: {shape: [1, 2, 4], low: -1, high: 1}
  - name: cell_loop
    factory: patterns:CellLoop
    inputs:
      - frames: {shape: [3, 4, 3], low: -1, high: 1}
        h: {shape: [3, 5], low: -1, high: 1}
        c: {shape: [3, 5], low: -1, high: 1}
      - frames: {shape: [1, 4, 3], low: -1, high: 1}
        h: {shape: [1, 5], low: -1, high: 1}
        c: {shape: [1, 5], low: -1, high: 1}
  - name: sorted_packed
    factory: patterns:SortedPacked
    inputs:
      # one sequence per case, so lengths are sorted whatever is drawn
      - x: {shape: [6, 1, 3], low: -1, high: 1}
        lengths: {shape: [1], dtype: int64, low: 1, high: 7}
      - x: {shape: [4, 1, 3], low: -1, high: 1}
        lengths: {shape: [1], dtype: int64, low: 1, high: 5}
"""


def test_recurrent_usage_patterns(tmp_path, cargo_env, capsys):
    """A module called twice with state carried by the model itself, cells stepped in a loop,
    and a sorted time-major packed batch padded back to total_length."""
    (tmp_path / "patterns.py").write_text(RECURRENT_PATTERNS)
    (tmp_path / "models.yaml").write_text(PATTERNS_YAML)
    pin_lockfile(tmp_path / "crate")
    assert run("all", "--config", str(tmp_path / "models.yaml")) == 0, capsys.readouterr()
    assert "parity: 6 passed, 0 failed" in capsys.readouterr().out
    src = (tmp_path / "crate" / "src" / "two_passes.rs").read_text()
    assert len(re.findall(r"self\s*\.lstm\s*\.forward\(", src)) == 2  # one field, two calls
    loop = (tmp_path / "crate" / "src" / "cell_loop.rs").read_text()
    assert len(re.findall(r"self\s*\.cell\s*\.forward\(", loop)) == 4  # the loop unrolled
