"""Building blocks of registry entries: operands, argument binding, entry types, the tables."""

from __future__ import annotations

import ast
import contextvars
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from pycandle.enums import DType
from pycandle.manifest import TensorMeta
from pycandle.rust import rust_float  # noqa: F401  (part of the registry's surface)

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
    movable: bool = True  # False for an element of a `Vec<Tensor>` (`chunks[1]`): clone to own
    is_vec: bool = False  # a `Vec<Tensor>` of values like `meta` (one kept from each loop pass)

    def __repr__(self) -> str:  # as messages show it
        return f"a {self.meta.dtype} tensor"

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
class Embedded(T):
    """The output of an `nn.Embedding` whose only use is the input of a recurrent layer, folded
    into that layer at load: never computed, the layer reads the token ids instead
    (`forward_tokens`). `name` is empty; `meta` is the embedded tensor's."""

    tokens: T | None = None  # the ids the embedding looked up
    embedding: str = ""  # the Rust path of the Embedding field (`self.embed`)


@dataclass(frozen=True)
class Packed:
    """What `pack_padded_sequence` made: a padded batch with per-sequence lengths.

    `x` is the padded batch as it was packed (`batch_first` its layout) and `lengths` the
    Rust variable holding the lengths as a `Vec<usize>`; `lengths_t` is the lengths tensor."""

    x: T
    lengths: str
    lengths_t: T
    batch_first: bool

    def padded_in(self, batch_first: bool) -> str:
        """The padded batch borrowed in the given layout."""
        if batch_first == self.batch_first:
            return self.x.borrow
        return f"&{self.x.name}.transpose(0, 1)?"


@dataclass(frozen=True)
class Dim:
    """A size that depends on the input shapes, as a Rust `usize` expression (e.g.
    `x.dim(0)?`), with the value it had in each trace case. Emitters get it wherever the
    trace passed an integer that was derived from a tensor's shape."""

    expr: str
    values: tuple[int, ...]

    def __repr__(self) -> str:  # as messages show it
        return f"the size `{self.expr}`"


@dataclass(frozen=True)
class FromEnd:
    """A size negated (`x[..., :-pad]`, `x[-(t // 4):]`): a position counted from the end, which
    only slice bounds and indices take. `size` is the size itself (`pad`), never negative."""

    size: Dim

    def __repr__(self) -> str:
        return f"the position `{self.size.expr}` from the end"


@dataclass(frozen=True)
class FloatSize:
    """A float computed from sizes (`t / s`, `t * 1.25`), as a Rust `f64` expression, with its
    value in each trace case."""

    expr: str
    values: tuple[float, ...]

    def __repr__(self) -> str:
        return f"the number `{self.expr}`"


def usize_expr(v: Any) -> str:
    """A size argument (int literal or Dim) as Rust."""
    if isinstance(v, Dim):
        return v.expr
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    raise Unsupported(f"expected a non-negative size, got {v!r}")


def size_as(v: Dim | FloatSize, rust_type: str) -> str:
    """A size from shapes as a number of another Rust type (`x.dim(1)? as i64`); `as` binds
    before `+` and `*`, so an expression with an operator outside brackets is parenthesised
    (`(x.dim(1)? - 2) as i64`, not `(x.dim(1)?.min(4)) as f64`). A float from sizes is an `f64`
    already: as one, it is only bracketed where needed, ready to be an operand."""
    depth, outside = 0, []  # the text outside brackets
    for c in v.expr:
        depth += (c in "([") - (c in ")]")
        outside.append(c if depth == 0 else "_")
    text = f"({v.expr})" if re.search(r" ([-+*/%]|as) ", "".join(outside)) else v.expr
    return text if isinstance(v, FloatSize) and rust_type == "f64" else f"{text} as {rust_type}"


def minus(k: int) -> str:
    """The `k`-th dimension from the end: `D::Minus1`, `D::Minus2`, `D::Minus(3)`."""
    need("candle_core::D")
    return f"D::Minus{k}" if k in (1, 2) else f"D::Minus({k})"


