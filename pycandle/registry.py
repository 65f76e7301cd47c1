"""The one list of what PyCandle supports: PyTorch layer types and functional ops.

Each entry knows everything about its PyTorch construct: which constructor arguments `record`
must capture, which values it can honour (anything else is reported, never silently ignored),
and the Rust that loads and calls it. `record`, `codegen`, the docs and the unsupported-op
report are all derived from this module. It does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from pycandle.manifest import DType, TensorMeta


class Unsupported(Exception):
    """An argument value or option the Rust side cannot honour."""

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint


# --- operands: what emitters receive ------------------------------------------------------------


@dataclass(frozen=True)
class T:
    """A tensor operand in generated Rust: a variable (or `&Tensor` parameter) and its metadata."""

    name: str
    meta: TensorMeta
    is_ref: bool = False  # the variable is already a `&Tensor`

    @property
    def borrow(self) -> str:
        return self.name if self.is_ref else f"&{self.name}"

    @property
    def rank(self) -> int:
        return self.meta.rank

    def dim(self, d: int) -> str:
        return f"{self.name}.dim({d})?"

    def norm_dim(self, d: int, rank: int | None = None) -> int:
        rank = self.rank if rank is None else rank
        if not -rank <= d < rank:
            raise Unsupported(f"dimension {d} out of range for a rank-{rank} tensor")
        return d % rank


def rust_float(v: float) -> str:
    if math.isnan(v):
        return "f64::NAN"
    if math.isinf(v):
        return "f64::INFINITY" if v > 0 else "f64::NEG_INFINITY"
    if v == int(v) and abs(v) < 1e15:
        return f"{v:.1f}"
    return repr(float(v))


def rust_dim(d: int, rank: int) -> str:
    """A dimension index as a Candle maintainer writes it: `D::Minus1` for the last."""
    if d < 0:
        d += rank
    if d == rank - 1 and rank > 1:
        return "D::Minus1"
    return str(d)


# --- signatures ---------------------------------------------------------------------------------

_REQUIRED = object()


def _parse_sig(sig: str) -> list[tuple[str, Any]]:
    params = []
    for part in sig.split(","):
        part = part.strip()
        if not part or part == "*":
            continue
        if "=" in part:
            name, default = part.split("=", 1)
            params.append((name.strip(), eval(default, {"__builtins__": {}}, {})))  # noqa: S307
        else:
            params.append((part, _REQUIRED))
    return params


def bind(sig: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind recorded args/kwargs to a Python-style signature string such as
    ``"input, dim=None, keepdim=False"``; unknown or missing arguments raise Unsupported."""
    params = _parse_sig(sig)
    if len(args) > len(params):
        raise Unsupported(f"too many positional arguments ({len(args)}) for ({sig})")
    out: dict[str, Any] = {}
    for (name, _), value in zip(params, args):
        out[name] = value
    for name, value in kwargs.items():
        if name not in dict(params):
            raise Unsupported(f"unknown keyword argument '{name}' for ({sig})")
        if name in out:
            raise Unsupported(f"argument '{name}' given twice")
        out[name] = value
    for name, default in params:
        if name not in out:
            if default is _REQUIRED:
                raise Unsupported(f"missing argument '{name}' for ({sig})")
            out[name] = default
    return out


# --- layers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A sublayer held by the generated model struct."""

    rust_type: str
    init: str  # Rust expression building it; `$vb` stands for this module's VarBuilder


@dataclass(frozen=True)
class Layer:
    torch_type: str  # "torch.nn.LSTM"
    config_attrs: tuple[str, ...]  # attributes `record` reads off the module instance
    outputs: Any  # output names: "out" or nested tuples such as ("output", ("h_n", "c_n"))
    field: Callable[[dict[str, Any]], Field | None]  # None: stateless, nothing to load
    call: Callable[[dict[str, Any], str, tuple, dict[str, Any]], str]
    check: Callable[[dict[str, Any]], list[str]] = lambda cfg: []
    uses: tuple[str, ...] = ()  # Rust `use` paths the model code needs
    call_uses: tuple[str, ...] = ()  # ... and the traits a call needs (parity tests use these)
    passthrough: bool = False  # forwards its single input unchanged (Dropout in eval, Identity)
    doc: str = ""

    @property
    def short(self) -> str:
        return self.torch_type.rsplit(".", 1)[-1]


