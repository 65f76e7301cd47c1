"""Building blocks of registry entries: operands, argument binding, entry types, the tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pycandle.manifest import TensorMeta

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


@dataclass(frozen=True)
class Dim:
    """A size that depends on the input shapes, as a Rust `usize` expression (e.g.
    `x.dim(0)?`), with the value it had in each trace case. Emitters get it wherever the
    trace passed an integer that was derived from a tensor's shape."""

    expr: str
    values: tuple[int, ...]


def usize_expr(v: Any) -> str:
    """A size argument (int literal or Dim) as Rust."""
    if isinstance(v, Dim):
        return v.expr
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    raise Unsupported(f"expected a non-negative size, got {v!r}")


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
class Stream:
    """How a recurrent layer runs a long sequence in chunks, carrying its state between calls."""

    state_type: str  # Rust type of the carried state, e.g. "(Tensor, Tensor)"
    state_paths: tuple[tuple[int, ...], ...]  # where the final state sits in the outputs
    # (cfg, args, kwargs) -> why this call cannot stream (explicit initial state,
    # bidirectional, ...), or None
    blocker: Callable[[dict[str, Any], tuple, dict[str, Any]], str | None]
    # (cfg, this, input operand, Rust `Option<...>` initial-state argument) -> call expression
    call: Callable[[dict[str, Any], str, "T", str], str]
    # Rust expression turning `&Option<state_type>` (given as text) into that argument
    resume: Callable[[str], str]
    # (cfg, input rank) -> the time dimension of the input and of the output sequence
    time_dim: Callable[[dict[str, Any], int], int]

    def some(self, names: list[str]) -> str:
        """`Some(...)` borrowing the given state variables, as the call's argument."""
        if len(names) == 1:
            return f"Some(&{names[0]})"
        return "Some((" + ", ".join(f"&{n}" for n in names) + "))"


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
    stream: Stream | None = None  # recurrent layers: chunked runs carrying the state
    doc: str = ""

    @property
    def short(self) -> str:
        return self.torch_type.rsplit(".", 1)[-1]


def one_tensor(args: tuple, kwargs: dict[str, Any], sig: str = "input") -> T:
    bound = bind(sig, args, kwargs)
    x = bound["input"]
    if not isinstance(x, T):
        raise Unsupported(f"expected a tensor input, got {x!r}")
    return x


def require(cond: bool, problems: list[str], msg: str) -> None:
    if not cond:
        problems.append(msg)


@dataclass(frozen=True)
class Op:
    name: str
    spellings: dict[str, str]  # spelling ("torch.relu", "Tensor.relu") -> signature
    emit: Callable[[str, dict[str, Any], Any], str]  # (spelling, bound args, out meta) -> Rust
    uses: tuple[str, ...] = ()
    doc: str = ""


def tensor(v: Any, what: str = "input") -> T:
    if not isinstance(v, T):
        raise Unsupported(f"'{what}' must be a tensor here, got {v!r}")
    return v



LAYERS: dict[str, Layer] = {}
OPS: dict[str, Op] = {}
# Containers are traced through: their forward() is plain Python over their children.
CONTAINERS = ("torch.nn.Sequential", "torch.nn.ModuleList", "torch.nn.ModuleDict")


def register_layer(layer: Layer) -> Layer:
    if layer.torch_type in LAYERS:
        raise RuntimeError(f"layer {layer.torch_type} registered twice")
    LAYERS[layer.torch_type] = layer
    return layer


def register_op(op: Op) -> Op:
    for spelling in op.spellings:
        if spelling in OPS:
            raise RuntimeError(f"spelling {spelling} registered twice")
        OPS[spelling] = op
    return op


def no_field(cfg: dict[str, Any]) -> None:
    return None


def unary_call(template: str) -> Callable[[dict[str, Any], str, tuple, dict[str, Any]], str]:
    """A stateless layer's call: `template` formatted with its input operand `x`."""

    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        return template.format(x=one_tensor(args, kwargs))

    return call


def unary_op(template: str) -> Callable[[str, dict[str, Any], Any], str]:
    """A one-tensor function's Rust: `template` formatted with its input operand `x`."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        return template.format(x=tensor(a["input"]))

    return emit