def rust_dim(d: int, rank: int) -> str:
    """A dimension index as a Candle maintainer writes it: `D::Minus1` for the last."""
    if d < 0:
        d += rank
    if d == rank - 1 and rank > 1:
        need("candle_core::D")
        return "D::Minus1"
    return str(d)


# --- what emitters return -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rust:
    """Emitted Rust and what it needs: the `use` paths of the names it mentions unqualified,
    whether it reads the local `device` (where tensors that no operand determines are created),
    and, for an op that returns an operand unchanged, that operand (`alias`: no statement)."""

    code: str
    uses: frozenset[str] = frozenset()
    device: bool = False
    alias: T | None = None

    def __str__(self) -> str:  # an f-string would drop `uses`: compose through `emitted`
        raise TypeError("Rust values are not text; build them with registry.core.emitted()")


def alias(x: T) -> Rust:
    """The result of an op that returns its operand `x` itself (a no-op cast, `x + 0`)."""
    return Rust(x.name, alias=x)


def chained(x: T, expr: str) -> Rust | str:
    """A method chain built on `x` (`x.squeeze(1)?.squeeze(0)?`): `x` itself, an alias, when
    no method was applied."""
    return alias(x) if expr == x.name else expr


@dataclass
class _Needs:
    uses: set[str] = field(default_factory=set)
    device: bool = False


_NEEDS: contextvars.ContextVar[_Needs | None] = contextvars.ContextVar("needs", default=None)


def need(path: str) -> None:
    """Declare a `use` path for the code being emitted. The helpers that write a name
    (`rust_dim` writes `D::Minus1`, `runtime("take")` writes `take`) declare it themselves."""
    needs = _NEEDS.get()
    if needs is None:
        raise RuntimeError("need() outside an emission (call the emitter through emitted())")
    needs.uses.add(path)


def emitted(emit: Callable[..., Any], *args: Any, **kwargs: Any) -> Rust:
    """Run an emitter and return its code as `Rust`, with the uses and device needs that the
    emitter and the helpers it called declared. An emitter returns text or `Rust`."""
    needs = _Needs()
    token = _NEEDS.set(needs)
    try:
        out = emit(*args, **kwargs)
    finally:
        _NEEDS.reset(token)
    if isinstance(out, Rust):
        return Rust(out.code, frozenset(needs.uses | out.uses), needs.device or out.device,
                    out.alias)
    if not isinstance(out, str):
        raise TypeError(f"an emitter returned {type(out).__name__}, not Rust code")
    return Rust(out, frozenset(needs.uses), needs.device)


def device() -> str:
    """The device tensors are created on when no operand determines it: the local `device`,
    which the model's `forward` binds to its first input's device."""
    needs = _NEEDS.get()
    if needs is None:
        raise RuntimeError("device() outside an emission")
    needs.device = True
    return "device"


def runtime(name: str) -> str:
    """A function or type of the pycandle-runtime crate, used unqualified."""
    need(f"pycandle_runtime::{name}")
    return name


def index_op() -> None:
    """The code calls `.i(..)`: Candle's `IndexOp` trait must be in scope."""
    need("candle_core::IndexOp")


# --- signatures ---------------------------------------------------------------------------------

_REQUIRED = object()


_VARARGS = object()


def _parse_sig(sig: str) -> list[tuple[str, Any]]:
    params = []
    for part in sig.split(","):
        part = part.strip()
        if not part or part == "*":
            continue
        if part.startswith("*"):  # `*shape`: the remaining positional arguments, as a tuple
            params.append((part[1:], _VARARGS))
        elif "=" in part:
            name, default = part.split("=", 1)
            params.append((name.strip(), ast.literal_eval(default)))
        else:
            params.append((part, _REQUIRED))
    return params


_NUMPY_ALIASES = {"axis": "dim", "keepdims": "keepdim"}


