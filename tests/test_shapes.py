"""Sizes recorded by provenance: ShapeInt arithmetic (no torch) and what record makes of it."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from pycandle.manifest import Manifest, Ref, SymInt
from pycandle.enums import SymKind
from pycandle.shapes import (
    ShapeFloat, ShapeInt, TracedNumber, TracedSize, traced_range, traced_size,
)

X = Ref("x")
B, T = SymInt("dim", X, 0), SymInt("dim", X, 1)


def test_arithmetic_keeps_the_expression():
    b, t = ShapeInt(2, B), ShapeInt(5, T)
    assert (b * t, (b * t).sym) == (10, SymInt("mul", B, T))
    assert ((t - 1).sym, (1 + t).sym) == (SymInt("add", T, -1), SymInt("add", 1, T))
    assert (10 - t, (10 - t).sym) == (5, SymInt("sub", 10, T))
    assert (t - b).sym == SymInt("sub", T, B)
    assert (t // 2, (t // 2).sym) == (2, SymInt("floordiv", T, 2))
    assert (3 * (t - 1)).sym == SymInt("mul", 3, SymInt("add", T, -1))
    assert (t + 0).sym is T and (t * 1).sym is T


def test_a_range_of_sizes_reports_its_length():
    """`range(0, t, 4)` is Python's range, and tells the tracer it has math.ceil(t / 4) items;
    a range of plain ints, or one run backwards, tells nothing."""
    t = ShapeInt(9, T)
    seen = []
    traced_range.on_range = lambda sym, n: seen.append((sym, n))
    try:
        items = traced_range(0, t, 4)
        assert items == range(0, 9, 4) and isinstance(items, traced_range)
        assert list(traced_range(t - 2, t)) == [7, 8]
        traced_range(5)
        traced_range(t - 1, -1, -1)
    finally:
        traced_range.on_range = None
    assert seen == [(SymInt(SymKind.CEIL, SymInt(SymKind.TRUEDIV, T, 4), None), 3),
                    (SymInt(SymKind.SUB, T, SymInt(SymKind.ADD, T, -2)), 2)]


def test_division_rounding_and_remainders_keep_the_expression():
    """`t / 2` is a float that remembers it came from t; math.ceil, round and % keep the trail."""
    t = ShapeInt(5, T)
    half = t / 2
    assert isinstance(half, ShapeFloat) and half == 2.5
    assert half.sym == SymInt(SymKind.TRUEDIV, T, 2)
    assert (math.ceil(half), math.ceil(half).sym) == (3, SymInt(SymKind.CEIL, half.sym, None))
    assert (math.floor(half), round(half)) == (2, 2)  # round half to even, as Python does
    assert round(half).sym == SymInt(SymKind.ROUND, half.sym, None)
    assert ((t % 2), (t % 2).sym) == (1, SymInt(SymKind.MOD, T, 2))
    assert ((-t), (-t).sym) == (-5, SymInt(SymKind.NEG, T, None))
    assert isinstance(t * 0.5, ShapeFloat) and t * 0.5 == 2.5


def test_anything_else_gives_plain_numbers():
    t = ShapeInt(5, T)
    for value in (int(t), t ** 2, float(t)):
        assert not isinstance(value, (ShapeInt, ShapeFloat)), value
    assert int(t) == 5 and t ** 2 == 25
    with pytest.raises(ZeroDivisionError):
        t // 0


def test_comparisons_are_reported_and_still_compare():
    seen = []
    TracedNumber.on_compare = lambda value, op, other, result: seen.append(
        (value, op, other, result))
    try:
        t = ShapeInt(5, T)
        assert t > 4 and t == 5 and not t < 5 and t != ShapeInt(6, B) and max(t, 3) == 5
    finally:
        TracedNumber.on_compare = None
    assert len(seen) >= 5 and all(s[0] is t for s in seen)
    assert seen[:3] == [(t, "gt", 4, True), (t, "eq", 5, True), (t, "lt", 5, False)]
    assert {5: "five"}[ShapeInt(5, T)] == "five"  # hashes as the int it is


def test_traced_size_indexes_slices_and_counts():
    size = traced_size(X, (2, 5, 3))
    assert isinstance(size, TracedSize) and size == (2, 5, 3)
    b, t, c = size
    assert (b.sym, size[-2].sym, size[1:][0].sym) == (B, T, T)
    assert isinstance(size[1:], TracedSize) and size.numel() == 30
    assert size.numel().sym == SymInt("mul", SymInt("mul", B, T), SymInt("dim", X, 2))


def test_the_size_helpers_import_without_torch():
    """They once lived in pycandle.record, whose __init__ imports torch: importing them (and the
    manifest they build on) must leave torch unimported, in a fresh interpreter."""
    probe = ("import sys; import pycandle.shapes, pycandle.symbolic, pycandle.manifest; "
             "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


SHAPES_MODEL = """\
    import torch
    from torch import nn

    class Folding(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):  # (batch, time, 4)
            b, t, c = x.shape
            if t > 100:
                raise ValueError("too long")
            y = self.proj(x.reshape(b * t, c)).view(b, t, -1)
            head = y[:, : t - 1]
            half = y.narrow(1, 0, x.size(dim=1) // 2)
            return head, half, x.new_zeros(x.shape), y.sum(dim=len(x.shape) - 1)
    """


def test_record_writes_sizes_by_provenance(tmp_path):
    pytest.importorskip("torch")
    from pycandle.config import load_config
    from pycandle.record import record

    (tmp_path / "shapemodels.py").write_text(textwrap.dedent(SHAPES_MODEL))
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        models:
          - name: folding
            factory: shapemodels:Folding
            inputs:
              - x: {shape: [2, 6, 4]}
              - x: {shape: [3, 9, 4]}
        """))
    cfg = load_config(tmp_path / "models.yaml")
    record(cfg, list(cfg.models))
    manifest = Manifest.load(tmp_path / "artifacts" / "folding" / "manifest.json")
    args = {n.name: (n.args, n.kwargs) for n in manifest.nodes}
    # b * t by provenance; the constant channel count stays a literal
    assert args["reshape"] == ((X, SymInt("mul", B, T), 4), {})
    assert args["getitem"][0][1] == (slice(None, None, None), slice(None, SymInt("add", T, -1), None))
    assert args["narrow"] == ((Ref("reshape_1"), 1, 0, SymInt("floordiv", T, 2)), {})
    assert args["new_zeros"][0][1] == (B, T, 4)
    assert args["sum"] == ((Ref("reshape_1"),), {"dim": 2})  # the rank is no size
    assert any("a tensor size was compared in Python" in w and "shapemodels.py:11" in w
               for w in manifest.warnings)
