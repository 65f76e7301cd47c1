"""Layout: transpose, contiguous."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import Op, register_op, tensor


def _transpose(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d0, d1 = x.norm_dim(a["dim0"]), x.norm_dim(a["dim1"])
    return f"{x.name}.transpose({d0}, {d1})?"


def _contiguous(spelling: str, a: dict[str, Any], out: Any) -> str:
    return f"{tensor(a['input']).name}.contiguous()?"


register_op(Op("transpose", {"torch.transpose": "input, dim0, dim1",
                             "Tensor.transpose": "input, dim0, dim1",
                             "torch.swapaxes": "input, dim0, dim1",
                             "Tensor.swapaxes": "input, dim0, dim1"}, _transpose))
register_op(Op("contiguous", {"Tensor.contiguous": "input"}, _contiguous))
