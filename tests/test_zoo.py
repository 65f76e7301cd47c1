"""The zoo: published models imported unedited from their PyPI packages (zoo/models.yaml),
recorded, generated into one crate and checked for parity at every trace case.

The zoo's packages come from zoo/requirements.lock (`nox -s tests` and `nox -s zoo` install
it). A missing package fails the test with the command that installs it: it never skips.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import ROOT, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402

ZOO = ROOT / "zoo"
INSTALL = ("uv pip install --python .nox/pycandle/bin/python --no-deps -r zoo/requirements.lock "
           "(or run `python3 -m nox -s tests`, which does)")
# Kept for independent acceptance runs: never in the zoo.
EXCLUDED = {"torchaudio", "resemblyzer", "chatterbox-tts", "openunmix", "demucs", "torchcrepe",
            "encodec"}
MIN_MODELS, MIN_PACKAGES = 10, 5
MAX_ATOL, MAX_RTOL = 1e-4, 1e-3


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ZOO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _factories():
    """zoo/factories.py, the construction-only factories (models.yaml's `factories:` module)."""
    spec = importlib.util.spec_from_file_location("factories", ZOO / "factories.py")
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    return factories


def _distribution(factory: str) -> str:
    """The PyPI distribution a factory's module comes from (normalised name); for a
    construction-only factory of zoo/factories.py, the package whose classes it builds."""
    module, _, name = factory.partition(":")
    top = module.split(".", 1)[0]
    if module == "factories":
        built = getattr(_factories(), name)
        assert hasattr(built, "package"), f"{factory}: mark it with @builds(<package module>)"
        top = built.package
    dists = importlib.metadata.packages_distributions().get(top)
    assert dists, f"{factory}: module {top!r} belongs to no installed distribution"
    return re.sub(r"[-_.]+", "-", dists[0]).lower()


@pytest.fixture(scope="module")
def zoo_config():
    return load_config(ZOO / "models.yaml")


def test_zoo_packages_are_installed_at_their_locked_versions():
    missing = []
    for name, version in _locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name}=={version} (not installed)")
            continue
        if installed != version:
            missing.append(f"{name}=={version} (found {installed})")
    assert not missing, f"zoo packages missing: {', '.join(missing)}; install them: {INSTALL}"


def test_zoo_models_import(zoo_config):
    for model in zoo_config.models:
        module = model.factory.split(":", 1)[0]
        try:
            _factories() if module == "factories" else importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"zoo model {model.name}: cannot import {module} ({e}); install the zoo's "
                        f"packages: {INSTALL}")


def test_zoo_meets_the_issue(zoo_config):
    """At least 10 published models from at least 5 packages, none excluded, every one pinned,
    each at two or more trace shapes, tolerances no looser than atol 1e-4, rtol 1e-3."""
    locked = _locked()
    packages = set()
    for model in zoo_config.models:
        dist = _distribution(model.factory)
        assert dist not in EXCLUDED, f"{model.name}: {dist} is kept out of the zoo"
        assert dist in locked, f"{model.name}: {dist} is not pinned in zoo/requirements.lock"
        packages.add(dist)
        shapes = {tuple(sorted((k, v.shape) for k, v in case.items())) for case in model.inputs}
        assert len(shapes) >= 2, f"{model.name}: needs two trace cases of different shapes"
        assert model.tolerance.atol <= MAX_ATOL and model.tolerance.rtol <= MAX_RTOL, model.name
        assert model.weights is None, f"{model.name}: the zoo uses random init"
    assert len(zoo_config.models) >= MIN_MODELS, len(zoo_config.models)
    assert len(packages) >= MIN_PACKAGES, sorted(packages)


@pytest.mark.cargo
def test_zoo_parity(tmp_path, cargo_env, capsys):
    """The whole zoo through record, codegen and parity in one scratch crate; then `pycandle
    coverage` of the zoo's config lists nothing unsupported (read from these recordings, which
    are up to date: the same answer as tracing every model again, without the minutes)."""
    shutil.copy(ZOO / "models.yaml", tmp_path / "models.yaml")
    shutil.copy(ZOO / "factories.py", tmp_path / "factories.py")
    config = load_config(tmp_path / "models.yaml")
    pin_lockfile(config.crate)
    assert main(["all", "--config", str(tmp_path / "models.yaml")]) == 0
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    text = json.dumps(report)
    for model in config.models:
        assert model.name in text, f"{model.name} missing from the parity report"
    capsys.readouterr()
    assert main(["coverage", "--config", str(tmp_path / "models.yaml")]) == 0
    out = capsys.readouterr().out
    assert "unsupported" not in out, out
    for model in config.models:
        assert f"{model.name}: supported (as recorded)" in out, out
