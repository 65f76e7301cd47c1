"""Recurrent layers and cells: implemented by the pycandle-runtime crate."""

from __future__ import annotations

from typing import Any, Callable

from pycandle.registry.core import (
    Embedded, Field, Layer, Packed, Stream, T, Unsupported, bind, register_layer, require,
)


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _loader(rust_type: str, config: str, fields: dict[str, str]) -> Callable[[dict], Field]:
    """`Type::load(TypeConfig { field: cfg[attr], ... }, vb)` from the recorded config."""

    def field(cfg: dict[str, Any]) -> Field:
        body = "".join(f"{name}: {_value(cfg, attr)},\n" for name, attr in fields.items())
        return Field(rust_type,
                     lambda vb: f"{rust_type}::load(\n{config} {{\n{body}}},\n{vb},\n)?")

    return field


def _value(cfg: dict[str, Any], attr: str) -> str:
    if attr == "nonlinearity":
        return {"tanh": "Nonlinearity::Tanh", "relu": "Nonlinearity::Relu"}[cfg["nonlinearity"]]
    if attr == "mode":  # nn.RNN records its nonlinearity in `mode` too
        return {"RNN_TANH": "Nonlinearity::Tanh", "RNN_RELU": "Nonlinearity::Relu"}[cfg["mode"]]
    return _literal(cfg[attr])


def _state_arg(hx: Any, pair: bool, what: str) -> str:
    if hx is None:
        return "None"
    if pair and isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(h, T) for h in hx):
        return f"Some(({hx[0].borrow}, {hx[1].borrow}))"
    if not pair and isinstance(hx, T):
        return f"Some({hx.borrow})"
    expected = "a (h, c) tuple of tensors" if pair else "a tensor"
    raise Unsupported(f"{what} initial state must be {expected}, got {hx!r}")


