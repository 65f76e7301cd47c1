"""Tensor creation (zeros, ones, full, arange and their `_like` / `new_` forms) and dtype casts.

PyTorch's `device=` arguments are not recorded: `_like` and `new_` forms create on their
operand's device, the others on the model's `device` (see `core.device`).
"""

from __future__ import annotations

from typing import Any, Callable

from pycandle.manifest import DType, TensorMeta
from pycandle.registry.core import (
    Dim, FloatSize, Op, Rust, T, Unsupported, alias, device, is_number, register_op, rust_dtype,
    rust_scalar, shape_tuple, size_as, tensor, usize_expr, varargs_sizes,
)

_FACTORY_KW = "out=None, dtype=None, layout=None, device=None, pin_memory=False, " \
              "requires_grad=False, memory_format=None"
_RUST_TYPES = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "uint8": "u8",
               "uint32": "u32"}
_LITERAL_DTYPES = tuple(_RUST_TYPES)


def _out_dtype(out: Any) -> str:
    if not isinstance(out, TensorMeta):
        raise Unsupported("a creation op that does not return one tensor")
    return out.dtype


def _check_layout(a: dict[str, Any]) -> None:
    if a.get("out") is not None:
        raise Unsupported("out= (write into an existing tensor)")
    if a.get("requires_grad"):
        raise Unsupported("requires_grad=True (Candle ports run inference)")


def _shape(sizes: tuple) -> str:
    return shape_tuple([usize_expr(s) for s in varargs_sizes(sizes)])


def _full(value: Any, shape: str, on: str, dtype: str) -> str:
    """`Tensor::full` with a literal of the dtype (cast after for f16/bf16), or a size from
    shapes as a number of it (`torch.full((b,), t)`: every length `t`)."""
    if isinstance(value, (Dim, FloatSize)):
        made = dtype if dtype in _LITERAL_DTYPES else "float32"
        cast = "" if made == dtype else f".to_dtype({rust_dtype(dtype)})?"
        return f"Tensor::full({size_as(value, _RUST_TYPES[made])}, {shape}, {on})?{cast}"
    if isinstance(value, bool) or not is_number(value):
        raise Unsupported(f"fill value {value!r}")
    if dtype in _LITERAL_DTYPES:
        return f"Tensor::full({rust_scalar(value, dtype)}, {shape}, {on})?"
    return (f"Tensor::full({rust_scalar(value, 'float32')}, {shape}, {on})?"
            f".to_dtype({rust_dtype(dtype)})?")


# --- torch.zeros / ones / full / arange -----------------------------------------------------------


