"""Layout: reshaping, permuting, joining and splitting, padding."""

from __future__ import annotations

from typing import Any

from pycandle.manifest import DType
from pycandle.registry.core import (
    Dim, Layer, Op, T, Unsupported, alias, borrow_expr, chained, int_arg, is_int, is_number,
    local_name, no_field, one_tensor, register_layer, register_op, runtime, rust_dim, rust_float,
    shape_tuple, tensor, tensors, usize_expr, varargs_sizes,
)

# --- transpose, contiguous ------------------------------------------------------------------------


def _transpose(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d0, d1 = x.norm_dim(a["dim0"]), x.norm_dim(a["dim1"])
    return f"{x.name}.transpose({d0}, {d1})?"


def _t(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if x.rank > 2:
        raise Unsupported(f"Tensor.t() on a rank-{x.rank} tensor")
    return f"{x.name}.t()?" if x.rank == 2 else alias(x)


def _reversed_dims(spelling: str, a: dict[str, Any], out: Any) -> Any:
    """`x.T`: the dimensions in reverse order (a transpose for a matrix)."""
    x = tensor(a["input"])
    if x.rank < 2:
        return alias(x)
    if x.rank == 2:
        return f"{x.name}.t()?"
    return f"{x.name}.permute({shape_tuple([str(d) for d in reversed(range(x.rank))])})?"


def _matrix_transpose(spelling: str, a: dict[str, Any], out: Any) -> str:
    """`x.mT`: the last two dimensions swapped, on every matrix of a batch."""
    x = tensor(a["input"])
    if x.rank < 2:
        raise Unsupported(f"Tensor.mT on a rank-{x.rank} tensor")
    return f"{x.name}.t()?"


def _contiguous(spelling: str, a: dict[str, Any], out: Any) -> str:
    return f"{tensor(a['input']).name}.contiguous()?"


register_op(Op("transpose", {"torch.transpose": "input, dim0, dim1",
                             "Tensor.transpose": "input, dim0, dim1",
                             "torch.swapaxes": "input, dim0, dim1",
                             "Tensor.swapaxes": "input, dim0, dim1"}, _transpose))
register_op(Op("t", {"Tensor.t": "input", "torch.t": "input"}, _t))
register_op(Op("T", {"Tensor.T": "input"}, _reversed_dims, doc="any rank"))
register_op(Op("mT", {"Tensor.mT": "input"}, _matrix_transpose))
register_op(Op("contiguous", {"Tensor.contiguous": "input, memory_format=None"}, _contiguous))


def _narrow(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    start = a["start"]
    if is_int(start) and start < 0:  # counts from the end, as in PyTorch
        start = f"{x.dim(d)} - {-start}"
    elif isinstance(start, T):
        raise Unsupported("narrow with a tensor start")
    else:
        start = usize_expr(start)
    return f"{x.name}.narrow({rust_dim(d, x.rank)}, {start}, {usize_expr(a['length'])})?"


register_op(Op("narrow", {"torch.narrow": "input, dim, start, length",
                          "Tensor.narrow": "input, dim, start, length"}, _narrow,
               doc="start may be negative or come from shapes"))

# --- reshape, view, flatten, unflatten ------------------------------------------------------------


def reshape_to(x: T, items: list[str | None]) -> str:
    """`x.reshape(...)` to a shape of Rust size expressions; `None` is the one inferred size
    (a `()` hole in Candle's shape tuple, which Candle supports up to rank 5)."""
    if items == [None]:
        return f"{x.name}.flatten_all()?"
    if None in items and len(items) > 5:
        known = " * ".join(i for i in items if i is not None)
        items = [f"{x.name}.elem_count() / ({known})" if i is None else i for i in items]
    return f"{x.name}.reshape({shape_tuple(['()' if i is None else i for i in items])})?"


def _size_items(sizes: list[Any]) -> list[str | None]:
    """PyTorch sizes (ints, Dims, one -1) as Rust size expressions, the -1 as None."""
    holes = sum(1 for s in sizes if is_int(s) and s == -1)
    if holes > 1:
        raise Unsupported(f"shape {sizes!r} with more than one -1")
    return [None if is_int(s) and s == -1 else usize_expr(s) for s in sizes]


def _reshape(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    shape = a["shape"] if "shape" in a else a["size"]  # Tensor.view names it size
    if spelling == "torch.reshape":
        shape = (shape,)
    if len(shape) == 1 and not isinstance(shape[0], (tuple, list, int, Dim)):
        what = f"torch.{shape[0].name}" if isinstance(shape[0], DType) else repr(shape[0])
        raise Unsupported(f"{spelling}({what}): a reinterpretation of the bits",
                          hint="view(dtype) is not supported; cast with .to(dtype) instead")
    return reshape_to(x, _size_items(varargs_sizes(shape)))


def _reshape_as(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, other = tensor(a["input"]), tensor(a["other"], "other")
    return f"{x.name}.reshape({other.name}.shape())?"


def flatten(x: T, start: Any, end: Any) -> str:
    if x.rank == 0:
        return f"{x.name}.reshape(1)?"
    s, e = x.norm_dim(int_arg(start, "start_dim")), x.norm_dim(int_arg(end, "end_dim"))
    if s > e:
        raise Unsupported(f"flatten with start_dim {start} after end_dim {end}")
    if s == e:
        return alias(x)
    if s == 0 and e == x.rank - 1:
        return f"{x.name}.flatten_all()?"
    if e == x.rank - 1:
        return f"{x.name}.flatten_from({s})?"
    if s == 0:
        return f"{x.name}.flatten_to({e})?"
    return f"{x.name}.flatten({s}, {e})?"


def unflatten(x: T, dim: Any, sizes: Any) -> str:
    d = x.norm_dim(int_arg(dim, "dim"))
    if not isinstance(sizes, (tuple, list)) or not sizes:
        raise Unsupported(f"unflatten to sizes {sizes!r}")
    inner = _size_items(list(sizes))
    outer: list[str | None] = [x.dim(i) for i in range(x.rank)]
    if None not in inner:  # let Candle infer one of the other dimensions (usually the batch)
        free = next((i for i in range(x.rank) if i != d), None)
        if free is not None:
            outer[free] = None
    return reshape_to(x, outer[:d] + inner + outer[d + 1:])


register_op(Op("reshape", {"torch.reshape": "input, shape", "Tensor.reshape": "input, *shape",
                           "Tensor.view": "input, *size"}, _reshape,
               doc="sizes may be -1 (inferred)"))
register_op(Op("reshape_as", {"Tensor.reshape_as": "input, other",
                              "Tensor.view_as": "input, other"}, _reshape_as))
register_op(Op("flatten", {"torch.flatten": "input, start_dim=0, end_dim=-1",
                           "Tensor.flatten": "input, start_dim=0, end_dim=-1"},
               lambda s, a, out: flatten(tensor(a["input"]), a["start_dim"], a["end_dim"])))
register_op(Op("unflatten", {"torch.unflatten": "input, dim, sizes",
                             "Tensor.unflatten": "input, dim, sizes"},
               lambda s, a, out: unflatten(tensor(a["input"]), a["dim"], a["sizes"])))


def _flatten_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    expr = flatten(x, cfg["start_dim"], cfg["end_dim"])
    return f"{x.name}.clone()" if expr == x.name else expr  # a layer's output is a new variable


def _unflatten_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return unflatten(one_tensor(args, kwargs), cfg["dim"], cfg["unflattened_size"])


register_layer(Layer("torch.nn.Flatten", ("start_dim", "end_dim"), "out", no_field,
                     _flatten_call))
register_layer(Layer("torch.nn.Unflatten", ("dim", "unflattened_size"), "out", no_field,
                     _unflatten_call))

# --- permute, squeeze, unsqueeze, expand, repeat --------------------------------------------------


def _permute(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    dims = a["dims"] if spelling == "torch.permute" else varargs_sizes(a["dims"], "dim")
    dims = [x.norm_dim(int_arg(d, "dims")) for d in dims]
    if sorted(dims) != list(range(x.rank)):
        raise Unsupported(f"permute dims {a['dims']!r} are not a permutation")
    if dims == list(range(x.rank)):
        return alias(x)
    return f"{x.name}.permute({shape_tuple([str(d) for d in dims])})?"


def _squeeze(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    dim = a["dim"]
    if dim is None:  # every dimension of size 1 (the same ones in every trace case)
        dims = [d for d in range(x.rank) if all(s[d] == 1 for s in x.meta.shapes)]
    elif isinstance(dim, (tuple, list)):
        dims = sorted({x.norm_dim(int_arg(d, "dim")) for d in dim})
    else:
        dims = [x.norm_dim(int_arg(dim, "dim"))]
    if not dims:
        return alias(x)
    # highest first, so the remaining indices stay valid; like PyTorch, Candle leaves a
    # dimension whose size is not 1 as it is
    return x.name + "".join(f".squeeze({d})?" for d in sorted(dims, reverse=True))


def _unsqueeze(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d = x.norm_dim(int_arg(a["dim"], "dim"), x.rank + 1)
    return f"{x.name}.unsqueeze({rust_dim(d, x.rank + 1)})?"


def _expand(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    sizes = varargs_sizes(a["size"])
    lead = len(sizes) - x.rank
    if lead < 0:
        raise Unsupported(f"expand to {len(sizes)} dimensions from {x.rank}")
    items = []
    for j, s in enumerate(sizes):
        if is_int(s) and s == -1:
            if j < lead:
                raise Unsupported("expand with -1 for a new leading dimension")
            items.append(x.dim(j - lead))
        else:
            items.append(usize_expr(s))
    return f"{x.name}.expand({shape_tuple(items)})?"


def _expand_as(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, other = tensor(a["input"]), tensor(a["other"], "other")
    return f"{x.name}.expand({other.name}.shape())?"


def _repeat(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    reps = varargs_sizes(a["repeats"], "repeat")
    if len(reps) < x.rank:
        raise Unsupported(f"repeat with {len(reps)} sizes for a rank-{x.rank} tensor")
    return f"{x.name}.repeat({shape_tuple([usize_expr(r) for r in reps])})?"


register_op(Op("permute", {"torch.permute": "input, dims", "Tensor.permute": "input, *dims"},
               _permute))
register_op(Op("squeeze", {"torch.squeeze": "input, dim=None", "Tensor.squeeze": "input, dim=None",
                           "Tensor.squeeze_": "input, dim=None"}, _squeeze,
               doc="all, one or several dims"))
register_op(Op("unsqueeze", {"torch.unsqueeze": "input, dim", "Tensor.unsqueeze": "input, dim",
                             "Tensor.unsqueeze_": "input, dim"}, _unsqueeze))
register_op(Op("expand", {"Tensor.expand": "input, *size"}, _expand, doc="-1 keeps a size"))
register_op(Op("expand_as", {"Tensor.expand_as": "input, other"}, _expand_as))
register_op(Op("repeat", {"Tensor.repeat": "input, *repeats"}, _repeat))

# --- cat, stack -----------------------------------------------------------------------------------


def _joined(spelling: str, a: dict[str, Any], out: Any, stack: bool) -> str:
    if isinstance(a["tensors"], T) and a["tensors"].is_vec:  # the values of a loop's passes
        vec = a["tensors"]
        rank = vec.rank + (1 if stack else 0)
        d = vec.norm_dim(int_arg(a["dim"], "dim"), rank)
        return f"Tensor::{'stack' if stack else 'cat'}(&{vec.name}, {rust_dim(d, rank)})?"
    ts = tensors(a["tensors"])
    if len({t.meta.dtype for t in ts}) > 1:
        raise Unsupported("joining tensors of different dtypes (type promotion)")
    rank = ts[0].rank + (1 if stack else 0)
    d = ts[0].norm_dim(int_arg(a["dim"], "dim"), rank)
    if len(ts) == 1 and not stack:
        return alias(ts[0])
    items = ", ".join(t.name if t.is_ref else f"&{t.name}" for t in ts)
    fn = "stack" if stack else "cat"
    return f"Tensor::{fn}(&[{items}], {rust_dim(d, rank)})?"


_CAT = "tensors, dim=0"
register_op(Op("cat", {"torch.cat": _CAT, "torch.concat": _CAT,
                       "torch.concatenate": "tensors, axis=0"},
               lambda s, a, out: _joined(s, {**a, "dim": a.get("dim", a.get("axis"))}, out, False)))
register_op(Op("stack", {"torch.stack": _CAT},
               lambda s, a, out: _joined(s, a, out, True)))

# --- chunk, split, unbind: a Vec (or an array) of tensors -----------------------------------------


def _torch_chunks(size: int, n: int) -> list[int]:
    step = -(-size // n)
    return [min(step, size - s) for s in range(0, size, step)] if size else []


def _candle_chunks(size: int, n: int) -> list[int]:
    if size < n:
        return [1] * size
    return [size // n + (1 if i < size % n else 0) for i in range(n)]


def _narrows(x: T, d: int, lengths: list[str]) -> str:
    """`[x.narrow(d, 0, a)?, x.narrow(d, a, b)?, ...]`: pieces of the given lengths."""
    parts, offset = [], 0
    terms: list[str] = []  # the non-literal part of the running offset
    for length in lengths:
        start = " + ".join(terms + ([str(offset)] if offset or not terms else []))
        parts.append(f"{x.name}.narrow({d}, {start}, {length})?")
        if length.isdigit():
            offset += int(length)
        else:
            terms.append(length)
    return "[" + ", ".join(parts) + "]"


def _pieces_of(x: T, d: int, step: str) -> str:
    """Consecutive pieces of `step` along `d` (the last one shorter), for any size of `d`;
    `step` may refer to the size as `{size}`."""
    size, step_, start = (local_name(n, x) for n in ("size", "step", "start"))
    return ("{\n"
            f"let {size} = {x.dim(d)};\n"
            f"let {step_} = {step.replace('{size}', size)};\n"
            f"(0..{size})\n"
            f".step_by({step_})\n"
            f".map(|{start}| {x.name}.narrow({d}, {start}, {step_}.min({size} - {start})))\n"
            ".collect::<Result<Vec<_>>>()?\n"
            "}")


def _chunk(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    n = int_arg(a["chunks"], "chunks")
    if n < 1:
        raise Unsupported(f"chunk into {n} pieces")
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    sizes = {s[d] for s in x.meta.shapes}
    if len(sizes) == 1:  # a fixed size: the pieces are known
        size = sizes.pop()
        if _torch_chunks(size, n) == _candle_chunks(size, n):
            return f"{x.name}.chunk({n}, {d})?"
        return _narrows(x, d, [str(p) for p in _torch_chunks(size, n)])
    # PyTorch's rule: pieces of ceil(size / chunks); Candle's `chunk` spreads the remainder
    return _pieces_of(x, d, f"{{size}}.div_ceil({n})")


def _split(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    how = a.get("split_size", a.get("split_size_or_sections"))
    if isinstance(how, (tuple, list)):
        return _narrows(x, d, [usize_expr(s) for s in how])
    if isinstance(how, Dim):
        return _pieces_of(x, d, how.expr)
    step = int_arg(how, "split_size")
    if step < 1:
        raise Unsupported(f"split into pieces of {step}")
    sizes = {s[d] for s in x.meta.shapes}
    if len(sizes) == 1:
        size = sizes.pop()
        if size % step == 0:
            return f"{x.name}.chunk({size // step}, {d})?"
        return _narrows(x, d, [str(min(step, size - s)) for s in range(0, size, step)])
    return _pieces_of(x, d, str(step))


def _unbind(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    i = local_name("i", x)
    return (f"(0..{x.dim(d)})\n.map(|{i}| {x.name}.get_on_dim({d}, {i}))\n"
            ".collect::<Result<Vec<_>>>()?")


def _select(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    index = a["index"]
    if isinstance(index, Dim):
        if min(index.values) < 0:
            raise Unsupported(f"index {index.expr} that is negative in a trace case")
        return f"{x.name}.get_on_dim({d}, {index.expr})?"
    k = int_arg(index, "index")
    return f"{x.name}.get_on_dim({d}, {k if k >= 0 else f'{x.dim(d)} - {-k}'})?"


register_op(Op("chunk", {"torch.chunk": "input, chunks, dim=0",
                         "Tensor.chunk": "input, chunks, dim=0"}, _chunk,
               doc="PyTorch's piece sizes"))
register_op(Op("split", {"torch.split": "input, split_size_or_sections, dim=0",
                         "Tensor.split": "input, split_size, dim=0"},
               _split, doc="a piece size or a list of sizes"))
register_op(Op("unbind", {"torch.unbind": "input, dim=0", "Tensor.unbind": "input, dim=0"},
               _unbind))
register_op(Op("select", {"torch.select": "input, dim, index",
                          "Tensor.select": "input, dim, index"}, _select,
               doc="an integer index (also negative, or from shapes); what a loop over "
                   "`x.unbind(d)` reads in each pass"))

# --- padding --------------------------------------------------------------------------------------


# F.pad's modes: Candle's own methods, or the runtime's functions
_PAD_METHODS = {"zeros": "pad_with_zeros", "replicate": "pad_with_same"}
_PAD_FUNCTIONS = {"reflect": "pad_reflect", "circular": "pad_circular"}


def pad(x: T, amounts: Any, mode: str, value: Any = None) -> str:
    """F.pad: `amounts` pairs (left, right) from the last dimension backwards."""
    if not isinstance(amounts, (tuple, list)) or len(amounts) % 2 or len(amounts) > 2 * x.rank:
        raise Unsupported(f"pad {amounts!r} for a rank-{x.rank} tensor")
    if mode == "constant":
        if value in (None, 0, 0.0):
            mode = "zeros"
        elif not is_number(value):
            raise Unsupported(f"constant padding with value {value!r}")
    elif mode not in _PAD_METHODS and mode not in _PAD_FUNCTIONS:
        raise Unsupported(f"padding mode {mode!r}")
    expr = x.name
    for k in range(len(amounts) // 2):
        left, right = amounts[2 * k], amounts[2 * k + 1]
        for v in (left, right):
            if is_int(v) and v < 0:
                raise Unsupported(f"negative padding {v} (cropping)", hint="use narrow or slicing")
        if left == 0 and right == 0:
            continue
        where = f"{rust_dim(x.rank - 1 - k, x.rank)}, {usize_expr(left)}, {usize_expr(right)}"
        if mode in _PAD_METHODS:
            expr += f".{_PAD_METHODS[mode]}({where})?"
        elif mode == "constant":
            expr = f"{runtime('pad_constant')}({borrow_expr(expr, x)}, {where}, {rust_float(float(value))})?"
        else:
            expr = f"{runtime(_PAD_FUNCTIONS[mode])}({borrow_expr(expr, x)}, {where})?"
    return expr


register_op(Op("pad", {"torch.nn.functional.pad": "input, pad, mode='constant', value=None"},
               lambda s, a, out: chained(tensor(a["input"]),
                                         pad(tensor(a["input"]), a["pad"], a["mode"], a["value"])),
               doc="constant (any value), replicate, reflect and circular"))



def _pad_layer(mode: str) -> Any:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        x = one_tensor(args, kwargs)
        return chained(x, pad(x, list(cfg["padding"]), mode, cfg.get("value")))

    return call


# The padding modules: `padding` is always the full (left, right, ...) tuple on the instance
for _n in (1, 2, 3):
    register_layer(Layer(f"torch.nn.ConstantPad{_n}d", ("padding", "value"), "out", no_field,
                         _pad_layer("constant")))
    register_layer(Layer(f"torch.nn.ZeroPad{_n}d", ("padding",), "out", no_field,
                         _pad_layer("constant")))
    for _kind, _mode in (("Reflection", "reflect"), ("Replication", "replicate"),
                         ("Circular", "circular")):
        register_layer(Layer(f"torch.nn.{_kind}Pad{_n}d", ("padding",), "out", no_field,
                             _pad_layer(_mode)))

# --- tril, triu, flip, repeat_interleave ----------------------------------------------------------


def _triangle(kind: str) -> Any:
    """Keep the elements with column - row <= diagonal (tril) or >= diagonal (triu) of the last
    two dimensions, zero the others."""

    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        x = tensor(a["input"])
        if x.rank < 2:
            raise Unsupported(f"{kind} of a rank-{x.rank} tensor (it needs two dimensions)")
        if a.get("out") is not None:
            raise Unsupported(f"{kind} with out=")
        k = int_arg(a["diagonal"], "diagonal")
        rows, cols = local_name("rows", x), local_name("cols", x)
        test = "le" if kind == "tril" else "ge"
        return (f"{{ let {rows} = Tensor::arange(0i64, {x.dim(x.rank - 2)} as i64, "
                f"{x.name}.device())?.unsqueeze(1)?; "
                f"let {cols} = Tensor::arange(0i64, {x.dim(x.rank - 1)} as i64, "
                f"{x.name}.device())?.unsqueeze(0)?; "
                f"{cols}.broadcast_sub(&{rows})?.{test}({k}i64)?.broadcast_as({x.name}.shape())?"
                f".where_cond({x.borrow}, &{x.name}.zeros_like()?)? }}")

    return emit


for _kind in ("tril", "triu"):
    register_op(Op(_kind, {f"torch.{_kind}": "input, diagonal=0, *, out=None",
                           f"Tensor.{_kind}": "input, diagonal=0",
                           f"Tensor.{_kind}_": "input, diagonal=0"}, _triangle(_kind),
                   doc="of the last two dimensions, any diagonal"))


def _flip(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    dims = a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)) and spelling == "Tensor.flip":
        dims = dims[0]
    if isinstance(dims, int):
        dims = [dims]
    dims = sorted({x.norm_dim(int_arg(d, "dims")) for d in dims})
    if not dims:
        return alias(x)
    return f"{x.name}.flip(&[{', '.join(map(str, dims))}])?"


register_op(Op("flip", {"torch.flip": "input, dims", "Tensor.flip": "input, *dims"}, _flip,
               doc="any dims"))


def _repeat_interleave(spelling: str, a: dict[str, Any], out: Any) -> str:
    x, r = a["input"], a["repeats"]
    if r is None or isinstance(r, T):
        raise Unsupported("repeat_interleave with a tensor of repeats (the output's shape "
                          "would depend on its values)",
                          hint="pass the repeats as an int")
    x = tensor(x)
    reps = usize_expr(r)
    if a["dim"] is None:
        return f"{x.name}.flatten_all()?.unsqueeze(1)?.repeat((1, {reps}))?.flatten_all()?"
    d = x.norm_dim(int_arg(a["dim"], "dim"))
    times = ["1"] * (x.rank + 1)
    times[d + 1] = reps
    return f"{x.name}.unsqueeze({d + 1})?.repeat({shape_tuple(times)})?.flatten({d}, {d + 1})?"


_RI_SIG = "input, repeats=None, dim=None, *, output_size=None"
register_op(Op("repeat_interleave", {"torch.repeat_interleave": _RI_SIG,
                                     "Tensor.repeat_interleave": _RI_SIG}, _repeat_interleave,
               doc="an int number of repeats, over a dim or flattened"))
