"""Normalisation layers: nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d/2d (eval), via candle_nn."""

from __future__ import annotations

import math
from typing import Any, Callable

from pycandle.registry.core import (
    Field, Layer, Unsupported, minus, one_tensor, register_layer, require, rust_float, shape_tuple,
)


def _eps(cfg: dict[str, Any]) -> str:
    return rust_float(float(cfg["eps"]))


# --- LayerNorm ------------------------------------------------------------------------------------


def _normalized(cfg: dict[str, Any]) -> list[int]:
    shape = cfg["normalized_shape"]
    return list(shape) if isinstance(shape, (tuple, list)) else [shape]


def _layer_norm_field(cfg: dict[str, Any]) -> Field:
    dims = _normalized(cfg)
    size, eps = math.prod(dims), _eps(cfg)
    affine, bias = cfg["elementwise_affine"], cfg.get("bias") is not None
    if len(dims) == 1 and affine:
        fn = "layer_norm" if bias else "layer_norm_no_bias"
        return Field("LayerNorm", lambda vb: f"candle_nn::{fn}({size}, {eps}, {vb})?")
    if not affine:  # nothing to load: a unit scale and no shift
        return Field("LayerNorm", lambda vb: "{\n"
                     f"let vb = {vb};\n"
                     f"LayerNorm::new_no_bias(Tensor::ones({size}, vb.dtype(), vb.device())?, "
                     f"{eps})\n"
                     "}")
    # over several trailing dimensions: Candle normalises the last one, so the call flattens
    # them and the parameters are flattened alike
    shape = shape_tuple([str(d) for d in dims])
    lines = [f'let weight = vb.get({shape}, "weight")?.flatten_all()?;']
    if bias:
        lines.append(f'let bias = vb.get({shape}, "bias")?.flatten_all()?;')
        lines.append(f"LayerNorm::new(weight, bias, {eps})")
    else:
        lines.append(f"LayerNorm::new_no_bias(weight, {eps})")
    return Field("LayerNorm", lambda vb: "\n".join(["{", f"let vb = {vb};", *lines, "}"]))


def _layer_norm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    dims = _normalized(cfg)
    if x.rank < len(dims) or any(
            tuple(s[x.rank - len(dims):]) != tuple(dims) for s in x.meta.shapes):
        raise Unsupported(f"LayerNorm{tuple(dims)} on an input whose trailing dimensions differ")
    if len(dims) == 1:
        return f"{this}.forward({x.borrow})?"
    return (f"{this}.forward(&{x.name}.flatten_from({minus(len(dims))})?)?"
            f".reshape({x.name}.shape())?")


register_layer(Layer(
    "torch.nn.LayerNorm", ("normalized_shape", "eps", "elementwise_affine", "bias"),
    outputs="out", field=_layer_norm_field, call=_layer_norm_call,
    uses=("candle_nn::LayerNorm",), call_uses=("candle_nn::Module",),
    doc="eps, with or without affine parameters and bias, over the last dim(s)",
))

# --- GroupNorm ------------------------------------------------------------------------------------


def _group_norm_field(cfg: dict[str, Any]) -> Field:
    g, c, eps = cfg["num_groups"], cfg["num_channels"], _eps(cfg)
    if cfg["affine"]:
        return Field("GroupNorm", lambda vb: f"candle_nn::group_norm({g}, {c}, {eps}, {vb})?")
    return Field("GroupNorm", lambda vb: "{\n"
                 f"let vb = {vb};\n"
                 f"let ones = Tensor::ones({c}, vb.dtype(), vb.device())?;\n"
                 f"GroupNorm::new(ones.clone(), ones.zeros_like()?, {c}, {g}, {eps})?\n"
                 "}")


def _group_norm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    if x.rank < 2:
        raise Unsupported(f"GroupNorm on a rank-{x.rank} input")
    if x.rank == 2:  # (N, C): Candle's GroupNorm wants a spatial dimension
        return f"{this}.forward(&{x.name}.unsqueeze(2)?)?.squeeze(2)?"
    return f"{this}.forward({x.borrow})?"


register_layer(Layer(
    "torch.nn.GroupNorm", ("num_groups", "num_channels", "eps", "affine"), outputs="out",
    field=_group_norm_field, call=_group_norm_call,
    uses=("candle_nn::GroupNorm",), call_uses=("candle_nn::Module",),
    doc="eps, with or without affine parameters, any rank >= 2",
))

# --- BatchNorm ------------------------------------------------------------------------------------


def _batch_norm_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    require(cfg["track_running_stats"], problems,
            "track_running_stats=False (it normalises with each batch's own statistics, "
            "also in eval mode)")
    return problems


def _batch_norm_field(cfg: dict[str, Any]) -> Field:
    c, eps = cfg["num_features"], _eps(cfg)
    if cfg["affine"]:
        return Field("BatchNorm", lambda vb: f"candle_nn::batch_norm({c}, {eps}, {vb})?")
    config = f"candle_nn::BatchNormConfig {{ eps: {eps}, affine: false, ..Default::default() }}"
    return Field("BatchNorm", lambda vb: f"candle_nn::batch_norm({c}, {config}, {vb})?")


def _batch_norm_call(ranks: tuple[int, ...]) -> Callable[..., str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        x = one_tensor(args, kwargs)
        if x.rank not in ranks:
            expected = " or ".join(map(str, ranks))
            raise Unsupported(f"a rank-{x.rank} input (expected rank {expected})")
        return f"{this}.forward_t({x.borrow}, false)?"  # eval: the running statistics

    return call


for _n, _ranks in ((1, (2, 3)), (2, (4,))):
    register_layer(Layer(
        f"torch.nn.BatchNorm{_n}d",
        ("num_features", "eps", "momentum", "affine", "track_running_stats"), outputs="out",
        field=_batch_norm_field, call=_batch_norm_call(_ranks), check=_batch_norm_check,
        uses=("candle_nn::BatchNorm",), call_uses=("candle_nn::ModuleT",),
        doc="eval mode with the running statistics, with or without affine parameters",
    ))
