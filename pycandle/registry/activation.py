"""Elementwise activations and softmax: as layers and as functions."""

from __future__ import annotations

from typing import Any, Callable

from pycandle.registry.core import (
    Field, Layer, Op, T, Unsupported, int_arg, is_number, local_name, need, no_field,
    one_tensor,
    rust_dtype, register_layer, register_op, rust_dim, rust_float, tensor, unary_call,
    unary_op,
)

# --- Rust for each activation, shared by the layer and the function spellings ---------------------

# The runtime's ReLU: PyTorch's NaN rule, and one pass on the calling thread where Candle's would
# wake its own thread pool (see `pycandle_runtime::ops::relu`).
RELU = "pycandle_runtime::ops::relu({x.borrow})?"


def _number(v: Any, what: str) -> float:
    if not is_number(v):
        raise Unsupported(f"'{what}' must be a number, got {v!r}")
    return float(v)


def gelu(x: T, approximate: Any) -> str:
    if approximate == "none":
        return f"{x.name}.gelu_erf()?"
    if approximate == "tanh":
        return f"{x.name}.gelu()?"  # Candle's `gelu` is the tanh approximation
    raise Unsupported(f"GELU approximate={approximate!r}")


def leaky_relu(x: T, slope: Any) -> str:
    slope = rust_float(_number(slope, "negative_slope"))
    return f"candle_nn::ops::leaky_relu({x.borrow}, {slope})?"


def elu(x: T, alpha: Any) -> str:
    return f"{x.name}.elu({rust_float(_number(alpha, 'alpha'))})?"


def hardtanh(x: T, lo: Any, hi: Any) -> str:
    lo, hi = _number(lo, "min_val"), _number(hi, "max_val")
    if lo > hi:
        raise Unsupported(f"Hardtanh with min_val {lo} > max_val {hi}")
    return f"{x.name}.clamp({rust_float(lo)}, {rust_float(hi)})?"


def softplus(x: T, beta: Any, threshold: Any) -> str:
    """PyTorch's softplus: `log(1 + exp(beta x)) / beta`, and `x` where `beta x > threshold`.
    Written in the overflow-free form `relu(z) + log(1 + exp(-|z|))` with `z = beta x`."""
    beta, threshold = _number(beta, "beta"), _number(threshold, "threshold")
    if beta <= 0:
        raise Unsupported(f"Softplus with beta={beta} (must be positive)")
    z = x.name
    lines = []
    if beta != 1:
        z = local_name("z", x)
        lines.append(f"let {z} = ({x.borrow} * {rust_float(beta)})?;")
    soft = local_name("soft", x)
    lines.append(f"let {soft} = (({z}.abs()?.neg()?.exp()? + 1.0)?.log()? + {z}.relu()?)?;")
    if beta != 1:
        lines.append(f"let {soft} = ({soft} / {rust_float(beta)})?;")
    lines.append(f"{z}.gt({rust_float(threshold)})?.where_cond({x.borrow}, &{soft})?")
    return "{\n" + "\n".join(lines) + "\n}"


def hardsigmoid(x: T) -> str:
    """`relu6(x + 3) / 6`, PyTorch's order of operations."""
    return f"(({x.borrow} + 3.0)?.clamp(0.0, 6.0)? / 6.0)?"


def hardswish(x: T) -> str:
    """`x * relu6(x + 3) / 6`: the product first, then the division, as PyTorch computes it."""
    return f"(({x.borrow} * ({x.borrow} + 3.0)?.clamp(0.0, 6.0)?)? / 6.0)?"


def glu(x: T, dim: Any) -> str:
    """The first half along `dim` times the sigmoid of the second."""
    d = x.norm_dim(int_arg(dim, "dim"))
    size = x.meta.shapes[0][d]
    if any(s[d] % 2 for s in x.meta.shapes):
        raise Unsupported(f"glu over dimension {d} of odd size {size}")
    half = local_name("half", x)
    return ("{\n"
            f"let {half} = {x.name}.dim({d})? / 2;\n"
            f"({x.name}.narrow({d}, 0, {half})? * candle_nn::ops::sigmoid("
            f"&{x.name}.narrow({d}, {half}, {half})?)?)?\n"
            "}")


