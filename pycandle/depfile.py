"""A recording's dependency list, `artifacts/<model>/depends.json`, like a compiler's depfile.

`record` writes it in the same atomic switch as the recording it describes. It names, with
their sha256, everything the recording was made from and everything it made:

    {"artifacts": {"golden.safetensors": ..., "manifest.json": ..., "weights.safetensors": ...},
     "entry": <the model's models.yaml entry>, "model": "enc",
     "pycandle": {"sources": <PyCandle's own .py files>, "version": "0.1.0"},
     "sources": {"usermodels.py": ...},      <- each user module the recording imported
     "torch": "2.5.1", "version": 1, "weights": {"path": "w.safetensors", "sha256": ...}}

Paths are relative to the models.yaml directory (absolute when outside it); keys are sorted
and nothing depends on time or on where the artifacts live, so recording the same model twice
writes the same bytes.

The up-to-date check (`why_stale`) reads that list and the files it names and nothing else:
it imports neither torch (its version comes from the installed package's metadata) nor the
user's code. So it sees a changed or deleted source of a module the recording imported, not a
module that a changed source would newly import; a changed source is the way such an import
arrives, so that is enough.

This module imports no torch, and neither may anything it imports.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pycandle
from pycandle.config import Config, ModelConfig
from pycandle.fsutil import sha256_file

FILE = "depends.json"
VERSION = 1
# The files of a recording besides the dependency list, written and switched together with it.
ARTIFACT_FILES = ("manifest.json", "weights.safetensors", "golden.safetensors")

PYCANDLE_DIR = Path(pycandle.__file__).resolve().parent
# Directories under the config's directory whose modules are not the user's project.
_FOREIGN_DIRS = ("site-packages", "dist-packages", "__pycache__")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=None)
def sources_hash(suffixes: tuple[str, ...] = (".py",)) -> str:
    """One hash of PyCandle's own files with these suffixes (names and contents), computed once
    per process."""
    h = hashlib.sha256()
    for path in sorted(p for p in PYCANDLE_DIR.rglob("*") if p.suffix in suffixes
                       and "__pycache__" not in p.parts and p.is_file()):
        data = path.read_bytes()
        h.update(f"{path.relative_to(PYCANDLE_DIR).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def torch_version() -> str | None:
    """The installed torch's version, read from its package metadata (no import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def entry_hash(mc: ModelConfig) -> str:
    """The model's entry in models.yaml, as parsed (comments and layout do not count)."""
    return _sha256(json.dumps(mc.raw, sort_keys=True, default=str).encode())


def is_user_source(path: Path, root: Path) -> bool:
    """A module of the user's project: under the config's directory, not PyCandle's own
    (hashed as a whole) and not inside a virtualenv or another hidden or installed tree there,
    whose modules torch imports lazily, so their set would change between runs."""
    path, root = path.resolve(), root.resolve()
    if not path.is_relative_to(root) or path.is_relative_to(PYCANDLE_DIR):
        return False
    return not any(p.startswith(".") or p in _FOREIGN_DIRS
                   for p in path.relative_to(root).parts[:-1])


def user_modules(root: Path) -> dict[str, Path]:
    """The imported modules (name -> source file) that are the user's, under `root`."""
    found = {}
    for name, module in list(sys.modules.items()):
        src = getattr(module, "__file__", None)
        if name != "__main__" and src and src.endswith(".py"):
            path = Path(src).resolve()
            if path.is_file() and is_user_source(path, root):
                found[name] = path
    return found


def _shown(path: Path, root: Path) -> str:
    path, root = path.resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _located(shown: str, root: Path) -> Path:
    return root / shown  # an absolute `shown` stays absolute


def inputs(cfg: Config, mc: ModelConfig, sources: Iterable[Path]) -> dict[str, Any]:
    """What a recording of `mc` depends on: its models.yaml entry, the user's source files it
    imported, the weights file, PyCandle's sources and the torch version."""
    return {
        "version": VERSION,
        "model": mc.name,
        "entry": entry_hash(mc),
        "pycandle": {"version": pycandle.__version__, "sources": sources_hash()},
        "torch": torch_version(),
        "sources": {_shown(p, cfg.root): sha256_file(p) for p in sorted(set(sources))},
        "weights": None if mc.weights is None else {
            "path": _shown(mc.weights, cfg.root), "sha256": sha256_file(mc.weights)},
    }


def content_hash(deps: dict[str, Any]) -> str:
    """One hash of `inputs(...)` (the manifest's content_hash)."""
    return _sha256(_dumps({k: v for k, v in deps.items() if k != "artifacts"}))


def _dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def render(deps: dict[str, Any], artifacts: dict[str, bytes]) -> bytes:
    """The dependency list's bytes: `inputs(...)` and the hash of each file of the recording."""
    return _dumps({**deps, "artifacts": {name: _sha256(data)
                                         for name, data in sorted(artifacts.items())}})


def why_stale(cfg: Config, mc: ModelConfig) -> str | None:
    """None when `artifacts/<model>` was recorded from exactly these inputs and its files are
    as recorded; otherwise why it must be recorded again. Reads files only."""
    out = cfg.artifacts / mc.name
    if not out.is_dir():
        return "not recorded yet"
    try:
        deps = json.loads((out / FILE).read_bytes())
    except FileNotFoundError:
        return f"no {FILE}: recorded by an older PyCandle"
    except (OSError, ValueError) as e:
        return f"{FILE} is unreadable: {type(e).__name__}"
    if not isinstance(deps, dict) or deps.get("version") != VERSION:
        return f"{FILE} is from another PyCandle version"
    try:
        return _why_stale(cfg, mc, out, deps)
    except (KeyError, TypeError, AttributeError):
        return f"{FILE} is malformed"


def _why_stale(cfg: Config, mc: ModelConfig, out: Path, deps: dict[str, Any]) -> str | None:
    if deps["entry"] != entry_hash(mc):
        return "its models.yaml entry changed"
    if deps["torch"] != torch_version():
        return f"torch changed ({deps['torch']} -> {torch_version()})"
    if deps["pycandle"] != {"version": pycandle.__version__, "sources": sources_hash()}:
        return "PyCandle's sources changed"
    for shown, digest in sorted(deps["sources"].items()):
        path = _located(shown, cfg.root)
        if not path.is_file():
            return f"{shown}, which it imported, is gone"
        if sha256_file(path) != digest:
            return f"{shown} changed"
    weights = deps["weights"]
    if (weights is None) != (mc.weights is None):
        return "its weights file changed"
    if weights is not None:
        if not mc.weights.is_file():
            return f"{weights['path']} is gone"
        if sha256_file(mc.weights) != weights["sha256"]:
            return f"{weights['path']} changed"
    if sorted(deps["artifacts"]) != sorted(ARTIFACT_FILES):
        return f"{FILE} lists other files than a recording's"
    for name, digest in sorted(deps["artifacts"].items()):
        path = out / name
        shown = path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path
        if not path.is_file():
            return f"{shown} is missing"
        if sha256_file(path) != digest:
            return f"{shown} is not what was recorded (edited or truncated)"
    return None
