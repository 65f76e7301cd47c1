"""nn.Linear and F.linear, via the runtime's `Linear` (candle_nn's layer, faster CPU forward)."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Field, Layer, Op, T, Unsupported, need, one_tensor, register_layer, register_op, tensor,
)


def _linear_field(cfg: dict[str, Any]) -> Field:
    fn = "load" if cfg["bias"] else "load_no_bias"
    return Field("Linear",
                 lambda vb: f"Linear::{fn}({cfg['in_features']}, {cfg['out_features']}, {vb})?")


def _linear_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return _linear(this, one_tensor(args, kwargs))


def _linear(this: str, x: T) -> str:
    """`this.forward(x)` for a Linear `this`."""
    if not 2 <= x.rank <= 4:
        raise Unsupported(f"Linear on a rank-{x.rank} input (Candle's Linear takes rank 2 to 4)")
    # The runtime's Linear reads a strided input itself, and hands Candle a contiguous one.
    return f"{this}.forward({x.borrow})?"


register_layer(Layer(
    "torch.nn.Linear", ("in_features", "out_features", "bias"), outputs="out",
    field=_linear_field, call=_linear_call,
    uses=("pycandle_runtime::Linear",), call_uses=("candle_nn::Module",),
    doc="with or without bias",
    params=(("weight", "weight()"),),
))


def _functional_linear(spelling: str, a: dict[str, Any], out: Any) -> str:
    """`F.linear(x, weight, bias)` on the model's own tensors: a Linear made of them (tensors
    are reference-counted: the clones copy no data)."""
    w = tensor(a["weight"], "weight")
    if w.rank != 2:
        raise Unsupported(f"F.linear with a rank-{w.rank} weight")
    bias = "None" if a["bias"] is None else f"Some({tensor(a['bias'], 'bias').name}.clone())"
    need("candle_nn::Module")
    # Qualified: a model's own subclass of nn.Linear may be a struct named `Linear`.
    return _linear(f"pycandle_runtime::Linear::new({w.name}.clone(), {bias})",
                   tensor(a["input"]))


register_op(Op("linear", {"torch.nn.functional.linear": "input, weight, bias=None"},
               _functional_linear, doc="a rank-2 weight, with or without bias"))
