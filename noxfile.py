"""Task runner: thin sessions over the `pycandle` CLI.

All sessions share one virtualenv (.nox/pycandle), built by uv from the pinned
requirements.lock with the interpreter nox runs on, so torch is installed once and reused.
Arguments pass through: `nox -s parity -- --model voice_encoder`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "pycandle"
LOCK = ROOT / "requirements.lock"
ZOO = ROOT / "zoo"

nox.options.sessions = ["parity"]
nox.options.default_venv_backend = "none"


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, (re)built when the lock file or pyproject change."""
    stamp = ENV / ".pycandle-stamp"
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    python = ENV / "bin" / "python"
    if not python.exists() or not stamp.is_file() or stamp.read_text() != digest:
        env = {"UV_PYTHON_DOWNLOADS": "never"}
        session.run("uv", "venv", "--quiet", "--allow-existing", "--python", sys.executable,
                    str(ENV), env=env, external=True)
        session.run("uv", "pip", "install", "--quiet", "--python", str(python),
                    "-r", str(LOCK), env=env, external=True)
        session.run("uv", "pip", "install", "--quiet", "--no-deps", "--python", str(python),
                    "-e", str(ROOT), env=env, external=True)
        stamp.write_text(digest)
    return str(python)


def _zoo_python(session: nox.Session) -> str:
    """The shared environment with the zoo's published-model packages added (`--no-deps`, from
    zoo/requirements.lock), reinstalled only when that lock or the environment changed."""
    python = _python(session)
    stamp = ENV / ".pycandle-zoo-stamp"
    digest = hashlib.sha256((ENV / ".pycandle-stamp").read_bytes()
                            + (ZOO / "requirements.lock").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != digest:
        session.run("uv", "pip", "install", "--quiet", "--no-deps", "--python", python,
                    "-r", str(ZOO / "requirements.lock"), env={"UV_PYTHON_DOWNLOADS": "never"},
                    external=True)
        stamp.write_text(digest)
    return python


def _cargo_env() -> dict[str, str]:
    # One target dir for the workspace, the tests' scratch crates and CI's fresh clones.
    return {"CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}


def _pycandle(session: nox.Session, *args: str) -> None:
    session.run(_python(session), "-m", "pycandle", *args, *session.posargs,
                env=_cargo_env(), external=True)


@nox.session
def record(session: nox.Session) -> None:
    """Run each model in PyTorch; write manifests, weights and golden tensors."""
    _pycandle(session, "record")


@nox.session
def codegen(session: nox.Session) -> None:
    """Generate the Rust crate (Cargo.toml, modules, parity tests) from the manifests."""
    _pycandle(session, "codegen")


@nox.session
def parity(session: nox.Session) -> None:
    """The main job: record, generate and check parity for every model in models.yaml."""
    # `pycandle all` runs the three stages in one process: one interpreter start-up, not three
    _pycandle(session, "all")


@nox.session
def fuzz(session: nox.Session) -> None:
    """Randomised recurrent configurations through the pipeline: `nox -s fuzz -- --count 500`."""
    count = "100"
    if "--count" in session.posargs:
        count = session.posargs[session.posargs.index("--count") + 1]
    env = {**_cargo_env(), "PYCANDLE_FUZZ_COUNT": count}
    session.run(_python(session), "-m", "pytest", "-q", "-x", "tests/test_recurrent_sweep.py",
                env=env, external=True)


def _ensure_chromium(session: nox.Session) -> None:
    """The HTML report's test renders it in headless Chromium: install Debian's when missing."""
    if os.environ.get("PYCANDLE_CHROMIUM") or shutil.which("chromium"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        session.run(*install, env=env, external=True)
    except CommandFailed:
        try:  # the package lists may be missing or stale
            session.run(*sudo, "apt-get", "update", env=env, external=True)
            session.run(*install, env=env, external=True)
        except CommandFailed:
            session.error("the tests need Chromium and it could not be installed: install "
                          "Debian's `chromium` package, or set PYCANDLE_CHROMIUM to a Chromium "
                          "binary")


@nox.session
def tests(session: nox.Session) -> None:
    """pytest (unit, codegen, runtime and end-to-end) plus the runtime's cargo tests."""
    python = _zoo_python(session)  # tests/test_zoo.py runs the zoo's published models
    env = _cargo_env()
    _ensure_chromium(session)
    session.run("cargo", "test", "--quiet", "-p", "pycandle-runtime", env=env, external=True)
    session.run(python, "-m", "pytest", *(session.posargs or ["-q"]), env=env, external=True)


@nox.session
def zoo(session: nox.Session) -> None:
    """Published models imported unedited from their PyPI packages (zoo/models.yaml): record,
    generate one crate (zoo/zoo_crate) and check parity at every trace case."""
    python = _zoo_python(session)
    crate = ZOO / "zoo_crate"
    crate.mkdir(exist_ok=True)
    if not (crate / "Cargo.lock").exists():  # resolve the crates the workspace pins
        shutil.copy(ROOT / "Cargo.lock", crate / "Cargo.lock")
    session.run(python, "-m", "pycandle", "all", "--config", str(ZOO / "models.yaml"),
                *session.posargs, env=_cargo_env(), external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """PyTorch vs PyCandle side by side: recurrent layers (with stacked candle-nn layers too) and
    whole generated models (bench/models.yaml); writes reports/bench.json.
    `nox -s bench -- --models-only --rounds 3` is a quick run; see pycandle/bench/__init__.py."""
    session.run(_python(session), "-m", "pycandle.bench", *session.posargs,
                env=_cargo_env(), external=True)
