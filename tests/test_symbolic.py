"""Telling shape-derived integers from constants across trace cases (no torch)."""

from __future__ import annotations

from pycandle.manifest import Ref, SymInt, TensorMeta, decode, encode
from pycandle.symbolic import dim_candidates, evaluate, explain, symbolize

X = Ref("x")
H = Ref("lstm", (1, 0))
METAS = {
    X: TensorMeta("float32", ((2, 10, 8), (3, 7, 8))),
    H: TensorMeta("float32", ((2, 2, 16), (2, 3, 16))),
}
CANDS = dim_candidates([[X, H]], METAS.get)


def test_candidates_name_each_size_once_in_preference_order():
    assert [(s.a, s.b, v) for s, v in CANDS[0]] == [
        (X, 0, (2, 3)), (X, 1, (10, 7)), (X, 2, (8, 8)), (H, 0, (2, 2)), (H, 2, (16, 16))]


def test_constants_stay_constants():
    assert explain((8, 8), CANDS) is None


def test_dimensions_and_simple_expressions():
    assert explain((10, 7), CANDS) == SymInt("dim", X, 1)
    assert explain((20, 21), CANDS) == SymInt("mul", SymInt("dim", X, 0), SymInt("dim", X, 1))
    assert explain((9, 6), CANDS) == SymInt("add", SymInt("dim", X, 1), -1)
    assert explain((5, 3), CANDS) == SymInt("floordiv", SymInt("dim", X, 1), 2)
    assert explain((4, 6), CANDS) == SymInt("mul", SymInt("dim", X, 0), 2)
    assert explain((101, 5), CANDS) is None


def test_inputs_are_preferred_to_intermediates_of_the_same_size():
    narrowed = Ref("getitem")  # x[:, 1:], whose dim 1 is x.dim(1) - 1
    metas = {**METAS, narrowed: TensorMeta("float32", ((2, 9, 8), (3, 6, 8)))}
    tiers = dim_candidates([[X], [narrowed]], metas.get)
    assert explain((9, 6), tiers) == SymInt("add", SymInt("dim", X, 1), -1)
    # ... which still explain what the inputs cannot
    assert explain((18, 12), tiers) == SymInt("mul", SymInt("dim", narrowed, 1), 2)


def test_symbolize_merges_argument_structures():
    merged, problems = symbolize(
        [((X, 2, 10, -1), {"dim": 1}), ((X, 3, 7, -1), {"dim": 1})], CANDS, [])
    assert problems == []
    assert merged == ((X, SymInt("dim", X, 0), SymInt("dim", X, 1), -1), {"dim": 1})
    merged, problems = symbolize([(X, slice(None, 9)), (X, slice(None, 6))], CANDS, [])
    assert merged == (X, slice(None, SymInt("add", SymInt("dim", X, 1), -1), None))
    _, problems = symbolize([(X, 101), (X, 5)], CANDS, [])
    assert problems == ["argument 1 is 101 / 5 in the trace cases and no input dimension "
                        "explains it"]
    _, problems = symbolize([(X, "a"), (X, "b")], CANDS, [])
    assert "differs between trace cases" in problems[0]


def test_symbolic_integers_round_trip_and_evaluate():
    sym = SymInt("floordiv", SymInt("mul", SymInt("dim", X, 0), SymInt("dim", X, 1)), 2)
    assert decode(encode(sym)) == sym
    assert evaluate(sym, lambda ref, d: METAS[ref].shapes[1][d]) == 10
