"""Recurrent layers: implemented by the pycandle-runtime crate."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Field, Layer, Stream, T, Unsupported, bind, register_layer, require,
)


def _lstm_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    require(cfg.get("mode", "LSTM") == "LSTM", problems, f"mode {cfg.get('mode')!r}")
    return problems


def _lstm_field(cfg: dict[str, Any]) -> Field:
    def b(v: bool) -> str:
        return "true" if v else "false"

    init = (
        "Lstm::load(\n"
        "LstmConfig {\n"
        f"input_size: {cfg['input_size']},\n"
        f"hidden_size: {cfg['hidden_size']},\n"
        f"num_layers: {cfg['num_layers']},\n"
        f"bias: {b(cfg['bias'])},\n"
        f"batch_first: {b(cfg['batch_first'])},\n"
        f"bidirectional: {b(cfg['bidirectional'])},\n"
        f"proj_size: {cfg['proj_size']},\n"
        "},\n"
        "$vb,\n"
        ")?"
    )
    return Field("Lstm", init)


def _lstm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    bound = bind("input, hx=None", args, kwargs)
    x = bound["input"]
    if not isinstance(x, T):
        raise Unsupported("LSTM input must be a tensor (PackedSequence is not supported yet)")
    hx = bound["hx"]
    if hx is None:
        state = "None"
    elif isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(h, T) for h in hx):
        state = f"Some(({hx[0].borrow}, {hx[1].borrow}))"
    else:
        raise Unsupported(f"LSTM initial state must be a (h0, c0) tuple of tensors, got {hx!r}")
    return f"{this}.forward({x.borrow}, {state})?"


def _sequence_blocker(cfg: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> str | None:
    if cfg.get("bidirectional"):
        return "bidirectional: the reverse direction needs the whole sequence"
    if bind("input, hx=None", args, kwargs)["hx"] is not None:
        return "called with an explicit initial state"
    return None


def _sequence_time_dim(cfg: dict[str, Any], rank: int) -> int:
    return 1 if cfg.get("batch_first") and rank == 3 else 0


def _forward_with(cfg: dict[str, Any], this: str, x: T, state: str) -> str:
    return f"{this}.forward({x.borrow}, {state})?"


LSTM_STREAM = Stream(
    state_type="(Tensor, Tensor)", state_paths=((1, 0), (1, 1)), blocker=_sequence_blocker,
    call=_forward_with, resume=lambda s: f"{s}.as_ref().map(|(h, c)| (h, c))",
    time_dim=_sequence_time_dim,
)


register_layer(Layer(
    "torch.nn.LSTM",
    ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
     "bidirectional", "proj_size", "mode"),
    outputs=("output", ("h_n", "c_n")),
    field=_lstm_field, call=_lstm_call, check=_lstm_check,
    uses=("pycandle_runtime::{Lstm, LstmConfig}",),
    stream=LSTM_STREAM,
    doc="any num_layers, bias, batch_first, bidirectional, proj_size, (h0, c0), unbatched "
        "input; dropout is inactive in eval",
))
