"""A run killed at any instant leaves the previous outputs whole, and the next run completes.

The kills are real SIGKILLs. To land them at chosen points, not wherever a timer happens to
fall, the program runs under KILLER: a wrapper that counts the program's filesystem changes
under the project directory and kills the process just before a chosen one. The product has no
test hook; the wrapper only watches `os` and `open`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, pin_lockfile
from handmade import speaker_encoder

KILLER = '''\
"""usage: killer.py ROOT SPEC (-m MODULE | SCRIPT) [ARG ...]

Runs the module or script and SIGKILLs it just before one of its filesystem changes under ROOT
(creating, writing, syncing, renaming, linking or deleting). SPEC: N, the N-th change; or
NAME:PATH+K, the K-th change after the first os.NAME on ROOT/PATH (+0: that call itself).
"""
import builtins
import os
import runpy
import signal
import sys

root, spec = os.path.realpath(sys.argv[1]), sys.argv[2]
if ":" in spec:
    trigger, after = spec.rsplit("+", 1)
    trigger_name, trigger_path = trigger.split(":", 1)
    trigger_path, after, limit = os.path.join(root, trigger_path), int(after), None
else:
    trigger_name, limit = None, int(spec)
count = 0


def change(name, path):
    global count, limit
    if trigger_name and limit is None and name == trigger_name \\
            and os.path.abspath(path) == trigger_path:
        limit = count + 1 + after
    count += 1
    if count == limit:
        os.kill(os.getpid(), signal.SIGKILL)


def under_root(path):
    return isinstance(path, (str, bytes, os.PathLike)) \\
        and os.path.abspath(os.fsdecode(path)).startswith(root + os.sep)


def watch(name, path_of, when=lambda *a, **k: True):
    real = getattr(os, name)

    def watched(*args, **kwargs):
        path = path_of(*args)
        if (path is None or under_root(path)) and when(*args, **kwargs):
            change(name, path)
        return real(*args, **kwargs)

    setattr(os, name, watched)


for name in ("mkdir", "unlink", "rmdir"):
    watch(name, lambda path, *rest: path)
for name in ("replace", "rename", "symlink"):  # the path they create or replace
    watch(name, lambda source, path, *rest: path)
watch("open", lambda path, flags, *rest: path, lambda path, flags, *r, **k: flags & os.O_CREAT)
watch("fsync", lambda fd: None)
real_open = builtins.open


def watched_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and under_root(file):
        change("open", file)
    return real_open(file, mode, *args, **kwargs)


builtins.open = watched_open
if sys.argv[3] == "-m":
    sys.argv = [sys.argv[4], *sys.argv[5:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
'''


def run_killed(root: Path, spec: str | int, *program: str) -> subprocess.CompletedProcess:
    """Run `program` under KILLER in `root`; returns the finished process."""
    killer = root.parent / "killer.py"
    if not killer.exists():
        killer.write_text(KILLER)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(killer), str(root), str(spec), *program],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def files(directory: Path) -> dict[str, bytes]:
    """The files of a directory (through a symlink), by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- one recording's files switch together ---------------------------------------------------

SWITCH = """\
import sys
from pathlib import Path
from pycandle.fsutil import write_dir_atomic

link, source = Path(sys.argv[1]), Path(sys.argv[2])
write_dir_atomic(link, {p.name: p.read_bytes() for p in sorted(source.iterdir())})
"""
OLD = {"manifest.json": b'{"v": "old"}', "weights.safetensors": b"old weights" * 100,
       "golden.safetensors": b"old golden" * 1000}
NEW = {"manifest.json": b'{"v": "new"}', "weights.safetensors": b"new weights" * 90,
       "golden.safetensors": b"new golden" * 900}


