"""A Python `if` on a size, taken in one trace case and not in another, becomes a Rust `if` on
that size expression (`let x_1 = if x.dim(2)? % 4 != 0 { .. } else { .. };`): parity at trace
cases that take both sides, layers inside a side checked in the cases that ran them, clippy-clean
code."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402

MODULE = '''\
import torch
import torch.nn.functional as F
from torch import nn


class PadToStride(nn.Module):
    """Pad the time axis to a multiple of the stride, as codec and separation models do."""

    def __init__(self, stride=4, channels=6):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride, stride=stride)

    def forward(self, x):  # (batch, channels, time)
        t = x.size(-1)
        if t % self.stride != 0:
            x = F.pad(x, (0, self.stride - t % self.stride))
        return torch.tanh(self.conv(x))


class TwoWays(nn.Module):
    """Long inputs are downsampled, short ones are not: layers on both sides, two values
    leaving the `if`."""

    def __init__(self, channels=6):
        super().__init__()
        self.down = nn.Conv1d(channels, channels, 3, stride=2)
        self.same = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x):
        if x.size(2) > 12:
            h = torch.relu(self.down(x))
            gate = torch.sigmoid(h)
        else:
            h = self.same(x)
            gate = torch.ones_like(h)
        return (h * gate).mean(-1), h
'''

MODELS = """\
crate: crate
artifacts: artifacts
models:
  - name: pad_to_stride
    factory: branchy:PadToStride
    inputs:
      - x: {shape: [2, 6, 16]}
      - x: {shape: [3, 6, 13]}
      - x: {shape: [1, 6, 9]}
  - name: two_ways
    factory: branchy:TwoWays
    inputs:
      - x: {shape: [2, 6, 16]}
      - x: {shape: [3, 6, 9]}
      - x: {shape: [1, 6, 21]}
"""


def test_an_if_on_a_size_is_a_rust_if(tmp_path, capsys):
    out = run_pipeline(tmp_path, {"branchy": MODULE}, MODELS, capsys)
    assert "parity: 6 passed, 0 failed" in out, out
    pad = (tmp_path / "crate" / "src" / "pad_to_stride.rs").read_text()
    assert ("let x_1 = if x.dim(2)? % 4 != 0 {\n"
            "            x.pad_with_zeros(D::Minus1, 0, 4 - x.dim(2)? % 4)?\n"
            "        } else {\n"
            "            x.clone()\n"
            "        };") in pad, pad
    assert "self.conv.forward(&x_1)?" in pad
    two = (tmp_path / "crate" / "src" / "two_ways.rs").read_text()
    assert "let (h, gate) = if x.dim(2)? > 12 {" in two, two
    assert two.count("self.down.forward(") == 1 and two.count("self.same.forward(") == 1
    # the layers of a side are checked in the trace cases that ran it
    tests = (tmp_path / "crate" / "tests" / "parity" / "two_ways.rs").read_text()
    assert "if matches!(case, 0 | 2) {" in tests and "if case == 1 {" in tests, tests
    assert "a tensor size was compared" not in pad + two  # no trace note: both sides ported
    assert_clippy_clean(tmp_path / "crate")


COMPOSITE = '''\
import torch.nn.functional as F
from torch import nn


class Composite(nn.Module):
    def forward(self, x):
        t = x.size(-1)
        if t > 4 and t % 2 == 1:
            x = F.pad(x, (0, 1))
        return x * 2
'''


def test_an_if_that_cannot_be_joined_is_named(tmp_path, capsys):
    from pycandle.cli import main

    (tmp_path / "composite.py").write_text(COMPOSITE)
    (tmp_path / "models.yaml").write_text(
        "models:\n  - name: m\n    factory: composite:Composite\n    inputs:\n"
        "      - x: {shape: [2, 3, 8]}\n      - x: {shape: [2, 3, 7]}\n")
    assert main(["record", "--config", str(tmp_path / "models.yaml")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("the `if` at composite.py:8 takes different paths in the trace cases, "
            "and cannot be written as a Rust `if`: its test makes more than one comparison"
            ) in err, err
    assert not (tmp_path / "artifacts" / "m").exists()