def _one_tensor(args: tuple, kwargs: dict[str, Any], sig: str = "input") -> T:
    bound = bind(sig, args, kwargs)
    x = bound["input"]
    if not isinstance(x, T):
        raise Unsupported(f"expected a tensor input, got {x!r}")
    return x


def _require(cond: bool, problems: list[str], msg: str) -> None:
    if not cond:
        problems.append(msg)


# LSTM ------------------------------------------------------------------------------------------


def _lstm_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    _require(cfg.get("mode", "LSTM") == "LSTM", problems, f"mode {cfg.get('mode')!r}")
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


# Linear ----------------------------------------------------------------------------------------


def _linear_field(cfg: dict[str, Any]) -> Field:
    fn = "linear" if cfg["bias"] else "linear_no_bias"
    return Field("Linear", f"candle_nn::{fn}({cfg['in_features']}, {cfg['out_features']}, $vb)?")


def _linear_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = _one_tensor(args, kwargs)
    if not 2 <= x.rank <= 4:
        raise Unsupported(f"Linear on a rank-{x.rank} input (Candle's Linear takes rank 2 to 4)")
    return f"{this}.forward({x.borrow})?"


# stateless -------------------------------------------------------------------------------------


def _unary(method: str) -> Callable[[dict[str, Any], str, tuple, dict[str, Any]], str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        return method.format(x=_one_tensor(args, kwargs))

    return call


def _passthrough_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return _one_tensor(args, kwargs).name


def _no_field(cfg: dict[str, Any]) -> None:
    return None


LAYERS: dict[str, Layer] = {
    layer.torch_type: layer
    for layer in [
        Layer(
            "torch.nn.LSTM",
            ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
             "bidirectional", "proj_size", "mode"),
            outputs=("output", ("h_n", "c_n")),
            field=_lstm_field, call=_lstm_call, check=_lstm_check,
            uses=("pycandle_runtime::{Lstm, LstmConfig}",),
            doc="any num_layers, bias, batch_first, bidirectional, proj_size, (h0, c0); "
                "dropout is inactive in eval",
        ),
        Layer(
            "torch.nn.Linear", ("in_features", "out_features", "bias"), outputs="out",
            field=_linear_field, call=_linear_call,
            uses=("candle_nn::Linear",), call_uses=("candle_nn::Module",),
            doc="with or without bias",
        ),
        Layer("torch.nn.ReLU", ("inplace",), "out", _no_field, _unary("{x.name}.relu()?")),
        Layer("torch.nn.Tanh", (), "out", _no_field, _unary("{x.name}.tanh()?")),
        Layer("torch.nn.Sigmoid", (), "out", _no_field,
              _unary("candle_nn::ops::sigmoid({x.borrow})?")),
        Layer("torch.nn.Dropout", ("p",), "out", _no_field, _passthrough_call, passthrough=True,
              doc="identity in eval mode"),
        Layer("torch.nn.Identity", (), "out", _no_field, _passthrough_call, passthrough=True),
    ]
}

# Containers are traced through: their forward() is plain Python over their children.
CONTAINERS = ("torch.nn.Sequential", "torch.nn.ModuleList", "torch.nn.ModuleDict")


# --- functional ops -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: str
    spellings: dict[str, str]  # spelling ("torch.relu", "Tensor.relu") -> signature
    emit: Callable[[str, dict[str, Any], Any], str]  # (spelling, bound args, out meta) -> Rust
    uses: tuple[str, ...] = ()
    doc: str = ""


def _tensor(v: Any, what: str = "input") -> T:
    if not isinstance(v, T):
        raise Unsupported(f"'{what}' must be a tensor here, got {v!r}")
    return v


