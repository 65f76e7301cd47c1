"""Layers and functions that pass their input through unchanged at inference."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Layer, Op, Unsupported, alias, no_field, one_tensor, register_layer, register_op, tensor,
)


def _passthrough_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return alias(one_tensor(args, kwargs))


register_layer(Layer("torch.nn.Dropout", ("p",), "out", no_field, _passthrough_call,
                     passthrough=True, doc="identity in eval mode"))
register_layer(Layer("torch.nn.Identity", (), "out", no_field, _passthrough_call,
                     passthrough=True))


def _identity(spelling: str, a: dict[str, Any], out: Any) -> str:
    """The input itself: `lower` binds the output to it, no statement."""
    return alias(tensor(a["input"]))


def _dropout(spelling: str, a: dict[str, Any], out: Any) -> str:
    training = a.get("training", a.get("train"))
    p = a["p"]
    if training and p != 0:
        raise Unsupported(f"{spelling} with training=True (random at inference)",
                          hint="pass training=self.training, the model is traced in eval mode")
    return _identity(spelling, a, out)


_DROPOUT = "input, p=0.5, training=True, inplace=False"
register_op(Op("dropout", {"torch.nn.functional.dropout": _DROPOUT,
                           "torch.nn.functional.dropout1d": _DROPOUT,
                           "torch.nn.functional.dropout2d": _DROPOUT,
                           "torch.nn.functional.alpha_dropout": _DROPOUT,
                           "torch.dropout": "input, p, train"}, _dropout,
               doc="identity when not training"))
register_op(Op("detach", {"Tensor.detach": "input", "torch.detach": "input",
                          "Tensor.data": "input",
                          "Tensor.clone": "input, *, memory_format=None",
                          "torch.clone": "input, *, memory_format=None"}, _identity,
               doc="identity (Candle tensors are immutable)"))
register_op(Op("cpu", {"Tensor.cpu": "input, memory_format=None"}, _identity,
               doc="identity (generated code runs on its inputs' device)"))