def prelu(x: T, weight: T) -> str:
    """`max(x, 0) + weight * min(x, 0)`, the weight along dimension 1 (one value: for all)."""
    if weight.rank != 1:
        raise Unsupported(f"prelu with a rank-{weight.rank} weight")
    scalar = "true" if weight.meta.shapes[0][0] == 1 else "false"
    return f"candle_nn::PReLU::new({weight.name}.clone(), {scalar}).forward({x.borrow})?"


def softmax(x: T, dim: Any, log: bool = False) -> str:
    if dim is None:
        raise Unsupported(f"{'log_' if log else ''}softmax without dim (PyTorch's implicit dim "
                          "is deprecated)", hint="pass dim explicitly")
    d = x.norm_dim(int_arg(dim, "dim"))
    fn = "log_softmax" if log else "softmax"
    return f"pycandle_runtime::softmax::{fn}({x.borrow}, {rust_dim(d, x.rank)})?"


# --- layers ---------------------------------------------------------------------------------------


def _layer(torch_type: str, attrs: tuple[str, ...], emit: Callable[[T, dict[str, Any]], str],
           uses: tuple[str, ...] = (), doc: str = "") -> None:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        return emit(one_tensor(args, kwargs), cfg)

    register_layer(Layer(torch_type, attrs, "out", no_field, call, uses=uses, doc=doc))


register_layer(Layer("torch.nn.ReLU", ("inplace",), "out", no_field, unary_call(RELU)))
register_layer(Layer("torch.nn.Tanh", (), "out", no_field, unary_call("{x.name}.tanh()?")))
register_layer(Layer("torch.nn.Sigmoid", (), "out", no_field,
                     unary_call("candle_nn::ops::sigmoid({x.borrow})?")))
_layer("torch.nn.GELU", ("approximate",), lambda x, c: gelu(x, c["approximate"]),
       doc="approximate 'none' (erf) and 'tanh'")
register_layer(Layer("torch.nn.SiLU", ("inplace",), "out", no_field,
                     unary_call("{x.name}.silu()?")))
register_layer(Layer("torch.nn.Mish", ("inplace",), "out", no_field,
                     unary_call("candle_nn::ops::mish({x.borrow})?")))
_layer("torch.nn.LeakyReLU", ("negative_slope", "inplace"),
       lambda x, c: leaky_relu(x, c["negative_slope"]))
_layer("torch.nn.ELU", ("alpha", "inplace"), lambda x, c: elu(x, c["alpha"]))
_layer("torch.nn.Softplus", ("beta", "threshold"),
       lambda x, c: softplus(x, c["beta"], c["threshold"]), doc="any beta > 0 and threshold")
_layer("torch.nn.Hardtanh", ("min_val", "max_val", "inplace"),
       lambda x, c: hardtanh(x, c["min_val"], c["max_val"]))
_layer("torch.nn.ReLU6", ("inplace",), lambda x, c: hardtanh(x, 0.0, 6.0))
_layer("torch.nn.Softmax", ("dim",), lambda x, c: softmax(x, c["dim"]), doc="explicit dim")
_layer("torch.nn.LogSoftmax", ("dim",), lambda x, c: softmax(x, c["dim"], log=True),
       doc="explicit dim")


_layer("torch.nn.Hardsigmoid", ("inplace",), lambda x, c: hardsigmoid(x))
_layer("torch.nn.Hardswish", ("inplace",), lambda x, c: hardswish(x))
_layer("torch.nn.GLU", ("dim",), lambda x, c: glu(x, c["dim"]), doc="any dim of even size")


def _prelu_field(cfg: dict[str, Any]) -> Field:
    n = cfg["num_parameters"]
    channels = "None" if n == 1 else f"Some({n})"
    return Field("PReLU", lambda vb: f"candle_nn::prelu({channels}, {vb})?")


def _prelu_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return f"{this}.forward({one_tensor(args, kwargs).borrow})?"


register_layer(Layer("torch.nn.PReLU", ("num_parameters",), "out", _prelu_field, _prelu_call,
                     uses=("candle_nn::PReLU",), call_uses=("candle_nn::Module",),
                     doc="one weight, or one per channel (dimension 1)"))


# --- functions and methods ------------------------------------------------------------------------


register_op(Op("relu", {"torch.relu": "input", "torch.nn.functional.relu": "input, inplace=False",
                        "Tensor.relu": "input", "Tensor.relu_": "input", "torch.relu_": "input",
                        "torch.nn.functional.relu_": "input"},
               unary_op(RELU)))