def _zeros_ones(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        _check_layout(a)
        dtype = rust_dtype(_out_dtype(out))
        return f"Tensor::{kind}({_shape(a['size'])}, {dtype}, {device()})?"

    return emit


def _full_op(spelling: str, a: dict[str, Any], out: Any) -> str:
    _check_layout(a)
    return _full(a["fill_value"], _shape((a["size"],)), device(), _out_dtype(out))


def _arange_bound(v: Any, dtype: str) -> str:
    if isinstance(v, Dim):  # a size: usize, converted to the element type
        return size_as(v, _RUST_TYPES[dtype])
    return rust_scalar(v, dtype)


def _arange(spelling: str, a: dict[str, Any], out: Any) -> str:
    _check_layout(a)
    bounds = list(a["range"])
    if not 1 <= len(bounds) <= 3:
        raise Unsupported(f"arange{tuple(bounds)!r}")
    if len(bounds) == 1:
        bounds.insert(0, 0)
    dtype = _out_dtype(out)
    if dtype not in _LITERAL_DTYPES:
        raise Unsupported(f"arange of {dtype}")
    start, end = (_arange_bound(b, dtype) for b in bounds[:2])
    if len(bounds) == 3 and bounds[2] != 1:
        step = _arange_bound(bounds[2], dtype)
        return f"Tensor::arange_step({start}, {end}, {step}, {device()})?"
    return f"Tensor::arange({start}, {end}, {device()})?"


register_op(Op("zeros", {"torch.zeros": f"*size, {_FACTORY_KW}"}, _zeros_ones("zeros"),
               doc="sizes as varargs or a sequence"))
register_op(Op("ones", {"torch.ones": f"*size, {_FACTORY_KW}"}, _zeros_ones("ones"),
               doc="sizes as varargs or a sequence"))
register_op(Op("full", {"torch.full": f"size, fill_value, *, {_FACTORY_KW}"}, _full_op))
register_op(Op("arange", {"torch.arange": f"*range, {_FACTORY_KW}"}, _arange,
               doc="end / start, end / start, end, step"))

# --- *_like and Tensor.new_* ----------------------------------------------------------------------


def _like(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """zeros_like / ones_like / full_like: the operand's shape and device."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        _check_layout(a)
        x = tensor(a["input"])
        dtype = _out_dtype(out)
        if kind == "full":
            return _full(a["fill_value"], f"{x.name}.shape()", f"{x.name}.device()", dtype)
        if dtype == x.meta.dtype:
            return f"{x.name}.{kind}_like()?"
        return (f"Tensor::{kind}({x.name}.shape(), {rust_dtype(dtype)}, "
                f"{x.name}.device())?")

    return emit


def _new(kind: str) -> Callable[[str, dict[str, Any], Any], str]:
    """Tensor.new_zeros / new_ones / new_full: the operand's device (and dtype by default)."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        _check_layout(a)
        x = tensor(a["input"])
        dtype = _out_dtype(out)
        sizes = a["size"] if kind != "full" else (a["size"],)
        if kind == "full":
            return _full(a["fill_value"], _shape(sizes), f"{x.name}.device()", dtype)
        dt = f"{x.name}.dtype()" if dtype == x.meta.dtype else rust_dtype(dtype)
        return f"Tensor::{kind}({_shape(sizes)}, {dt}, {x.name}.device())?"

    return emit


_LIKE_KW = "dtype=None, layout=None, device=None, requires_grad=False, memory_format=None"
register_op(Op("zeros_like", {"torch.zeros_like": f"input, *, {_LIKE_KW}"}, _like("zeros")))
register_op(Op("ones_like", {"torch.ones_like": f"input, *, {_LIKE_KW}"}, _like("ones")))
register_op(Op("full_like", {"torch.full_like": f"input, fill_value, *, {_LIKE_KW}"},
               _like("full")))
_NEW_KW = "dtype=None, device=None, requires_grad=False, layout=None, pin_memory=False"
register_op(Op("new_zeros", {"Tensor.new_zeros": f"input, *size, {_NEW_KW}"}, _new("zeros")))
register_op(Op("new_ones", {"Tensor.new_ones": f"input, *size, {_NEW_KW}"}, _new("ones")))
register_op(Op("new_full", {"Tensor.new_full": f"input, size, fill_value, *, {_NEW_KW}"},
               _new("full")))

# --- dtype casts ----------------------------------------------------------------------------------


def _cast(x: T, dtype: str) -> Rust | str:
    """`x.to_dtype(...)`, or `x` itself (an alias) when it already has that dtype. A cast to
    bool is a test against zero (Candle's masks are u8 0/1, as its comparisons give)."""
    if dtype == x.meta.dtype:
        return alias(x)
    if dtype == "bool":
        return f"{x.name}.ne(0.0)?"
    return f"{x.name}.to_dtype({rust_dtype(dtype)})?"


def _to(spelling: str, a: dict[str, Any], out: Any) -> str:
    """Tensor.to(dtype) / .to(other) / .to(device, dtype) / .to(dtype=...); devices are ignored
    (generated code runs on its inputs' device)."""
    x = tensor(a["input"])
    target = a["dtype"]
    for v in a["args"]:
        if isinstance(v, DType):
            target = v
        elif isinstance(v, T):
            target = DType(v.meta.dtype)
        elif not (v is None or isinstance(v, (str, bool))):
            raise Unsupported(f"Tensor.to({v!r})")
    if a["memory_format"] is not None:
        raise Unsupported("Tensor.to with memory_format=")
    return alias(x) if target is None else _cast(x, target.name)


_SHORTHANDS = {"float": "float32", "double": "float64", "half": "float16",
               "bfloat16": "bfloat16", "long": "int64", "int": "int32", "short": "int16",
               "byte": "uint8", "bool": "bool"}


def _shorthand(spelling: str, a: dict[str, Any], out: Any) -> str:
    return _cast(tensor(a["input"]), _SHORTHANDS[spelling.rsplit(".", 1)[1]])


def _type_as(spelling: str, a: dict[str, Any], out: Any) -> str:
    return _cast(tensor(a["input"]), tensor(a["other"], "other").meta.dtype)


def _type(spelling: str, a: dict[str, Any], out: Any) -> str:
    if not isinstance(a["dtype"], DType):
        raise Unsupported(f"Tensor.type({a['dtype']!r}) (only a torch dtype)")
    return _cast(tensor(a["input"]), a["dtype"].name)


register_op(Op("to", {"Tensor.to": "input, *args, dtype=None, non_blocking=False, copy=False, "
                                   "memory_format=None, device=None"}, _to,
               doc="a dtype, another tensor's dtype; devices are ignored"))
register_op(Op("cast", {f"Tensor.{n}": "input, memory_format=None" for n in _SHORTHANDS},
               _shorthand, doc="float, double, half, bfloat16, long, int, short, byte, bool"))
register_op(Op("type_as", {"Tensor.type_as": "input, other"}, _type_as))
register_op(Op("type_cast", {"Tensor.type": "input, dtype=None, non_blocking=False"}, _type))

# --- torch.empty (zeros: a correct model never reads its values) ----------------------------------

register_op(Op("empty", {"torch.empty": f"*size, {_FACTORY_KW}"}, _zeros_ones("zeros"),
               doc="as zeros (its values are never read)"))
register_op(Op("empty_like", {"torch.empty_like": f"input, *, {_LIKE_KW}"}, _like("zeros"),
               doc="as zeros"))
register_op(Op("new_empty", {"Tensor.new_empty": f"input, *size, {_NEW_KW}"}, _new("zeros"),
               doc="as zeros"))

# --- torch.tensor(...) of Python numbers: a constant ----------------------------------------------


def _elements(data: Any, dtype: str, first: list[bool]) -> str:
    """Nested lists of numbers (or sizes from shapes) as a Rust array literal; the first number
    carries the type suffix, which Rust infers the others from."""
    if isinstance(data, (list, tuple)):
        if not data:
            raise Unsupported("torch.tensor of an empty list")
        return "[" + ", ".join(_elements(v, dtype, first) for v in data) + "]"
    rust_type = _RUST_TYPES[dtype]
    if isinstance(data, (Dim, FloatSize)):
        first[0] = False
        return size_as(data, rust_type)
    if isinstance(data, T):
        raise Unsupported("torch.tensor of tensors", hint="use torch.stack")
    if not (is_number(data) or isinstance(data, bool)):
        raise Unsupported(f"torch.tensor of {data!r}")
    value = int(data) if isinstance(data, bool) else data
    if first[0]:
        first[0] = False
        return rust_scalar(value, dtype)
    lit = rust_scalar(value, dtype)
    return lit[: -len(rust_type)] if lit.endswith(rust_type) else lit


def _tensor(spelling: str, a: dict[str, Any], out: Any) -> str:
    if a.get("requires_grad"):
        raise Unsupported("requires_grad=True (Candle ports run inference)")
    dtype = _out_dtype(out)
    made = "uint8" if dtype == "bool" else dtype
    cast = ""
    if made not in _LITERAL_DTYPES:  # f16, bf16: built as f32, then cast
        made, cast = "float32", f".to_dtype({rust_dtype(dtype)})?"
    data = a["data"]
    if isinstance(data, (list, tuple)):
        return f"Tensor::new(&{_elements(data, made, [True])}, {device()})?{cast}"
    return f"Tensor::new({_elements(data, made, [True])}, {device()})?{cast}"


register_op(Op("tensor", {"torch.tensor": "data, *, dtype=None, device=None, "
                                          "requires_grad=False, pin_memory=False",
                          "torch.as_tensor": "data, dtype=None, device=None"}, _tensor,
               doc="of Python numbers (nested lists) and sizes (also `t / s` and the like): "
                   "a constant, or a value computed from the input shapes"))
