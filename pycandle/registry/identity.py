"""Layers that pass their input through unchanged at inference."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import Layer, no_field, one_tensor, register_layer


def _passthrough_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return one_tensor(args, kwargs).name


register_layer(Layer("torch.nn.Dropout", ("p",), "out", no_field, _passthrough_call,
                     passthrough=True, doc="identity in eval mode"))
register_layer(Layer("torch.nn.Identity", (), "out", no_field, _passthrough_call,
                     passthrough=True))
