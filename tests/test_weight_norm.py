"""Weight normalisation, both of PyTorch's spellings, as vocoders and TCNs use it: the port
loads the user's own parameters (`weight_g`/`weight_v`, or `parametrizations.weight.original0/1`)
and computes `weight` once at load. Parity through the real pipeline at two trace shapes; other
parametrizations are reported."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

MODELS_PY = """\
import torch
from torch import nn
from torch.nn.utils import parametrizations, weight_norm


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(4, 6, 3, padding=1))
        self.conv_dim1 = weight_norm(nn.Conv1d(6, 6, 3, dilation=2, padding=2), dim=1)
        self.up = parametrizations.weight_norm(nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1))
        self.conv2d = parametrizations.weight_norm(nn.Conv2d(4, 3, (3, 2), padding=1))
        self.linear = weight_norm(nn.Linear(4, 5), dim=None)
        self.linear_p = parametrizations.weight_norm(nn.Linear(4, 2, bias=False))
        with torch.no_grad():  # g away from ||v||, so a port that ignored g would fail
            for name, p in self.named_parameters():
                if name.endswith(("weight_g", "original0")):
                    p.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        h = self.conv_dim1(h)
        y = self.up(h)
        return (y, self.conv2d(y.unsqueeze(1).expand(-1, 4, -1, -1)),
                self.linear(x.transpose(1, 2)), self.linear_p(x.transpose(1, 2)))


class Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = parametrizations.spectral_norm(nn.Conv1d(4, 4, 3))

    def forward(self, x):
        return self.conv(x)
"""

MODELS = """\
crate: crate
models:
  - name: normed
    factory: wnmodels:Normed
    inputs:
      - x: {shape: [2, 4, 9], low: -1, high: 1}
      - x: {shape: [1, 4, 14], low: -1, high: 1}
"""


@pytest.mark.cargo
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_weight_normed_layers_match_pytorch(tmp_path, cargo_env, capsys):
    out = run_pipeline(tmp_path, {"wnmodels": MODELS_PY}, MODELS, capsys)
    assert "parity: 2 passed, 0 failed" in out
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    layers = {e["layer"] for r in report for e in r["entries"] if e["kind"] == "layer"}
    assert layers == {"conv", "conv_dim1", "up", "conv2d", "linear", "linear_p"}
    src = (tmp_path / "crate" / "src" / "normed.rs").read_text()
    assert 'weight_norm(vb.pp("conv"), Some(0))?' in src
    assert 'weight_norm(vb.pp("conv_dim1"), Some(1))?' in src
    assert 'weight_norm(vb.pp("linear"), None)?' in src
    assert_clippy_clean(tmp_path / "crate")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_other_parametrizations_are_reported(tmp_path):
    (tmp_path / "wnmodels.py").write_text(MODELS_PY)
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        models:
          - name: spectral
            factory: wnmodels:Spectral
            inputs:
              - x: {shape: [2, 4, 9]}
        """))
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    report = " ".join(str(info.value).split())
    assert "[conv] Conv1d option not supported: a parametrization of its parameters" in report
    assert "_SpectralNorm on weight" in report
    assert not (tmp_path / "artifacts").exists()
