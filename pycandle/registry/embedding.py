"""nn.Embedding, via candle_nn."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Field, Layer, Unsupported, one_tensor, register_layer, require, rust_dtype,
)


def _embedding_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    # padding_idx, scale_grad_by_freq and sparse only change training
    require(cfg["max_norm"] is None, problems,
            f"max_norm={cfg['max_norm']!r} (renormalises the looked-up rows of the weight "
            "in place)")
    return problems


def _embedding_field(cfg: dict[str, Any]) -> Field:
    return Field("Embedding", lambda vb: f"candle_nn::embedding({cfg['num_embeddings']}, "
                 f"{cfg['embedding_dim']}, {vb})?")


def _embedding_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    if x.meta.dtype == "int32":  # Candle looks up u8, u32 and i64 indices
        return f"{this}.forward(&{x.name}.to_dtype({rust_dtype('int64')})?)?"
    if x.meta.dtype not in ("int64", "uint8", "uint32"):
        raise Unsupported(f"Embedding of {x.meta.dtype} indices")
    return f"{this}.forward({x.borrow})?"


register_layer(Layer(
    "torch.nn.Embedding",
    ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
     "scale_grad_by_freq", "sparse"),
    outputs="out", field=_embedding_field, call=_embedding_call, check=_embedding_check,
    uses=("candle_nn::Embedding",), call_uses=("candle_nn::Module",),
    doc="any index shape; padding_idx (training only)", params=(("weight", "embeddings()"),),
))