@pytest.mark.parametrize("layout", ["symlink", "plain directory (before the symlinks)"])
def test_a_recording_switches_whole_at_every_kill_point(tmp_path, layout):
    """Kill the switch from OLD to NEW before each of its filesystem changes in turn: the
    recording is OLD or NEW, never a mix, and the next run completes and tidies up."""
    from pycandle.fsutil import write_dir_atomic

    pristine = tmp_path / "pristine"
    (pristine / "new").mkdir(parents=True)
    for name, data in NEW.items():
        (pristine / "new" / name).write_bytes(data)
    (pristine / "switch.py").write_text(SWITCH)
    artifacts = pristine / "artifacts"
    if layout == "symlink":
        write_dir_atomic(artifacts / "enc", OLD)
    else:
        (artifacts / "enc").mkdir(parents=True)
        for name, data in OLD.items():
            (artifacts / "enc" / name).write_bytes(data)

    work = tmp_path / "work"
    seen = set()
    for point in range(1, 100):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work, symlinks=True)
        link = work / "artifacts" / "enc"
        proc = run_killed(work, point, "switch.py", str(link), str(work / "new"))
        if proc.returncode == 0:
            break  # `point` is past the last change: every one has been a kill point
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if link.exists():
            state = files(link)
        else:  # killed between the two renames of the one-time move to the symlink layout
            assert layout != "symlink" and not link.is_symlink()
            state = files(link.with_name(".enc.legacy"))
        assert state in (OLD, NEW), f"kill point {point}: a mixed recording"
        seen.add("old" if state == OLD else "new")
        # the next run completes and leaves only the link and its directory
        proc = subprocess.run([sys.executable, "switch.py", str(link), str(work / "new")],
                              cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert files(link) == NEW
        assert sorted(p.name for p in link.parent.iterdir()) == [os.readlink(link), "enc"]
    else:
        pytest.fail("the switch never finished")
    assert point > 8 and seen == {"old", "new"}  # kills before and after the switch


def test_concurrent_switches_leave_one_whole_recording(tmp_path):
    """Runs that write the same recording at once take turns: the one left is whole, and so
    is no other's set deleted as a leftover while it is being written."""
    sets = []
    for i in range(6):
        source = tmp_path / f"set{i}"
        source.mkdir()
        sets.append({name: data + str(i).encode() * 5000 for name, data in NEW.items()})
        for name, data in sets[-1].items():
            (source / name).write_bytes(data)
    (tmp_path / "switch.py").write_text(SWITCH)
    link = tmp_path / "artifacts" / "enc"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "switch.py", str(link), str(tmp_path / f"set{i}")],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
             for i in range(len(sets))]
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read()
    assert files(link) in sets
    assert sorted(p.name for p in link.parent.iterdir()) == [os.readlink(link), "enc"]


# --- record, killed; the previous crate still passes parity -----------------------------------

MODULE = """\
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, hidden=4):
            super().__init__()
            self.lstm = nn.LSTM(3, hidden, batch_first=True)
            self.proj = nn.Linear(hidden, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return torch.tanh(self.proj(out))
    """

CONFIG = """\
    crate: crate
    artifacts: artifacts
    models:
      - name: tiny
        factory: usermodels:Tiny
        kwargs: {hidden: 4}
        inputs:
          - x: {shape: [2, 5, 3]}
          - x: {shape: [1, 3, 3]}
    """


def _versions(artifacts: Path) -> list[str]:
    return sorted(p.name for p in artifacts.iterdir())


