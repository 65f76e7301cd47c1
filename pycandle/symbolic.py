"""Telling dimensions from constants: integers that change between trace cases.

Python arithmetic on sizes (`b, t, _ = x.shape; x.view(b * t, -1)`) is invisible to the tracer:
only the resulting integers reach torch. When such an integer differs between trace cases, it
is explained by the shapes seen in each case: a tensor's dimension, one scaled (x2..x8) or
floor-divided, the product of two, or one offset (up to 16), tried in that order (with two trace
cases several formulas can fit; a third case with other sizes settles it). Candidates come in
tiers: every form is tried on the call's own tensor arguments and the model inputs before
earlier values are considered, so `x.dim(2)? - 1` wins over an intermediate that happens to
have that size. Parity at every trace shape then checks the explanation. No torch here.
"""

from __future__ import annotations

from itertools import product
from typing import Any, Iterable

from pycandle.enums import SymKind
from pycandle.manifest import Ref, SymInt, TensorMeta

Values = tuple[int, ...]


Candidates = list[list[tuple[SymInt, Values]]]  # tiers, preferred first


def dim_candidates(tiers: Iterable[Iterable[Ref]], meta_of) -> Candidates:
    """(x.dim(d), its size in each case) for every dimension of the given tensors, per tier."""
    out: Candidates = []
    seen: set[Values] = set()
    for refs in tiers:
        tier = []
        for ref in refs:
            meta = meta_of(ref)
            if not isinstance(meta, TensorMeta):
                continue
            for d in range(meta.rank):
                values = tuple(shape[d] for shape in meta.shapes)
                if values in seen:  # the first tensor (in preference order) names a size
                    continue
                seen.add(values)
                tier.append((SymInt("dim", ref, d), values))
        out.append(tier)
    return out


def explain(target: Values, tiers: Candidates) -> SymInt | None:
    """The simplest shape expression equal to `target` in every case, if any."""
    if len(set(target)) == 1:
        return None  # the same in every case: a constant
    pool: list[tuple[SymInt, Values]] = []
    for tier in tiers:
        pool += tier
        sym = _explain(target, pool)
        if sym is not None:
            return sym
    return None


def _explain(target: Values, candidates: list[tuple[SymInt, Values]]) -> SymInt | None:
    for sym, values in candidates:
        if values == target:
            return sym
    varying = [(s, v) for s, v in candidates if len(set(v)) > 1]
    for sym, values in candidates:
        for k in range(2, 9):
            if all(t == v * k for t, v in zip(target, values)):
                return SymInt("mul", sym, k)
    for sym, values in candidates:
        for k in range(2, 65):
            if all(t == v // k for t, v in zip(target, values)):
                return SymInt("floordiv", sym, k)
    for (sa, va), (sb, vb) in product(varying, repeat=2):
        if all(t == a * b for t, a, b in zip(target, va, vb)):
            return SymInt("mul", sa, sb)
    for sym, values in candidates:
        offset = target[0] - values[0]
        if 0 < abs(offset) <= 16 and all(t - v == offset for t, v in zip(target, values)):
            return SymInt("add", sym, offset)
    return None


def symbolize(variants: list[Any], candidates: Candidates, where: list[str]) -> tuple[Any, list[str]]:
    """Merge one argument structure seen in each trace case.

    Equal leaves stay as they are; integers that differ become SymInts; anything else that
    differs is a problem, described in the returned list (with its path in `where`)."""
    first = variants[0]
    if all(_same(v, first) for v in variants[1:]):
        return first, []
    if isinstance(first, (tuple, list)) and all(
            type(v) is type(first) and len(v) == len(first) for v in variants):
        merged, problems = [], []
        for i in range(len(first)):
            m, p = symbolize([v[i] for v in variants], candidates, where + [str(i)])
            merged.append(m)
            problems += p
        return (tuple(merged) if isinstance(first, tuple) else merged), problems
    if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys()
                                       for v in variants):
        merged_d, problems = {}, []
        for k in first:
            merged_d[k], p = symbolize([v[k] for v in variants], candidates, where + [k])
            problems += p
        return merged_d, problems
    if isinstance(first, slice) and all(isinstance(v, slice) for v in variants):
        parts = []
        problems = []
        for attr in ("start", "stop", "step"):
            m, p = symbolize([getattr(v, attr) for v in variants], candidates, where + [attr])
            parts.append(m)
            problems += p
        return slice(*parts), problems
    if all(isinstance(v, int) and not isinstance(v, bool) for v in variants):
        sym = explain(tuple(variants), candidates)
        if sym is not None:
            return sym, []
        return first, [f"argument {'/'.join(where) or '0'} is {' / '.join(map(str, variants))} "
                       "in the trace cases and no input dimension explains it"]
    return first, [f"argument {'/'.join(where) or '0'} differs between trace cases: "
                   f"{' / '.join(repr(v)[:40] for v in variants)}"]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def evaluate(sym: Any, size_of) -> int:
    """The value of a symbolic integer given `size_of(ref, dim)`."""
    if not isinstance(sym, SymInt):
        return sym  # a literal (int or float), or the unused operand of a unary kind
    if sym.kind == SymKind.DIM:
        return size_of(sym.a, sym.b)
    if sym.kind == SymKind.STEP:
        return 0  # a loop's pass number: its value in the first pass
    return SymKind(sym.kind).apply(evaluate(sym.a, size_of), evaluate(sym.b, size_of))


def settle(value: Any, values_of) -> Any:
    """Sizes recorded by provenance (pycandle.shapes) that are the same in every trace
    case become plain ints: a constant channel count stays a literal. `values_of(sym)` gives a
    SymInt's value in each case."""
    if isinstance(value, SymInt):
        if _has_step(value):  # changes from pass to pass
            return value
        # constant only if every dimension it reads is: `t - t_padded` that is 0 in both
        # trace cases still follows the input length
        if all(len(set(values_of(d))) == 1 for d in _dims(value)):
            return values_of(value)[0]
        return value
    if isinstance(value, tuple):
        return tuple(settle(v, values_of) for v in value)
    if isinstance(value, list):
        return [settle(v, values_of) for v in value]
    if isinstance(value, dict):
        return {k: settle(v, values_of) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(*(settle(getattr(value, a), values_of) for a in ("start", "stop", "step")))
    return value


def _has_step(sym: Any) -> bool:
    return isinstance(sym, SymInt) and (sym.kind == SymKind.STEP or _has_step(sym.a)
                                        or _has_step(sym.b))


def _dims(sym: Any) -> Iterable[SymInt]:
    """The tensor dimensions a symbolic integer reads."""
    if isinstance(sym, SymInt):
        if sym.kind == SymKind.DIM:
            yield sym
        else:
            yield from _dims(sym.a)
            yield from _dims(sym.b)
