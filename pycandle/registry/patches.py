"""Sliding blocks: F.unfold and F.fold (nn.Unfold, nn.Fold; PyTorch's im2col and col2im), the
chunking and overlap-add of dual-path separation models, through the runtime's `Patches`; and
`Tensor.unfold`, windows along one dimension (framing a signal), through `sliding_windows`."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Dim, Layer, Op, Unsupported, int_arg, is_int, no_field, ntuple, one_tensor, register_layer,
    register_op, rust_dim, runtime, tensor, usize_expr,
)

_SETTINGS = ("kernel_size", "dilation", "padding", "stride")


def _patches(a: dict[str, Any]) -> str:
    """`Patches { kernel: (kh, kw), dilation: .., padding: .., stride: .. }`."""
    fields = []
    for name in _SETTINGS:
        pair = ntuple(a[name], 2, name)
        least = 0 if name == "padding" else 1
        if min(pair) < least:
            raise Unsupported(f"{name}={a[name]!r} (PyTorch needs values >= {least})")
        fields.append(f"{name.removesuffix('_size')}: ({pair[0]}, {pair[1]})")
    return f"{runtime('Patches')} {{ {', '.join(fields)} }}"


def unfold(x: Any, a: dict[str, Any]) -> str:
    x = tensor(x)
    if x.rank not in (3, 4):
        raise Unsupported(f"unfold of a rank-{x.rank} input (PyTorch takes rank 3 or 4)")
    return f"{_patches(a)}.unfold({x.borrow})?"


def fold(x: Any, a: dict[str, Any]) -> str:
    x = tensor(x)
    if x.rank not in (2, 3):
        raise Unsupported(f"fold of a rank-{x.rank} input (PyTorch takes rank 2 or 3)")
    size = a["output_size"]
    items = list(size) if isinstance(size, (tuple, list)) else [size, size]
    if len(items) == 1:
        items *= 2
    if len(items) != 2 or not all(is_int(s) or isinstance(s, Dim) for s in items):
        raise Unsupported(f"output_size={size!r} (expected two sizes)")
    h, w = (usize_expr(s) for s in items)
    return f"{_patches(a)}.fold({x.borrow}, ({h}, {w}))?"


_UNFOLD = "input, kernel_size, dilation=1, padding=0, stride=1"
_FOLD = "input, output_size, kernel_size, dilation=1, padding=0, stride=1"

register_op(Op("unfold", {"torch.nn.functional.unfold": _UNFOLD},
               lambda spelling, a, out: unfold(a["input"], a),
               doc="any kernel size, dilation, padding and stride; batched or not"))
register_op(Op("fold", {"torch.nn.functional.fold": _FOLD},
               lambda spelling, a, out: fold(a["input"], a),
               doc="overlapping blocks summed; output_size also from shapes"))


register_layer(Layer(
    "torch.nn.Unfold", _SETTINGS, outputs="out", field=no_field,
    call=lambda cfg, this, args, kwargs: unfold(one_tensor(args, kwargs), cfg),
    doc="as F.unfold"))
register_layer(Layer(
    "torch.nn.Fold", ("output_size",) + _SETTINGS, outputs="out", field=no_field,
    call=lambda cfg, this, args, kwargs: fold(one_tensor(args, kwargs), cfg),
    doc="as F.fold"))


def _windows(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if x.rank == 0:
        raise Unsupported("Tensor.unfold of a 0-d tensor")
    d = x.norm_dim(int_arg(a["dimension"], "dimension"))
    step = int_arg(a["step"], "step")
    if step <= 0:
        raise Unsupported(f"step={step} (PyTorch needs a positive step)")
    size = usize_expr(a["size"])
    return f"{runtime('sliding_windows')}({x.borrow}, {rust_dim(d, x.rank)}, {size}, {step})?"


register_op(Op("windows", {"Tensor.unfold": "input, dimension, size, step"}, _windows,
               doc="windows of `size` every `step` along one dimension, the window last"))
