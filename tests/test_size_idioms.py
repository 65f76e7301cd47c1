"""Sizes as published models compute them, carried into the Rust by provenance: a pad to a
multiple of the stride through `math.ceil(t / s)`, `int()`/`round()`/`math.trunc` of a float
length, `max`/`min` of sizes, `%`, negative positions counted from the end, a slice bound held
in a one-element tensor, segments of `range(0, t, hop)` (`min(hop, t - start)`) with sizes in
tensor arithmetic, and lengths built from shapes (`torch.full((b,), t)`, `t - torch.arange(b)`).
Parity at every trace case, and the code is the same whatever lengths were traced: a model
traced where its pad is 0 still pads right at a length that needs one."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402

MODULE = '''\
import math

import torch
import torch.nn.functional as F
from torch import nn


class PadToStride(nn.Module):
    def __init__(self, stride=4):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(3, 5, stride, stride)

    def forward(self, x):
        t = x.shape[-1]
        pad = math.ceil(t / self.stride) * self.stride - t
        frames = int(t / self.stride)
        y = self.conv(F.pad(x, (0, pad)))
        return y, y[..., :frames], x[..., -(t % 3 + 1):], x[..., -max(t - 6, 2)]


class SizeArithmetic(nn.Module):
    def forward(self, x):
        b, c, t = x.shape
        keep = min(t - 2, 2 * t // 3)
        flat = x.reshape(b, -1)[:, :max(c * t - 5, 1)]
        n = torch.as_tensor(t // 2)
        return flat, x[..., :keep], x[..., :n], x.new_zeros(b, math.floor(t / 3) + 1)


class RateChange(nn.Module):
    def __init__(self, old=3, new=2):
        super().__init__()
        self.old, self.new = old, new

    def forward(self, x):
        length = x.shape[-1]
        target = round(length * self.new / self.old)
        y = x.repeat(1, 1, 2)
        return y[..., :target], y[..., math.trunc(length / 2.5):]


class Segments(nn.Module):
    """The mean of every `hop` frames, the last segment shorter: a loop over `range(0, t, hop)`
    whose pass count and segment length follow the input length."""

    def __init__(self, hop=4):
        super().__init__()
        self.hop = hop

    def forward(self, x):
        t = x.shape[-1]
        means = []
        for start in range(0, t, self.hop):
            length = min(self.hop, t - start)
            means.append(x[..., start:start + length].sum(-1) / length)
        return torch.stack(means, -1), t - x, x * (t / self.hop)


class Lengths(nn.Module):
    """Lengths built from shapes: every item full length, or one shorter per item, packed."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)

    def forward(self, x):
        b, t, _ = x.shape
        shrinking = t - torch.arange(b)
        packed = nn.utils.rnn.pack_padded_sequence(x, shrinking, batch_first=True)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)
        return torch.full((b,), t), shrinking, out
'''

MODELS = """\
crate: crate
models:
  - name: pad_to_stride
    factory: szmodels:PadToStride
    inputs:
      - x: {shape: [2, 3, 8]}
      - x: {shape: [1, 3, 12]}
      - x: {shape: [2, 3, 10]}
      - x: {shape: [1, 3, 5]}
  - name: size_arithmetic
    factory: szmodels:SizeArithmetic
    inputs:
      - x: {shape: [2, 3, 9]}
      - x: {shape: [1, 4, 14]}
  - name: rate_change
    factory: szmodels:RateChange
    inputs:
      - x: {shape: [2, 3, 9]}
      - x: {shape: [1, 2, 13]}
  - name: segments
    factory: szmodels:Segments
    inputs:
      - x: {shape: [2, 3, 9]}
      - x: {shape: [1, 2, 14]}
      - x: {shape: [1, 3, 5]}
  - name: lengths
    factory: szmodels:Lengths
    inputs:
      - x: {shape: [2, 7, 3]}
      - x: {shape: [3, 5, 3]}
"""


def _code(path) -> list[str]:
    """The generated Rust without its comments (shape comments name the traced sizes)."""
    return [line for line in path.read_text().splitlines() if not line.strip().startswith("//")]


@pytest.mark.cargo
def test_size_idioms_match_pytorch_at_untraced_lengths(tmp_path, cargo_env, capsys):
    (tmp_path / "all").mkdir()
    out = run_pipeline(tmp_path / "all", {"szmodels": MODULE}, MODELS, capsys)
    assert "parity: 13 passed, 0 failed" in out, out[-3000:]
    src = tmp_path / "all" / "crate" / "src"
    pad, sizes, rate, segments = ((src / f"{name}.rs").read_text() for name in (
        "pad_to_stride", "size_arithmetic", "rate_change", "segments"))
    assert "x.dim(2)?.div_ceil(4) * 4 - x.dim(2)?" in pad, pad
    assert "from_end(x.dim(2)?, x.dim(2)? % 3 + 1)" in pad, pad
    # max(t - 6, 2) at t = 5: Python's -1 loses to 2; the usize difference saturates, never wraps
    assert "x.dim(2)?.saturating_sub(6).max(2)" in pad, pad
    assert ".min(x.dim(2)? / 4)" in pad, pad  # int(t / 4)
    assert "slice_bound(&n, x.dim(2)?)?" in sizes, sizes  # `n = torch.as_tensor(t // 2)`
    assert "(x.dim(2)? - 2).min(2 * x.dim(2)? / 3)" in sizes, sizes
    assert "(x.dim(1)? * x.dim(2)?).saturating_sub(5).max(1)" in sizes, sizes
    assert "x.dim(2)? / 3 + 1" in sizes, sizes  # math.floor(t / 3) + 1
    assert "as f64 / 3.0).round_ties_even() as usize" in rate, rate
    assert "as f64 / 2.5).trunc() as usize" in rate, rate
    # 3, 4 and 2 passes in the trace cases: as many as `range(0, t, 4)` has items, at any length
    assert "for step in 0..x.dim(2)?.div_ceil(4) {" in segments, segments
    assert "(x.dim(2)? - step * 4).min(4)" in segments, segments  # min(hop, t - start)
    assert "as f64)?" in segments and "affine(-1.0, x.dim(2)? as f64)?" in segments, segments
    lengths = (src / "lengths.rs").read_text()
    assert "Tensor::full(x.dim(1)? as i64, (x.dim(0)?,), device)?" in lengths, lengths
    assert "pad_with_zeros(1, 0, x.dim(1)? - out.dim(1)?)?" in lengths, lengths  # total_length=t
    assert_clippy_clean(tmp_path / "all" / "crate")

    # Traced only at lengths 8 and 12 (no pad), the model pads by the same expression: the case
    # at length 10 (pad 2) that passed above checks the code this trace generates.
    (tmp_path / "two").mkdir()
    two = MODELS.replace("      - x: {shape: [2, 3, 10]}\n", "")
    assert two != MODELS
    out = run_pipeline(tmp_path / "two", {"szmodels": MODULE}, two, capsys)
    assert "parity: 12 passed, 0 failed" in out, out[-3000:]
    for name in ("pad_to_stride", "size_arithmetic", "rate_change", "segments", "lengths"):
        assert _code(tmp_path / "two" / "crate" / "src" / f"{name}.rs") == _code(src / f"{name}.rs")
