"""Pooling: max and average pooling in 1-d and 2-d, adaptive average pooling in 1-d; as layers
and as functions. Candle pools 2-d windows (`max_pool2d_with_stride`, `avg_pool2d_with_stride`)
without padding; 1-d pooling is 2-d pooling over a (1, L) plane, padding is done first. The
options Candle lacks (ceil_mode, dilation, count_include_pad=False, divisor_override) go to
the runtime's separable `max_pool_dim`/`avg_pool_dim`."""

from __future__ import annotations

from typing import Any, Callable

from pycandle.registry.core import (
    Layer, Op, T, Unsupported, bind, borrow_expr, chained, int_arg, local_name, minus, no_field,
    ntuple,
    register_layer, register_op, runtime, tensor,
)


def pool_problems(kind: str, n: int, cfg: dict[str, Any]) -> list[str]:
    """What the port cannot do; `cfg` holds the layer attributes / function arguments."""
    problems = []
    kernel = ntuple(cfg["kernel_size"], n, "kernel_size")
    padding = ntuple(cfg.get("padding", 0), n, "padding")
    if kind == "max" and cfg.get("return_indices"):
        problems.append("return_indices=True")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        problems.append(f"padding {cfg['padding']!r} larger than half the kernel")
    return problems


def _needs_runtime(kind: str, n: int, cfg: dict[str, Any]) -> bool:
    """Options Candle's max_pool2d/avg_pool2d do not have: the runtime pools them."""
    if cfg.get("ceil_mode"):
        return True
    if kind == "max":
        return ntuple(cfg.get("dilation", 1), n, "dilation") != (1,) * n
    return (any(ntuple(cfg.get("padding", 0), n, "padding"))
            and not cfg.get("count_include_pad", True)) \
        or cfg.get("divisor_override") is not None


