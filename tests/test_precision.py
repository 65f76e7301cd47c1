"""Precision: the same recurrent model recorded and ported in f32, f64, f16 and bf16.

f32 and f64 are held to tight tolerances; half precisions load and run, with a tolerance that
suits 10 (f16) or 7 (bf16) bits of mantissa accumulated over the sequence."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402

pytestmark = pytest.mark.cargo

MODEL = """
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 5, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        out, h = self.gru(out)
        return torch.tanh(self.head(out)), h
"""

TOLERANCES = {
    "float32": (1e-5, 1e-4),
    "float64": (1e-12, 1e-10),
    "float16": (1e-2, 1e-2),
    "bfloat16": (6e-2, 6e-2),
}


def test_every_precision_passes_parity(tmp_path, cargo_env, capsys):
    (tmp_path / "precision.py").write_text(MODEL)
    entries = []
    for dtype, (atol, rtol) in TOLERANCES.items():
        entries.append(f"""\
  - name: encoder_{dtype}
    factory: precision:Encoder
    dtype: {dtype}
    inputs:
      - x: {{shape: [2, 9, 6], low: -1, high: 1}}
      - x: {{shape: [1, 4, 6], low: -1, high: 1}}
    tolerance: {{atol: {atol}, rtol: {rtol}}}
""")
    (tmp_path / "models.yaml").write_text("crate: crate\nmodels:\n" + "".join(entries))
    pin_lockfile(tmp_path / "crate")
    assert main(["all", "--config", str(tmp_path / "models.yaml")]) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    worst = {}
    for r in report:
        for e in r["entries"]:
            worst[r["model"]] = max(worst.get(r["model"], 0.0), e["max_abs"])
    # the wider type is the closer one, and each is far inside its own tolerance's reach
    assert worst["encoder_float64"] < 1e-12 < worst["encoder_float32"] < 1e-5
    assert worst["encoder_float16"] < 1e-2 and worst["encoder_bfloat16"] < 6e-2
    generated = (tmp_path / "crate" / "tests" / "parity" / "encoder_bfloat16.rs").read_text()
    assert "DType::BF16" in generated