def _call(what: str, pair: bool) -> Callable[[dict, str, tuple, dict], str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        bound = bind("input, hx=None", args, kwargs)
        x = bound["input"]
        state = _state_arg(bound["hx"], pair, what)
        if isinstance(x, Packed):
            if what.endswith("Cell"):
                raise Unsupported(f"{what} on a packed sequence")
            # pack_padded_sequence -> layer -> pad_packed_sequence, on the padded batch
            padded = x.padded_in(bool(cfg.get("batch_first")))
            return f"{this}.forward_padded({padded}, &{x.lengths}, {state})?"
        if not isinstance(x, T):
            raise Unsupported(f"{what} input must be a tensor, got {x!r}")
        return _forward(this, x, state)

    return call


def _forward(this: str, x: T, state: str) -> str:
    """The sequence layer at `this` on `x`: on the token ids of an embedding folded into it, or
    on `x` itself."""
    if isinstance(x, Embedded):
        return f"{this}.forward_tokens(&{x.embedding}, {x.tokens.borrow}, {state})?"
    return f"{this}.forward({x.borrow}, {state})?"


def _check_mode(expected: tuple[str, ...]) -> Callable[[dict[str, Any]], list[str]]:
    def check(cfg: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        require(cfg.get("mode") in expected, problems, f"mode {cfg.get('mode')!r}")
        return problems

    return check


# --- streaming: sequence layers carry their final state into the next chunk ---------------------


def _sequence_blocker(cfg: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> str | None:
    if cfg.get("bidirectional"):
        return "bidirectional: the reverse direction needs the whole sequence"
    if isinstance(bind("input, hx=None", args, kwargs)["input"], Packed):
        return "a padded batch: sequences end at different steps"
    if bind("input, hx=None", args, kwargs)["hx"] is not None:
        return "called with an explicit initial state"
    return None


def _sequence_time_dim(cfg: dict[str, Any], rank: int) -> int:
    return 1 if cfg.get("batch_first") and rank == 3 else 0


def _forward_with(cfg: dict[str, Any], this: str, x: T, state: str) -> str:
    return _forward(this, x, state)


LSTM_STREAM = Stream(
    state_type="(Tensor, Tensor)", state_paths=((1, 0), (1, 1)), blocker=_sequence_blocker,
    call=_forward_with, resume=lambda s: f"{s}.as_ref().map(|(h, c)| (h, c))",
    time_dim=_sequence_time_dim,
)
HIDDEN_STREAM = Stream(
    state_type="Tensor", state_paths=((1,),), blocker=_sequence_blocker,
    call=_forward_with, resume=lambda s: f"{s}.as_ref()", time_dim=_sequence_time_dim,
)

_SEQUENCE_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                   "bidirectional", "mode")
_SEQUENCE_FIELDS = {"input_size": "input_size", "hidden_size": "hidden_size",
                    "num_layers": "num_layers", "bias": "bias", "batch_first": "batch_first",
                    "bidirectional": "bidirectional"}
_SEQUENCE_DOC = ("num_layers, bias, batch_first, bidirectional, initial state, unbatched input; "
                 "dropout is inactive in eval")

register_layer(Layer(
    "torch.nn.LSTM", _SEQUENCE_ATTRS + ("proj_size",),
    outputs=("output", ("h_n", "c_n")),
    field=_loader("Lstm", "LstmConfig", {**_SEQUENCE_FIELDS, "proj_size": "proj_size"}),
    call=_call("LSTM", pair=True), check=_check_mode(("LSTM",)),
    uses=("pycandle_runtime::{Lstm, LstmConfig}",), stream=LSTM_STREAM,
    doc=f"{_SEQUENCE_DOC}, proj_size",
))
register_layer(Layer(
    "torch.nn.GRU", _SEQUENCE_ATTRS, outputs=("output", "h_n"),
    field=_loader("Gru", "GruConfig", _SEQUENCE_FIELDS),
    call=_call("GRU", pair=False), check=_check_mode(("GRU",)),
    uses=("pycandle_runtime::{Gru, GruConfig}",), stream=HIDDEN_STREAM, doc=_SEQUENCE_DOC,
))
register_layer(Layer(
    "torch.nn.RNN", _SEQUENCE_ATTRS + ("nonlinearity",), outputs=("output", "h_n"),
    field=_loader("Rnn", "RnnConfig", {**_SEQUENCE_FIELDS, "nonlinearity": "mode"}),
    call=_call("RNN", pair=False), check=_check_mode(("RNN_TANH", "RNN_RELU")),
    uses=("pycandle_runtime::{Nonlinearity, Rnn, RnnConfig}",), stream=HIDDEN_STREAM,
    doc=f"tanh and relu, {_SEQUENCE_DOC}",
))

_CELL_ATTRS = ("input_size", "hidden_size", "bias")
_CELL_FIELDS = {"input_size": "input_size", "hidden_size": "hidden_size", "bias": "bias"}

register_layer(Layer(
    "torch.nn.LSTMCell", _CELL_ATTRS, outputs=("h", "c"),
    field=_loader("LstmCell", "LstmCellConfig", _CELL_FIELDS), call=_call("LSTMCell", pair=True),
    uses=("pycandle_runtime::{LstmCell, LstmCellConfig}",),
    doc="bias, (h, c) state, unbatched input; step it in a Python loop",
))
register_layer(Layer(
    "torch.nn.GRUCell", _CELL_ATTRS, outputs="out",
    field=_loader("GruCell", "GruCellConfig", _CELL_FIELDS), call=_call("GRUCell", pair=False),
    uses=("pycandle_runtime::{GruCell, GruCellConfig}",), doc="bias, state, unbatched input",
))
register_layer(Layer(
    "torch.nn.RNNCell", _CELL_ATTRS + ("nonlinearity",), outputs="out",
    field=_loader("RnnCell", "RnnCellConfig", {**_CELL_FIELDS, "nonlinearity": "nonlinearity"}),
    call=_call("RNNCell", pair=False),
    uses=("pycandle_runtime::{Nonlinearity, RnnCell, RnnCellConfig}",),
    doc="tanh and relu, bias, state, unbatched input",
))
