"""The one list of what PyCandle supports: PyTorch layer types and functional ops.

Each entry knows everything about its PyTorch construct: which constructor arguments `record`
must capture, which values it can honour (anything else is reported, never silently ignored),
and the Rust that loads and calls it. `record`, `codegen`, `pycandle coverage` and the
unsupported-op report all read these tables. Entries live in one module per family; adding a
layer or an op is adding an entry (or a module listed below). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The family modules register their entries on import, in this (deterministic) order.
from pycandle.registry import (  # noqa: F401
    activation, arith, attention, conv, create, embedding, identity, index, linear, norm,
    patches, pool, reduce, resample, rnn, shape,
)
from pycandle.registry.core import (  # noqa: F401  (the registry's public surface)
    CONTAINERS, DTYPE_AWARE_OPS, LAYERS, OPS, Dim, Field, FloatSize, FromEnd, Layer, Op, Packed,
    Rust, Stream, T, Unsupported, alias, bind, emitted, one_tensor, rust_dim, rust_float, usize_expr,
)


def op_for(spelling: str) -> Op | None:
    return OPS.get(spelling)


def layer_for(torch_type: str) -> Layer | None:
    return LAYERS.get(torch_type)


@dataclass(frozen=True)
class Coverage:
    layers: list[tuple[str, str]] = field(default_factory=list)
    ops: list[tuple[str, list[str], str]] = field(default_factory=list)


def coverage() -> Coverage:
    """Everything supported, for docs and `pycandle coverage`."""
    cov = Coverage()
    for name in sorted(LAYERS):
        cov.layers.append((name, LAYERS[name].doc))
    seen: dict[str, Op] = {}
    for op in OPS.values():
        seen.setdefault(op.name, op)
    for name in sorted(seen):
        cov.ops.append((name, sorted(seen[name].spellings), seen[name].doc))
    return cov
