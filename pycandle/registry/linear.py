"""nn.Linear, via candle_nn."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import Field, Layer, Unsupported, one_tensor, register_layer


def _linear_field(cfg: dict[str, Any]) -> Field:
    fn = "linear" if cfg["bias"] else "linear_no_bias"
    return Field("Linear",
                 lambda vb: f"candle_nn::{fn}({cfg['in_features']}, {cfg['out_features']}, {vb})?")


def _linear_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    if not 2 <= x.rank <= 4:
        raise Unsupported(f"Linear on a rank-{x.rank} input (Candle's Linear takes rank 2 to 4)")
    if x.rank >= 3:
        # Candle 0.11's batched matmul mixes up batches for a strided (e.g. transposed) input;
        # `contiguous` costs nothing when the input already is.
        return f"{this}.forward(&{x.name}.contiguous()?)?"
    return f"{this}.forward({x.borrow})?"


register_layer(Layer(
    "torch.nn.Linear", ("in_features", "out_features", "bias"), outputs="out",
    field=_linear_field, call=_linear_call,
    uses=("candle_nn::Linear",), call_uses=("candle_nn::Module",),
    doc="with or without bias",
))