def _pool_dim(kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> str:
    fields = [f"{name}: {value}" for name, value, default in (
        ("stride", stride, kernel), ("padding", padding, 0), ("dilation", dilation, 1),
        ("ceil_mode", "true" if ceil_mode else "false", "false")) if value != default]
    new = f"{runtime('PoolDim')}::new({kernel})"
    return f"PoolDim {{ {', '.join(fields)}, ..{new} }}" if fields else new


def _runtime_pool(kind: str, n: int, x: T, cfg: dict[str, Any], kernel: tuple[int, ...],
                  stride: tuple[int, ...], padding: tuple[int, ...]) -> str:
    """One runtime call per spatial dimension (pooling is separable), the last one first."""
    dilation = ntuple(cfg.get("dilation", 1), n, "dilation") if kind == "max" else (1,) * n
    override = cfg.get("divisor_override") if kind == "avg" else None
    divisor = ""
    if kind == "avg":
        divisor = f"{runtime('Divisor')}::One" if override is not None else (
            f"{runtime('Divisor')}::Padded" if cfg.get("count_include_pad", True)
            else f"{runtime('Divisor')}::Inside")
    expr = x.name
    for i in reversed(range(n)):
        dim = _pool_dim(kernel[i], stride[i], padding[i], dilation[i], bool(cfg.get("ceil_mode")))
        where = borrow_expr(expr, x)
        expr = (f"{runtime('max_pool_dim')}({where}, {minus(n - i)}, &{dim})?" if kind == "max" else
                f"{runtime('avg_pool_dim')}({where}, {minus(n - i)}, &{dim}, {divisor})?")
    if override is not None:
        expr = f"({expr} / {float(int_arg(override, 'divisor_override'))})?"
    return expr


def pool(kind: str, n: int, x: T, cfg: dict[str, Any]) -> str:
    """Rust for max/avg pooling of `x` (rank n + 2, or n + 1 unbatched)."""
    problems = pool_problems(kind, n, cfg)
    if problems:
        raise Unsupported("; ".join(problems))
    if x.rank not in (n + 1, n + 2):
        raise Unsupported(f"a rank-{x.rank} input to {n}-d pooling")
    kernel = ntuple(cfg["kernel_size"], n, "kernel_size")
    stride = ntuple(cfg["stride"] if cfg.get("stride") not in (None, (), []) else kernel, n,
                    "stride")
    padding = ntuple(cfg.get("padding", 0), n, "padding")
    if _needs_runtime(kind, n, cfg):
        return _runtime_pool(kind, n, x, cfg, kernel, stride, padding)
    expr = x.name
    unbatched = x.rank == n + 1
    if unbatched:
        expr += ".unsqueeze(0)?"
    # Zero padding is exact for averages that count the padding; for the maximum, repeating
    # the edge is exact: every window that reaches into the padding also holds the edge value.
    pad_fn = "pad_with_same" if kind == "max" else "pad_with_zeros"
    for i, p in enumerate(padding):
        if p:
            expr += f".{pad_fn}({minus(n - i)}, {p}, {p})?"
    if n == 1:
        expr += ".unsqueeze(2)?"
        kernel, stride = (1, *kernel), (1, *stride)
    k = str(kernel[0]) if len(set(kernel)) == 1 else f"({kernel[0]}, {kernel[1]})"
    if stride == kernel:
        expr += f".{kind}_pool2d({k})?"
    else:
        s = str(stride[0]) if len(set(stride)) == 1 else f"({stride[0]}, {stride[1]})"
        if (k.startswith("(")) != (s.startswith("(")):  # both arguments have one type
            k, s = f"({kernel[0]}, {kernel[1]})", f"({stride[0]}, {stride[1]})"
        expr += f".{kind}_pool2d_with_stride({k}, {s})?"
    if n == 1:
        expr += ".squeeze(2)?"
    if unbatched:
        expr += ".squeeze(0)?"
    return expr


def _output_size(v: Any, what: str = "output_size") -> int:
    out = int_arg(v, what)
    if out < 1:
        raise Unsupported(f"{what}={v!r}")
    return out


def _adaptive_along(name: str, x: T, k: int, out: int) -> str:
    """Average windows [floor(i L / n), ceil((i + 1) L / n)) of the `k`-th dimension from the
    end of the tensor `name` (PyTorch's windows, for any length L)."""
    d = minus(k)
    if out == 1:
        return f"{name}.mean_keepdim({d})?"
    length, i = local_name("length", x), local_name("i", x)
    start, end = local_name("start", x), local_name("end", x)
    windows = local_name("windows", x)
    return ("{\n"
            f"let {length} = {name}.dim({d})?;\n"
            f"let {windows} = (0..{out})\n"
            f".map(|{i}| {{\n"
            f"let {start} = {i} * {length} / {out};\n"
            f"let {end} = (({i} + 1) * {length}).div_ceil({out});\n"
            f"{name}.narrow({d}, {start}, {end} - {start})?.mean_keepdim({d})\n"
            "})\n"
            ".collect::<Result<Vec<_>>>()?;\n"
            f"candle_core::Tensor::cat(&{windows}, {d})?\n"  # parity tests import no Tensor
            "}")


def adaptive_avg_pool1d(x: T, output_size: Any) -> str:
    """PyTorch's windows [floor(i L / n), ceil((i + 1) L / n)) for any length L."""
    out = _output_size(output_size[0] if isinstance(output_size, (tuple, list)) and
                       len(output_size) == 1 else output_size)
    if x.rank not in (2, 3):
        raise Unsupported(f"a rank-{x.rank} input to AdaptiveAvgPool1d")
    return _adaptive_along(x.name, x, 1, out)


def adaptive_avg_pool2d(x: T, output_size: Any) -> str:
    """The 1-D windows along the width, then along the height: a rectangle's mean is the mean
    of its rows' means. `None` keeps that dimension's size."""
    sizes = list(output_size) if isinstance(output_size, (tuple, list)) else [output_size] * 2
    if len(sizes) != 2:
        raise Unsupported(f"output_size={output_size!r}")
    if x.rank not in (3, 4):
        raise Unsupported(f"a rank-{x.rank} input to AdaptiveAvgPool2d")
    height, width = (None if s is None else _output_size(s) for s in sizes)
    if width is None and height is None:
        return x.name
    if height is None:
        return _adaptive_along(x.name, x, 1, width)
    if width is None:
        return _adaptive_along(x.name, x, 2, height)
    rows = local_name("rows", x)
    return ("{\n"
            f"let {rows} = {_adaptive_along(x.name, x, 1, width)};\n"
            f"{_adaptive_along(rows, x, 2, height)}\n"
            "}")


# --- layers ---------------------------------------------------------------------------------------


def _pool_layer(kind: str, n: int) -> None:
    name = f"torch.nn.{'Max' if kind == 'max' else 'Avg'}Pool{n}d"
    attrs = ("kernel_size", "stride", "padding", "ceil_mode") + (
        ("dilation", "return_indices") if kind == "max" else
        ("count_include_pad",) + (("divisor_override",) if n == 2 else ()))

    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        x = bind("input", args, kwargs)["input"]
        return pool(kind, n, tensor(x), cfg)

    register_layer(Layer(name, attrs, "out", no_field, call,
                         check=lambda cfg: pool_problems(kind, n, cfg),
                         doc="kernel, stride, padding, ceil_mode" + (
                             ", dilation" if kind == "max" else
                             ", count_include_pad" + (", divisor_override" if n == 2 else ""))))


for _kind in ("max", "avg"):
    for _n in (1, 2):
        _pool_layer(_kind, _n)


def _adaptive_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return adaptive_avg_pool1d(tensor(bind("input", args, kwargs)["input"]), cfg["output_size"])


register_layer(Layer("torch.nn.AdaptiveAvgPool1d", ("output_size",), "out", no_field,
                     _adaptive_call,
                     doc="any output size (PyTorch's uneven windows)"))


def _adaptive2d_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    x = tensor(bind("input", args, kwargs)["input"])
    return chained(x, adaptive_avg_pool2d(x, cfg["output_size"]))


register_layer(Layer("torch.nn.AdaptiveAvgPool2d", ("output_size",), "out", no_field,
                     _adaptive2d_call,
                     doc="any output size, None entries (PyTorch's uneven windows)"))

# --- functions ------------------------------------------------------------------------------------

_MAX_SIG = "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, " \
           "return_indices=False"
_AVG_SIG = "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True"


def _pool_op(kind: str, n: int) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        return pool(kind, n, tensor(a["input"]), a)

    return emit


for _n in (1, 2):
    register_op(Op(f"max_pool{_n}d", {f"torch.nn.functional.max_pool{_n}d": _MAX_SIG},
                   _pool_op("max", _n)))
    register_op(Op(f"avg_pool{_n}d", {
        f"torch.nn.functional.avg_pool{_n}d":
            _AVG_SIG + (", divisor_override=None" if _n == 2 else "")}, _pool_op("avg", _n)))
register_op(Op("adaptive_avg_pool1d",
               {"torch.nn.functional.adaptive_avg_pool1d": "input, output_size"},
               lambda s, a, out: adaptive_avg_pool1d(tensor(a["input"]), a["output_size"])))
register_op(Op("adaptive_avg_pool2d",
               {"torch.nn.functional.adaptive_avg_pool2d": "input, output_size"},
               lambda s, a, out: chained(tensor(a["input"]),
                                         adaptive_avg_pool2d(tensor(a["input"]), a["output_size"]))))