register_op(Op("tanh", {"torch.tanh": "input", "torch.nn.functional.tanh": "input",
                        "Tensor.tanh": "input", "Tensor.tanh_": "input"},
               unary_op("{x.name}.tanh()?")))
register_op(Op("sigmoid", {"torch.sigmoid": "input", "torch.nn.functional.sigmoid": "input",
                           "Tensor.sigmoid": "input", "Tensor.sigmoid_": "input"},
               unary_op("candle_nn::ops::sigmoid({x.borrow})?")))
register_op(Op("gelu", {"torch.nn.functional.gelu": "input, approximate='none'"},
               lambda s, a, out: gelu(tensor(a["input"]), a["approximate"]),
               doc="approximate 'none' and 'tanh'"))
register_op(Op("silu", {"torch.nn.functional.silu": "input, inplace=False"},
               unary_op("{x.name}.silu()?")))
register_op(Op("mish", {"torch.nn.functional.mish": "input, inplace=False"},
               unary_op("candle_nn::ops::mish({x.borrow})?")))
register_op(Op("leaky_relu",
               {"torch.nn.functional.leaky_relu": "input, negative_slope=0.01, inplace=False",
                "torch.nn.functional.leaky_relu_": "input, negative_slope=0.01"},
               lambda s, a, out: leaky_relu(tensor(a["input"]), a["negative_slope"])))
register_op(Op("elu", {"torch.nn.functional.elu": "input, alpha=1.0, inplace=False",
                       "torch.nn.functional.elu_": "input, alpha=1.0"},
               lambda s, a, out: elu(tensor(a["input"]), a["alpha"])))
register_op(Op("softplus", {"torch.nn.functional.softplus": "input, beta=1.0, threshold=20.0"},
               lambda s, a, out: softplus(tensor(a["input"]), a["beta"], a["threshold"])))
register_op(Op("hardtanh",
               {"torch.nn.functional.hardtanh":
                "input, min_val=-1.0, max_val=1.0, inplace=False",
                "torch.nn.functional.hardtanh_": "input, min_val=-1.0, max_val=1.0"},
               lambda s, a, out: hardtanh(tensor(a["input"]), a["min_val"], a["max_val"])))
register_op(Op("relu6", {"torch.nn.functional.relu6": "input, inplace=False"},
               lambda s, a, out: hardtanh(tensor(a["input"]), 0.0, 6.0)))

_SOFTMAX_SIGS = {"torch.nn.functional.{}": "input, dim=None, _stacklevel=3, dtype=None",
                 "torch.{}": "input, dim, dtype=None", "Tensor.{}": "input, dim, dtype=None"}


def _softmax_op(log: bool) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        if a["dtype"] is not None:  # PyTorch casts the input first
            x = T(f"{x.name}.to_dtype({rust_dtype(a['dtype'].name)})?", x.meta)
        return softmax(x, a["dim"], log)

    return emit


register_op(Op("softmax", {k.format("softmax"): v for k, v in _SOFTMAX_SIGS.items()},
               _softmax_op(False), doc="explicit dim, dtype"))
register_op(Op("log_softmax", {k.format("log_softmax"): v for k, v in _SOFTMAX_SIGS.items()},
               _softmax_op(True), doc="explicit dim, dtype"))
register_op(Op("hardsigmoid", {"torch.nn.functional.hardsigmoid": "input, inplace=False"},
               lambda s, a, out: hardsigmoid(tensor(a["input"]))))
register_op(Op("hardswish", {"torch.nn.functional.hardswish": "input, inplace=False"},
               lambda s, a, out: hardswish(tensor(a["input"]))))
register_op(Op("glu", {"torch.nn.functional.glu": "input, dim=-1"},
               lambda s, a, out: glu(tensor(a["input"]), a["dim"]), doc="any dim of even size"))


def _prelu_op(spelling: str, a: dict[str, Any], out: Any) -> str:
    need("candle_nn::Module")
    return prelu(tensor(a["input"]), tensor(a["weight"], "weight"))


register_op(Op("prelu", {"torch.nn.functional.prelu": "input, weight",
                         "torch.prelu": "input, weight", "Tensor.prelu": "input, weight"},
               _prelu_op, doc="a weight of one value or one per channel (dimension 1)"))