def bind(sig: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind recorded args/kwargs to a Python-style signature string such as
    ``"input, dim=None, keepdim=False"`` or ``"input, *shape"`` (`shape` gets the remaining
    positional arguments as a tuple); unknown or missing arguments raise Unsupported."""
    params = _parse_sig(sig)
    star = next((i for i, (_, d) in enumerate(params) if d is _VARARGS), None)
    positional = params if star is None else params[:star]
    if star is None and len(args) > len(params):
        raise Unsupported(f"too many positional arguments ({len(args)}) for ({sig})")
    names = dict(params)
    # PyTorch's argument parser takes NumPy's names for these in every function that has them
    kwargs = {(_NUMPY_ALIASES[k] if k in _NUMPY_ALIASES and k not in names
               and _NUMPY_ALIASES[k] in names else k): v for k, v in kwargs.items()}
    out: dict[str, Any] = {}
    for (name, _), value in zip(positional, args):
        out[name] = value
    if star is not None:
        out[params[star][0]] = tuple(args[len(positional):])
    for name, value in kwargs.items():
        if star is not None and name == params[star][0]:
            # `x.permute(dims=(0, 2, 1))`, `torch.zeros(size=(2, 3))`: the sequence by name
            if out[name]:
                raise Unsupported(f"argument '{name}' given twice")
            out[name] = (value,)
            continue
        if name not in names:
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
    """A sublayer held by the generated model struct: its Rust type, and its constructor as a
    function of the Rust expression of the sublayer's own `VarBuilder`."""

    rust_type: str
    init: Callable[[str], str]


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
    # parameters forward() may read directly (a tied output projection `x @ emb.weight.T`):
    # PyTorch name -> the Rust method of the field that returns it as `&Tensor`
    params: tuple[tuple[str, str], ...] = ()
    # False for a configuration whose field holds them transformed (a kernel dilated at load):
    # forward() cannot read them from the field then
    params_as_loaded: Callable[[dict[str, Any]], bool] = lambda cfg: True

    @property
    def short(self) -> str:
        return self.torch_type.rsplit(".", 1)[-1]

    def emit_field(self, cfg: dict[str, Any]) -> tuple[Field, frozenset[str]] | None:
        """The sublayer's field and the `use` paths its constructor needs (its type's too), or
        None for a stateless layer."""
        built: list[Field | None] = []

        def build() -> str:
            built.append(self.field(cfg))
            return "" if built[0] is None else built[0].init("vb")

        code = emitted(build)
        if built[0] is None:
            return None
        return built[0], code.uses | frozenset(self.uses)

    def emit_call(self, cfg: dict[str, Any], this: str, args: tuple,
                  kwargs: dict[str, Any]) -> Rust:
        """The call of the sublayer at Rust path `this` (`self.encoder.lstm`) on the operands."""
        code = emitted(self.call, cfg, this, args, kwargs)
        return Rust(code.code, code.uses | frozenset(self.uses + self.call_uses), code.device,
                    code.alias)


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
    # (spelling, bound args, out meta) -> the Rust expression, as text or `Rust`
    emit: Callable[[str, dict[str, Any], Any], Rust | str]
    uses: tuple[str, ...] = ()
    doc: str = ""

    def lower(self, spelling: str, bound: dict[str, Any], out: Any) -> Rust:
        code = emitted(self.emit, spelling, bound, out)
        return Rust(code.code, code.uses | frozenset(self.uses), code.device, code.alias)


def borrow_expr(expr: str, x: T) -> str:
    """`expr`, a method chain on `x` or `x` itself, as a `&Tensor` argument."""
    return x.borrow if expr == x.name else f"&{expr}"


def tensor(v: Any, what: str = "input") -> T:
    if not isinstance(v, T):
        raise Unsupported(f"'{what}' must be a tensor here, got {v!r}")
    return v



# Ops whose emitters give PyTorch's result dtype themselves (casts, comparisons, promotion of
# arithmetic, index results, creation, reductions with `dtype=`). For any other op, a result
# dtype that none of its operands has is type promotion the port does not model: reported.
DTYPE_AWARE_OPS = frozenset({
    "add", "sub", "mul", "div", "gt", "lt", "ge", "le", "eq", "ne", "argmax", "argmin", "cast",
    "to", "type_as", "arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
    "new_zeros", "new_ones", "new_full", "sum", "mean", "softmax", "log_softmax", "type_cast",
    "isnan", "isinf", "isfinite", "logical_not", "logical_and", "logical_or", "logical_xor",
    "one_hot", "cumsum", "prod", "tensor", "empty", "empty_like", "new_empty",
    "where_cond",  # the values give the dtype (numbers: the result's), never the condition
})

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


# --- helpers shared by the family modules ---------------------------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_arg(v: Any, what: str) -> int:
    """A plain integer argument (a dimension, a count); anything else is reported."""
    if not is_int(v):
        raise Unsupported(f"'{what}' must be an integer here, got {v!r}")
    return v


def ntuple(v: Any, n: int, what: str) -> tuple[int, ...]:
    """`3` or `(3,)` or `[3, 3]` -> a tuple of `n` ints (PyTorch's _single/_pair)."""
    items = list(v) if isinstance(v, (tuple, list)) else [v] * n
    if len(items) == 1:
        items *= n
    if len(items) != n or not all(is_int(i) for i in items):
        raise Unsupported(f"{what}={v!r} (expected {n} integer(s))")
    return tuple(items)


def varargs_sizes(sizes: tuple, what: str = "size") -> list[Any]:
    """Sizes given as varargs (`x.view(2, -1)`) or as one sequence (`x.view((2, -1))`)."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    for s in sizes:
        if not (is_int(s) or isinstance(s, Dim)):
            raise Unsupported(f"{what} {s!r} (expected integers)")
    return list(sizes)


def shape_tuple(items: list[str]) -> str:
    """Rust for a shape (or dims) argument: `(2, 3)`, `(5,)`, `()`; a Vec past rank 6."""
    if len(items) > 6:
        return "vec![" + ", ".join(items) + "]"
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def rust_dtype(name: str) -> str:
    """`DType::F32` for `float32`; a dtype Candle does not have is reported."""
    variant = DType(name).candle
    if variant is None:
        raise Unsupported(f"dtype {name} has no Candle equivalent")
    need("candle_core::DType")
    return f"DType::{variant}"


def _shortest_f32(v: float) -> float:
    """The shortest decimal that rounds to the same f32 as `v` (what clippy wants to read)."""
    if not math.isfinite(v):
        return v
    target = struct.pack("<f", v)
    for digits in range(1, 10):
        candidate = float(f"{v:.{digits}g}")
        if struct.pack("<f", candidate) == target:
            return candidate
    return v




def rust_scalar(value: Any, dtype: str) -> str:
    """A typed Rust literal of `dtype` (e.g. `0.5f32`, `3i64`), for Tensor::full and the like."""
    suffix = DType(dtype).literal_suffix
    if suffix is None:
        raise Unsupported(f"a {dtype} scalar (only float32/float64 and integer dtypes here)")
    if dtype.startswith("float"):
        lit = rust_float(_shortest_f32(float(value)) if suffix == "f32" else float(value))
        if lit.startswith("f64::"):  # NAN, INFINITY, NEG_INFINITY
            return lit.replace("f64", suffix)
        return lit + suffix
    if isinstance(value, float) and not value.is_integer():
        raise Unsupported(f"the non-integer value {value!r} for a {dtype} tensor")
    return f"{int(value)}{suffix}"


def dims_arg(x: T, dims: list[int]) -> str:
    """A `Dims` argument: one dimension as `rust_dim`, several as a tuple."""
    if len(dims) == 1:
        return rust_dim(dims[0], x.rank)
    return shape_tuple([str(d) for d in dims])


def tensors(v: Any, what: str = "tensors") -> list[T]:
    """A tensor list argument (torch.cat's `tensors`): a Python list or tuple of tensors."""
    if not isinstance(v, (tuple, list)) or not v or not all(isinstance(t, T) for t in v):
        raise Unsupported(f"'{what}' must be a non-empty list of tensors, got {v!r}")
    return list(v)



def local_name(base: str, *operands: T) -> str:
    """A name for a variable local to an emitted `{ ... }` block that shadows no operand."""
    taken = {t.name.split("[", 1)[0].split(".", 1)[0] for t in operands}
    name = base
    while name in taken:
        name += "_"
    return name
