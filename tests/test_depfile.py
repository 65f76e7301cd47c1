"""record's dependency list (depends.json) and the up-to-date check that reads it."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.depfile import FILE, why_stale  # noqa: E402
from pycandle.record import record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

HELPER = """\
    SCALE = 2.0
"""
ENCODER = """\
    import torch
    from torch import nn

    import helper

    class Encoder(nn.Module):
        def __init__(self, hidden=4):
            super().__init__()
            self.lstm = nn.LSTM(3, hidden, batch_first=True)
            self.proj = nn.Linear(hidden, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.proj(out) * helper.SCALE
"""
OTHER = """\
    from torch import nn

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 2)

        def forward(self, x):
            return self.proj(x)
"""
YAML = """\
    models:
      - name: enc
        factory: usermodels:Encoder
        kwargs: {hidden: 4}
        weights: enc.safetensors
        inputs:
          - x: {shape: [2, 5, 3]}
          - x: {shape: [1, 4, 3]}
      - name: other
        factory: othermodels:Other
        inputs:
          - x: {shape: [2, 3]}
          - x: {shape: [1, 3]}
"""


def project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("helper.py", HELPER), ("usermodels.py", ENCODER),
                       ("othermodels.py", OTHER), ("models.yaml", YAML)):
        (root / name).write_text(textwrap.dedent(text))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in _encoder(root)().state_dict().items()},
              str(root / "enc.safetensors"))
    return root / "models.yaml"


def _encoder(root: Path):
    sys.path.insert(0, str(root))
    try:
        for name in ("usermodels", "helper"):
            sys.modules.pop(name, None)
        import usermodels
        return usermodels.Encoder
    finally:
        sys.path.remove(str(root))


def stale(config: Path) -> dict[str, str | None]:
    cfg = load_config(config)
    return {mc.name: why_stale(cfg, mc) for mc in cfg.models}


@pytest.fixture
def recorded(tmp_path) -> Path:
    config = project(tmp_path / "project")
    assert main(["record", "--config", str(config)]) == 0
    assert stale(config) == {"enc": None, "other": None}
    return config


def test_the_no_op_record_imports_neither_torch_nor_the_users_code(recorded):
    probe = textwrap.dedent(f"""\
        import json, sys
        from pycandle.cli import main
        code = main(["record", "--config", {str(recorded)!r}])
        json.dump({{"code": code, "loaded": sorted(
            m for m in ("torch", "safetensors", "usermodels", "helper", "othermodels",
                        "pycandle.record") if m in sys.modules)}}, sys.stderr)
        """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=recorded.parent, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert json.loads(proc.stderr) == {"code": 0, "loaded": []}, proc.stderr
    assert "enc: up to date" in proc.stdout and "other: up to date" in proc.stdout


def _edit_source(config: Path) -> None:
    path = config.parent / "usermodels.py"
    path.write_text(path.read_text() + "# a comment counts: the file changed\n")


def _edit_helper(config: Path) -> None:
    (config.parent / "helper.py").write_text("SCALE = 3.0\n")


def _edit_weights(config: Path) -> None:
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in _encoder(config.parent)().state_dict().items()},
              str(config.parent / "enc.safetensors"))


def _edit_entry(config: Path) -> None:
    config.write_text(config.read_text().replace("shape: [1, 4, 3]", "shape: [1, 6, 3]"))


def _truncate_golden(config: Path) -> None:
    golden = config.parent / "artifacts" / "enc" / "golden.safetensors"
    golden.write_bytes(golden.read_bytes()[:100])


def _delete_depfile(config: Path) -> None:
    (config.parent / "artifacts" / "enc" / FILE).unlink()


@pytest.mark.parametrize("edit, reason", [
    (_edit_source, "usermodels.py changed"),
    (_edit_helper, "helper.py changed"),  # imported by the factory's module
    (_edit_weights, "enc.safetensors changed"),
    (_edit_entry, "its models.yaml entry changed"),
    (_truncate_golden, "artifacts/enc/golden.safetensors is not what was recorded"),
    (_delete_depfile, f"no {FILE}"),
])
def test_a_change_records_that_model_again_and_says_why(recorded, capsys, edit, reason):
    edit(recorded)
    found = stale(recorded)
    assert found["other"] is None  # it imports none of these files
    assert found["enc"] is not None and found["enc"].startswith(reason), found
    capsys.readouterr()
    assert main(["record", "--config", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert f"enc: recording ({reason}" in out and "recorded enc" in out
    assert "other: up to date" in out
    assert stale(recorded) == {"enc": None, "other": None}


def test_a_vanished_source_and_another_torch_are_changes(recorded):
    (recorded.parent / "helper.py").rename(recorded.parent / "helper_old.py")
    assert stale(recorded)["enc"] == "helper.py, which it imported, is gone"
    (recorded.parent / "helper_old.py").rename(recorded.parent / "helper.py")
    depends = recorded.parent / "artifacts" / "other" / FILE
    data = json.loads(depends.read_text())
    depends.write_text(json.dumps({**data, "torch": "1.0.0"}))
    assert stale(recorded) == {
        "enc": None, "other": f"torch changed (1.0.0 -> {importlib.metadata.version('torch')})"}


def test_the_dependency_list_is_each_models_own_and_deterministic(recorded, tmp_path):
    artifacts = recorded.parent / "artifacts"
    enc = json.loads((artifacts / "enc" / FILE).read_text())
    assert sorted(enc["sources"]) == ["helper.py", "usermodels.py"]
    assert sorted(json.loads((artifacts / "other" / FILE).read_text())["sources"]) == \
        ["othermodels.py"]
    assert enc["weights"]["path"] == "enc.safetensors"
    assert enc["torch"] == importlib.metadata.version("torch")
    assert sorted(enc["artifacts"]) == ["golden.safetensors", "manifest.json",
                                        "weights.safetensors"]
    text = (artifacts / "enc" / FILE).read_text()
    assert text == json.dumps(enc, indent=1, sort_keys=True) + "\n"  # sorted keys, no more
    manifest = json.loads((artifacts / "enc" / "manifest.json").read_text())

    # the same bytes when recorded alone, in another order, or by another project copy
    cfg = load_config(recorded)
    record(cfg, [cfg.models[1], cfg.models[0]], force=True)
    assert (artifacts / "enc" / FILE).read_text() == text
    record(cfg, [cfg.models[0]], force=True)
    assert (artifacts / "enc" / FILE).read_text() == text
    copy = project(tmp_path / "copy")
    cfg = load_config(copy)
    record(cfg, [cfg.models[0]])
    assert (copy.parent / "artifacts" / "enc" / FILE).read_text() == text
    assert json.loads((copy.parent / "artifacts" / "enc" / "manifest.json").read_text()) \
        ["content_hash"] == manifest["content_hash"]