def _unary_op(template: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        return template.format(x=_tensor(a["input"]))

    return emit


_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_SCALAR_FORMS = {"add": "({x.borrow} + {s})?", "sub": "({x.borrow} - {s})?",
                 "mul": "({x.borrow} * {s})?", "div": "({x.borrow} / {s})?"}
_REFLECTED_SCALAR_FORMS = {"add": "({x.borrow} + {s})?", "sub": "{x.name}.affine(-1.0, {s})?",
                           "mul": "({x.borrow} * {s})?", "div": "({x.name}.recip()? * {s})?"}


def _binary(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        if a.get("alpha", 1) != 1:
            raise Unsupported(f"{kind} with alpha={a['alpha']!r}")
        if a.get("rounding_mode") is not None:
            raise Unsupported(f"div with rounding_mode={a['rounding_mode']!r}")
        x, y = a["input"], a["other"]
        reflected = spelling.startswith("Tensor.__r")
        if reflected:  # `other <op> self`
            x, y = y, x
        if isinstance(x, T) and isinstance(y, T):
            if x.meta.shapes == y.meta.shapes:
                return f"{x.name}.{_BINARY_METHODS[kind]}({y.borrow})?"
            return f"{x.name}.broadcast_{_BINARY_METHODS[kind]}({y.borrow})?"
        if isinstance(x, T) and isinstance(y, (int, float)) and not isinstance(y, bool):
            return _SCALAR_FORMS[kind].format(x=x, s=rust_float(float(y)))
        if isinstance(y, T) and isinstance(x, (int, float)) and not isinstance(x, bool):
            return _REFLECTED_SCALAR_FORMS[kind].format(x=y, s=rust_float(float(x)))
        raise Unsupported(f"{kind} of {x!r} and {y!r}")

    return emit


def _binary_spellings(kind: str, torch_names: tuple[str, ...]) -> dict[str, str]:
    sig = "input, other, *, alpha=1" if kind in ("add", "sub") else "input, other"
    if kind == "div":
        sig = "input, other, *, rounding_mode=None"
    out = {f"torch.{n}": sig for n in torch_names}
    out.update({f"Tensor.{n}": sig for n in torch_names})
    out.update({f"Tensor.{n}_": sig for n in torch_names})
    dunder = {"add": "add", "sub": "sub", "mul": "mul", "div": "truediv"}[kind]
    for form in ("__{}__", "__r{}__", "__i{}__"):
        out["Tensor." + form.format(dunder)] = "input, other"
    return out


def _dims_arg(x: T, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.rank))
    if isinstance(dim, int) and not isinstance(dim, bool):
        return [x.norm_dim(dim)]
    if isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim):
        return sorted(x.norm_dim(d) for d in dim)
    raise Unsupported(f"dim={dim!r}")


def _norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = _tensor(a["input"])
    if a.get("dtype") is not None:
        raise Unsupported(f"norm with dtype={a['dtype']!r}")
    order = a.get("ord", a.get("p"))
    dim = a["dim"]
    euclidean = order in (None, 2, 2.0, "fro") if spelling != "torch.linalg.norm" else (
        order is None or (order in (2, 2.0) and not isinstance(dim, (tuple, list))))
    if spelling == "torch.linalg.norm" and dim is None and x.rank > 2 and order is not None:
        raise Unsupported("torch.linalg.norm with ord and no dim on a tensor of rank > 2")
    if not euclidean:
        raise Unsupported(f"norm of order {order!r} (only the 2-norm / Frobenius norm is supported)",
                          hint="write it out with abs/pow/sum, or ask for this order")
    dims = _dims_arg(x, dim)
    if dims == list(range(x.rank)) and not a["keepdim"]:
        return f"{x.name}.sqr()?.sum_all()?.sqrt()?"
    dim_expr = rust_dim(dims[0], x.rank) if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"
    fn = "sum_keepdim" if a["keepdim"] else "sum"
    return f"{x.name}.sqr()?.{fn}({dim_expr})?.sqrt()?"


