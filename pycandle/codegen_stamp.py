"""Whether `pycandle codegen` would change nothing, told without importing the code generator.

After a successful codegen the CLI stores a stamp: a hash of everything codegen reads (each
selected model's manifest bytes, every file of PyCandle's package (code, templates and the
runtime), the crate and artifacts paths, every Cargo.toml of the directories above the crate
(the enclosing workspace) and `rustfmt --version`) and the hash of every file in the crate then
(outside `target/` and hidden directories). When both are the same on the next run, codegen
would write the same bytes to the same files: it is skipped. Anything changed, added or deleted
in the crate, or in what it is generated from, runs codegen in full, which rewrites what
differs. Codegen is deterministic, so a stamp is a plain fact ("these inputs give this crate")
and a stale or foreign one can only cost a full run, never skip a needed one.

Stamps live outside the project (the generated crate is the user's, and artifacts/ is
record's): in $PYCANDLE_CACHE_DIR, else $XDG_CACHE_HOME/pycandle, else ~/.cache/pycandle, one
small file per crate directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from pycandle.depfile import PYCANDLE_DIR
from pycandle.fsutil import sha256_file, write_atomic

_MAX_STAMPS = 64  # beyond this many, stamps of crates that no longer exist are deleted


def cache_dir() -> Path:
    if os.environ.get("PYCANDLE_CACHE_DIR"):
        return Path(os.environ["PYCANDLE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pycandle"


def _stamp_path(crate_dir: Path) -> Path:
    name = hashlib.sha256(str(crate_dir.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "codegen-stamps" / f"{name}.json"


@lru_cache(maxsize=None)
def _package_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in PYCANDLE_DIR.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(PYCANDLE_DIR).as_posix()}\0".encode())
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def _rustfmt() -> str | None:
    exe = shutil.which("rustfmt")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _key(crate_dir: Path, artifacts_root: Path, models: list[str]) -> str | None:
    """A hash of codegen's inputs, or None when one cannot be read (codegen will say why)."""
    crate = crate_dir.resolve()
    try:
        manifests = {m: sha256_file(artifacts_root / m / "manifest.json") for m in models}
        workspace = {str(p): sha256_file(p / "Cargo.toml") for p in crate.parents
                     if (p / "Cargo.toml").is_file()}
    except OSError:
        return None
    rustfmt = _rustfmt()
    if rustfmt is None:
        return None
    inputs = {"models": list(models), "manifests": manifests, "package": _package_hash(),
              "crate": str(crate), "artifacts": str(artifacts_root.parent.resolve()
                                                    / artifacts_root.name),
              "workspace": workspace, "rustfmt": rustfmt}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _crate_files(crate_dir: Path) -> dict[str, str]:
    """Every file of the crate (not its build output or hidden directories), hashed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(crate_dir):
        top = Path(dirpath) == crate_dir
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and not (top and d == "target"))
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(crate_dir).as_posix()] = sha256_file(path)
    return found


def is_current(crate_dir: Path, artifacts_root: Path, models: list[str]) -> bool:
    """Whether the crate is exactly what codegen last made from these same inputs."""
    try:
        stamp = json.loads(_stamp_path(crate_dir).read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or not crate_dir.is_dir():
        return False
    key = _key(crate_dir, artifacts_root, models)
    try:
        return key is not None and stamp.get("key") == key \
            and stamp.get("files") == _crate_files(crate_dir)
    except OSError:
        return False


class Stamp:
    """Codegen's inputs, hashed before it runs (a manifest recorded meanwhile then shows as a
    change next time); `save()` after it succeeded pairs them with the crate it left."""

    def __init__(self, crate_dir: Path, key: str | None) -> None:
        self.crate_dir, self.key = crate_dir, key

    @classmethod
    def before(cls, crate_dir: Path, artifacts_root: Path, models: list[str]) -> Stamp:
        forget(crate_dir)  # until this run succeeds, nothing is known about the crate
        return cls(crate_dir, _key(crate_dir, artifacts_root, models))

    def save(self) -> None:
        """Only an optimisation: errors are ignored."""
        if self.key is None:
            return
        path = _stamp_path(self.crate_dir)
        try:
            stamp = {"crate": str(self.crate_dir.resolve()), "key": self.key,
                     "files": _crate_files(self.crate_dir)}
            write_atomic(path, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            _prune(path.parent)
        except OSError:
            pass


def forget(crate_dir: Path) -> None:
    """Drop the crate's stamp: the next codegen runs in full."""
    try:
        _stamp_path(crate_dir).unlink(missing_ok=True)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    stamps = sorted(folder.glob("*.json"))
    if len(stamps) <= _MAX_STAMPS:
        return
    for stamp in stamps:
        try:
            if not Path(json.loads(stamp.read_bytes())["crate"]).is_dir():
                stamp.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            stamp.unlink(missing_ok=True)