@pytest.mark.cargo
def test_killed_record_keeps_the_previous_recording(tmp_path, cargo_env, capsys):
    pytest.importorskip("torch")
    from pycandle.cli import main
    from pycandle.config import load_config
    from pycandle.record import record

    root = tmp_path / "project"
    root.mkdir()
    (root / "usermodels.py").write_text(textwrap.dedent(MODULE))
    config = root / "models.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    pin_lockfile(root / "crate")
    for stage in ("record", "codegen"):
        assert main([stage, "--config", str(config)]) == 0
    artifacts, link = root / "artifacts", root / "artifacts" / "tiny"
    old, old_entries, crate = files(link), _versions(artifacts), tree(root / "crate")

    config.write_text(config.read_text().replace("{hidden: 4}", "{hidden: 5}"))
    # what the changed model records, written elsewhere
    cfg = load_config(config)
    record(dataclasses.replace(cfg, artifacts=tmp_path / "reference"), list(cfg.models))
    new = files(tmp_path / "reference" / "tiny")
    assert new != old

    # 1. killed while starting up (importing torch)
    cmd = [sys.executable, "-m", "pycandle", "record", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert files(link) == old and _versions(artifacts) == old_entries

    # 2. killed with the new recording written and synced, just before the switch
    proc = run_killed(root, "replace:artifacts/tiny+0", "-m", "pycandle", "record",
                      "--config", str(config))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert files(link) == old
    # killed mid-write indeed: the new recording and the link to it are ready
    version, tmp_link = sorted(set(_versions(artifacts)) - set(old_entries))
    assert files(artifacts / version) == new and os.readlink(artifacts / tmp_link) == version
    assert tree(root / "crate") == crate

    # the previous crate still builds and passes parity on the previous recording
    capsys.readouterr()
    assert main(["parity", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "parity: 2 passed, 0 failed" in capsys.readouterr().out

    # 3. killed just after the switch, before the old recording is deleted
    proc = run_killed(root, "replace:artifacts/tiny+1", "-m", "pycandle", "record",
                      "--config", str(config))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert files(link) == new
    assert os.readlink(link) in _versions(artifacts) and len(_versions(artifacts)) > 2

    # a normal run: up to date (the switch completed), and the leftovers are gone
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "tiny: up to date" in proc.stdout
    assert files(link) == new and _versions(artifacts) == [os.readlink(link), "tiny"]


# --- codegen, killed at every step: the crate stays buildable --------------------------------

CODEGEN_CONFIG = """\
crate: crate
models:
"""
CODEGEN_MODEL = """\
  - name: {name}
    factory: model:Speaker
    inputs:
      - mels: {{shape: [2, 10, 8]}}
"""


def _mods(path: Path, keyword: str) -> set[str]:
    return {line.split()[-1].rstrip(";") for line in path.read_text().splitlines()
            if line.startswith(f"{keyword} ")}


def test_killed_codegen_leaves_a_buildable_crate(tmp_path):
    """Regenerate a crate (one model changed, one added) killed before each filesystem change
    in turn: every file is wholly old or new, no `mod` names a missing file, and the next run
    completes with no temporary files left."""
    from pycandle.cli import main

    def project(path: Path, models: list) -> None:
        for manifest in models:
            out = path / "artifacts" / manifest.name
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.json").write_text(manifest.dumps())
        (path / "models.yaml").write_text(CODEGEN_CONFIG + "".join(
            CODEGEN_MODEL.format(name=m.name) for m in models))

    speaker = speaker_encoder()
    old_models = [speaker]
    new_models = [dataclasses.replace(speaker, atol=1e-3), speaker_encoder("listener")]
    pristine, reference = tmp_path / "pristine", tmp_path / "reference"
    project(pristine, old_models)
    assert main(["codegen", "--config", str(pristine / "models.yaml")]) == 0
    # the reference crate has the same history (its package name is the first models')
    project(reference, old_models)
    assert main(["codegen", "--config", str(reference / "models.yaml")]) == 0
    project(reference, new_models)
    assert main(["codegen", "--config", str(reference / "models.yaml")]) == 0
    project(pristine, new_models)  # the crate is still the old models'
    old, new = tree(pristine / "crate"), tree(reference / "crate")
    assert old != new

    work = tmp_path / "work"
    for point in range(1, 200):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        program = ["-m", "pycandle", "codegen", "--config", str(work / "models.yaml")]
        proc = run_killed(work, point, *program)
        if proc.returncode == 0:
            break  # past the last change
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        crate = work / "crate"
        for rel, data in tree(crate).items():
            if Path(rel).name.endswith(".tmp"):
                continue  # a killed write's temporary file, which nothing compiles
            assert data in (old.get(rel), new.get(rel)), f"kill point {point}: {rel} is mixed"
        for module in _mods(crate / "src" / "lib.rs", "pub mod"):
            assert (crate / "src" / f"{module}.rs").is_file(), f"kill point {point}"
        for module in _mods(crate / "tests" / "parity" / "main.rs", "mod"):
            assert (crate / "tests" / "parity" / f"{module}.rs").is_file(), f"kill point {point}"
        proc = run_killed(work, 10_000, *program)  # runs to the end
        assert proc.returncode == 0, proc.stderr
        assert tree(crate) == new, f"kill point {point}: the rerun did not complete the crate"
    else:
        pytest.fail("codegen never finished")
    # at least one kill point per file written
    assert point > sum(1 for rel, data in new.items() if old.get(rel) != data)