def _transpose(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = _tensor(a["input"])
    d0, d1 = x.norm_dim(a["dim0"]), x.norm_dim(a["dim1"])
    return f"{x.name}.transpose({d0}, {d1})?"


def _contiguous(spelling: str, a: dict[str, Any], out: Any) -> str:
    return f"{_tensor(a['input']).name}.contiguous()?"


def _getitem(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = _tensor(a["input"])
    index = a["index"]
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if consumed > x.rank:
        raise Unsupported(f"too many indices ({consumed}) for a rank-{x.rank} tensor")
    if sum(1 for it in items if it is Ellipsis) > 1:
        raise Unsupported("more than one Ellipsis in an index")
    expr = x.name
    d = 0  # dimension in the tensor being built
    od = 0  # dimension in the original tensor
    for it in items:
        if it is Ellipsis:
            skip = x.rank - consumed
            d += skip
            od += skip
        elif it is None:
            expr += f".unsqueeze({d})?"
            d += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            idx = str(it) if it >= 0 else f"{x.dim(od)} - {-it}"
            expr += f".get_on_dim({d}, {idx})?"
            od += 1
        elif isinstance(it, slice):
            if it.step not in (None, 1):
                raise Unsupported(f"slice with step {it.step}",
                                  hint="strided slices are not supported yet")
            for bound in (it.start, it.stop):
                if bound is not None and not isinstance(bound, int):
                    raise Unsupported(f"slice bound {bound!r} (only integer literals)")
            if it.start in (None, 0) and it.stop is None:
                pass  # a full slice
            else:
                # Python clamps out-of-range bounds; so does the generated code.
                size = x.dim(od)
                start = "0" if it.start in (None, 0) else (
                    str(it.start) if it.start > 0 else f"{size}.saturating_sub({-it.start})")
                if it.stop is None:
                    stop = size
                elif it.stop >= 0:
                    stop = f"{size}.min({it.stop})"
                else:
                    stop = f"{size}.saturating_sub({-it.stop})"
                length = stop if start == "0" else f"{stop}.saturating_sub({start})"
                expr += f".narrow({d}, {start}, {length})?"
            d += 1
            od += 1
        elif isinstance(it, T):
            raise Unsupported("indexing with a tensor (advanced indexing)")
        else:
            raise Unsupported(f"index {it!r}")
    return expr if expr != x.name else f"{x.name}.clone()"


OPS: dict[str, Op] = {}


def _register(op: Op) -> None:
    for spelling in op.spellings:
        if spelling in OPS:
            raise RuntimeError(f"spelling {spelling} registered twice")
        OPS[spelling] = op


for _op in [
    Op("relu", {"torch.relu": "input", "torch.nn.functional.relu": "input, inplace=False",
                "Tensor.relu": "input", "Tensor.relu_": "input"},
       _unary_op("{x.name}.relu()?")),
    Op("tanh", {"torch.tanh": "input", "torch.nn.functional.tanh": "input", "Tensor.tanh": "input",
                "Tensor.tanh_": "input"},
       _unary_op("{x.name}.tanh()?")),
    Op("sigmoid", {"torch.sigmoid": "input", "torch.nn.functional.sigmoid": "input",
                   "Tensor.sigmoid": "input", "Tensor.sigmoid_": "input"},
       _unary_op("candle_nn::ops::sigmoid({x.borrow})?")),
    Op("add", _binary_spellings("add", ("add",)), _binary("add")),
    Op("sub", _binary_spellings("sub", ("sub", "subtract")), _binary("sub")),
    Op("mul", _binary_spellings("mul", ("mul", "multiply")), _binary("mul")),
    Op("div", _binary_spellings("div", ("div", "divide", "true_divide")), _binary("div")),
    Op("norm", {"torch.linalg.norm": "input, ord=None, dim=None, keepdim=False, *, dtype=None",
                "torch.linalg.vector_norm": "input, ord=2, dim=None, keepdim=False, *, dtype=None",
                "torch.norm": "input, p='fro', dim=None, keepdim=False, dtype=None",
                "Tensor.norm": "input, p='fro', dim=None, keepdim=False, dtype=None"},
       _norm, uses=("candle_core::D",), doc="2-norm / Frobenius, over dims, keepdim"),
    Op("transpose", {"torch.transpose": "input, dim0, dim1", "Tensor.transpose": "input, dim0, dim1",
                     "torch.swapaxes": "input, dim0, dim1", "Tensor.swapaxes": "input, dim0, dim1"},
       _transpose),
    Op("contiguous", {"Tensor.contiguous": "input"}, _contiguous),
    Op("getitem", {"Tensor.__getitem__": "input, index"}, _getitem,
       doc="integers (also negative), slices with step 1, None, Ellipsis"),
]:
    _register(_op)


def op_for(spelling: str) -> Op | None:
    return OPS.get(spelling)


def layer_for(torch_type: str) -> Layer | None:
    return LAYERS.get(torch_type)


def is_float_dtype(dtype: Any) -> bool:
    name = dtype.name if isinstance(dtype, DType) else dtype
    return name in ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class Coverage:
    layers: list[tuple[str, str]] = field(default_factory=list)
    ops: list[tuple[str, list[str], str]] = field(default_factory=list)


def coverage() -> Coverage:
    """Everything supported, for docs and `pycandle coverage`."""
    cov = Coverage()
    for layer in LAYERS.values():
        cov.layers.append((layer.torch_type, layer.doc))
    seen: dict[str, Op] = {}
    for op in OPS.values():
        seen.setdefault(op.name, op)
    for name, op in seen.items():
        cov.ops.append((name, sorted(op.spellings), op.doc))
    return cov
