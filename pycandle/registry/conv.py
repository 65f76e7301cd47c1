"""Convolutions: nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, via candle_nn
(nn.Conv1d via the runtime's `Conv1d`: candle_nn's layer with a faster CPU forward).

Candle's 2-d convolutions take one stride, padding and dilation for both dimensions; what
differs per dimension is done around them, exactly: a dilation by the kernel with zeros
between its taps (`dilate`, run with dilation 1), a transposed convolution's stride by the
input with zeros between its elements (run with stride 1)."""

from __future__ import annotations

from typing import Any, Callable

from pycandle.registry.core import (
    Field, Layer, Op, T, Unsupported, bind, need, ntuple, register_layer, register_op, require,
    runtime, tensor,
)
from pycandle.manifest import TensorMeta
from pycandle.registry.shape import pad

_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
          "groups", "bias", "padding_mode")
# padding_mode -> F.pad's mode: the call pads the input itself unless Candle's conv can
_PAD_MODES = {"zeros": "constant", "replicate": "replicate", "reflect": "reflect",
              "circular": "circular"}


def _has_bias(cfg: dict[str, Any]) -> bool:
    # `bias` is the module attribute: a parameter (recorded as its text) or None
    return cfg.get("bias") not in (None, False)


def _pads(cfg: dict[str, Any], n: int) -> list[tuple[int, int]]:
    """(left, right) padding of each spatial dimension, PyTorch's rules for 'same'/'valid'."""
    padding = cfg["padding"]
    if padding == "valid":
        return [(0, 0)] * n
    if padding == "same":
        kernel = ntuple(cfg["kernel_size"], n, "kernel_size")
        dilation = ntuple(cfg["dilation"], n, "dilation")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in ntuple(padding, n, "padding")]


def _uneven(v: Any, n: int, what: str, op: str = "conv2d") -> str | None:
    values = ntuple(v, n, what)
    if len(set(values)) != 1:
        return f"{what}={tuple(values)} (Candle's {op} takes one {what} for both dimensions)"
    return None


def _dilation(cfg: dict[str, Any], n: int) -> int:
    """The dilation Candle's convolution applies itself: one for every dimension. An uneven
    dilation runs at dilation 1 on a kernel dilated by `_dilated`."""
    dilation = ntuple(cfg["dilation"], n, "dilation")
    return dilation[0] if len(set(dilation)) == 1 else 1


def _dilated(kernel: str, cfg: dict[str, Any], n: int) -> str | None:
    """The kernel (given borrowed: `&k`) with zeros between its taps in the dimensions whose
    dilation Candle does not apply, or None when Candle applies it all. Exact: the inputs the
    dilation skips are multiplied by zero."""
    if _dilation(cfg, n) != 1 or n == 1:
        return None
    factors = ntuple(cfg["dilation"], n, "dilation")
    if all(d == 1 for d in factors):
        return None
    expr = kernel
    for i, d in enumerate(factors):
        if d > 1:
            expr = f"&{runtime('dilate')}({expr}, {2 + i}, {d})?"
    return expr[1:]


def _even_dilation(cfg: dict[str, Any]) -> bool:
    """Whether the field holds the module's own weight, not a dilated copy (forward() may read
    it then)."""
    dilation = cfg["dilation"]
    return len(set(dilation if isinstance(dilation, (tuple, list)) else (dilation,))) == 1


def _conv_check(n: int) -> Callable[[dict[str, Any]], list[str]]:
    def check(cfg: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        mode = cfg.get("padding_mode", "zeros")
        require(mode in _PAD_MODES, problems, f"padding_mode={mode!r}")
        return problems

    return check


def _config(rust_type: str, values: dict[str, int], defaults: dict[str, int]) -> str:
    """`Conv1dConfig { padding: 1, ..Default::default() }`, naming the non-default fields."""
    fields = [f"{k}: {v}" for k, v in values.items() if v != defaults[k]]
    if not fields:
        return f"{rust_type}::default()"
    return f"{rust_type} {{ {', '.join(fields)}, ..Default::default() }}"


def _conv_padding(cfg: dict[str, Any], n: int) -> int:
    """The padding Candle's conv applies itself: PyTorch's when it is zeros, the same on both
    sides and in every dimension; otherwise the call pads the input first."""
    pads = _pads(cfg, n)
    if cfg.get("padding_mode", "zeros") == "zeros" and len(set(pads)) == 1 \
            and pads[0][0] == pads[0][1]:
        return pads[0][0]
    return 0


def _conv_stride(cfg: dict[str, Any], n: int) -> int:
    """The stride Candle's conv applies itself: one for every dimension. Uneven strides run at
    stride 1 and the call keeps every stride-th output (exact, at the cost of the skipped
    positions)."""
    strides = ntuple(cfg["stride"], n, "stride")
    return strides[0] if len(set(strides)) == 1 else 1


def _field(name: str, cfg: dict[str, Any], n: int, config: str, shape: tuple[int, ...],
           builder: str, builder_loads: bool = True) -> Field:
    """The field of a convolution: its builder (`candle_nn::conv2d`, the runtime's
    `Conv1d::load`) for a square kernel it applies as it is; else the weight loaded in its shape
    (rectangular), dilated where Candle does not, and the layer built from it."""
    kernel = ntuple(cfg["kernel_size"], n, "kernel_size")
    cout, bias = cfg["out_channels"], _has_bias(cfg)
    loaded = f'vb.get(({", ".join(str(v) for v in shape)}), "weight")?'
    dilated = _dilated(f"&{loaded}", cfg, n)
    weight = dilated or loaded
    if len(set(kernel)) == 1 and dilated is None and builder_loads:
        fn = builder if bias else f"{builder}_no_bias"
        return Field(name, lambda vb: f"{fn}({cfg['in_channels']}, {cout}, "
                     f"{kernel[0]}, {config}, {vb})?")
    bias_arg = f'Some(vb.get({cout}, "bias")?)' if bias else "None"
    return Field(name, lambda vb: "{\n"
                 f"let vb = {vb};\n"
                 f"let weight = {weight};\n"
                 f"{name}::new(weight, {bias_arg}, {config})\n"
                 "}")


# where each layer comes from and how it is loaded (the no-bias form appends `_no_bias`): the
# runtime's Conv1d runs as one matrix product per group on the CPU, split over threads without
# Candle's thread pools
_CONV = {1: ("pycandle_runtime", "Conv1d::load"), 2: ("candle_nn", "candle_nn::conv2d")}


def _conv_field(n: int) -> Callable[[dict[str, Any]], Field]:
    def field(cfg: dict[str, Any]) -> Field:
        kernel = ntuple(cfg["kernel_size"], n, "kernel_size")
        name = f"Conv{n}d"
        config = _config(f"{name}Config", {
            "padding": _conv_padding(cfg, n), "stride": _conv_stride(cfg, n),
            "dilation": _dilation(cfg, n), "groups": cfg["groups"]},
            {"padding": 0, "stride": 1, "dilation": 1, "groups": 1})
        cin, cout = cfg["in_channels"], cfg["out_channels"]
        return _field(name, cfg, n, config, (cout, cin // cfg["groups"], *kernel),
                      _CONV[n][1])

    return field


def _padded_input(x: T, cfg: dict[str, Any], n: int) -> T:
    """The input with the padding Candle's conv does not apply itself."""
    pads = _pads(cfg, n)
    if _conv_padding(cfg, n) or all(p == (0, 0) for p in pads):
        return x
    amounts = [side for pair in reversed(pads) for side in pair]  # F.pad's order: last dim first
    return T(pad(x, amounts, _PAD_MODES[cfg.get("padding_mode", "zeros")]), x.meta)


def _conv(n: int, transposed: bool, cfg: dict[str, Any], x: Any,
          apply: Callable[[T], str]) -> str:
    """A convolution of `x` by `apply` (the layer's `forward`, or the functional form on its
    tensors), with what Candle's convolutions lack done around it: the batch dimension of an
    unbatched input, the padding they do not apply, uneven strides."""
    if transposed and n == 2:
        problems = _transpose_problems(cfg, n)
        if problems:
            raise Unsupported("; ".join(problems))
    if not isinstance(x, T):
        raise Unsupported(f"expected a tensor input, got {x!r}")
    if x.rank not in (n + 1, n + 2):
        raise Unsupported(f"a rank-{x.rank} input to a {n}-d convolution")
    unbatched = x.rank == n + 1
    if unbatched:  # Candle's convolutions take a batch dimension
        x = T(f"{x.name}.unsqueeze(0)?", TensorMeta(
            x.meta.dtype, tuple((1, *shape) for shape in x.meta.shapes)))
    if not transposed:
        x = _padded_input(x, cfg, n)
    elif n == 1 and not unbatched and _uses_col2im(cfg):
        # Candle 0.11's CPU col2im kernel for this configuration multiplies the input's
        # (length, channels) transpose with a batch-broadcast kernel, and its matmul folds
        # that batch wrongly unless those rows are contiguous: hand it a length-major layout
        x = T(f"{x.name}.transpose(1, 2)?.contiguous()?.transpose(1, 2)?", x.meta)
    elif _conv_stride(cfg, n) == 1:
        # uneven strides of a transposed convolution: stride 1 over the input with zeros
        # between its elements (what a stride is to a transposed convolution)
        for i, stride in enumerate(ntuple(cfg["stride"], n, "stride")):
            if stride > 1:
                x = T(f"{runtime('dilate')}({x.borrow}, {2 + i}, {stride})?", x.meta)
    expr = apply(x)
    if not transposed and _conv_stride(cfg, n) == 1:
        for i, stride in enumerate(ntuple(cfg["stride"], n, "stride")):
            if stride > 1:
                expr = f"{runtime('take_every')}(&{expr}, {2 + i}, {stride})?"
    return f"{expr}.squeeze(0)?" if unbatched else expr


def _conv_call(n: int, transposed: bool = False) -> Callable[..., str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        bound = bind("input, output_size=None" if transposed else "input", args, kwargs)
        if bound.get("output_size") is not None:
            raise Unsupported("ConvTranspose with output_size (pass output_padding instead)")
        if transposed and n == 2 and cfg["groups"] > 1:
            # Candle's layer has no groups: the runtime's function on the layer's own tensors
            return _conv(n, transposed, cfg, bound["input"], lambda x: (
                f"{runtime('conv_transpose2d_grouped')}({x.borrow}, {this}.weight(), "
                f"{this}.bias(), *{this}.config(), {cfg['groups']})?"))
        need("candle_nn::Module")
        return _conv(n, transposed, cfg, bound["input"],
                     lambda x: f"{this}.forward({x.borrow})?")

    return call


for _n in (1, 2):
    register_layer(Layer(
        f"torch.nn.Conv{_n}d", _ATTRS, outputs="out", field=_conv_field(_n), call=_conv_call(_n),
        check=_conv_check(_n),
        # `forward` (candle_nn::Module) is named by the call
        uses=(f"{_CONV[_n][0]}::Conv{_n}d", f"candle_nn::Conv{_n}dConfig"),
        params=(("weight", "weight()"),),
        params_as_loaded=_even_dilation,
        doc="stride, padding (also 'same', 'valid', asymmetric), dilation, groups, bias, "
            "every padding_mode, unbatched input"
            + ("; rectangular kernels, uneven strides and dilations" if _n == 2 else ""),
    ))


# --- transposed -----------------------------------------------------------------------------------


def _uses_col2im(cfg: dict[str, Any]) -> bool:
    """Whether Candle's CPU backend takes its col2im path for this ConvTranspose1d."""
    return all(ntuple(cfg[k], 1, k) == (v,) for k, v in (("padding", 0), ("output_padding", 0),
                                                          ("dilation", 1)))


def _transpose_problems(cfg: dict[str, Any], n: int) -> list[str]:
    problems: list[str] = []
    require(cfg.get("padding_mode", "zeros") == "zeros", problems,
            f"padding_mode={cfg.get('padding_mode')!r}")
    if n == 2:
        for k in ("padding", "output_padding"):
            uneven = _uneven(cfg[k], n, k, "conv_transpose2d")
            if uneven:
                problems.append(uneven)
    return problems


def _transpose_field(cfg: dict[str, Any]) -> Field:
    one = {k: ntuple(cfg[k], 1, k)[0] for k in ("kernel_size", "stride", "padding",
                                                 "output_padding", "dilation")}
    config = _config("ConvTranspose1dConfig", {
        "padding": one["padding"], "output_padding": one["output_padding"],
        "stride": one["stride"], "dilation": one["dilation"], "groups": cfg["groups"]},
        {"padding": 0, "output_padding": 0, "stride": 1, "dilation": 1, "groups": 1})
    fn = "conv_transpose1d" if _has_bias(cfg) else "conv_transpose1d_no_bias"
    return Field("ConvTranspose1d", lambda vb: f"candle_nn::{fn}({cfg['in_channels']}, "
                 f"{cfg['out_channels']}, {one['kernel_size']}, {config}, {vb})?")


def _transpose2d_args(cfg: dict[str, Any]) -> dict[str, int]:
    """What Candle's conv_transpose2d applies itself (one value for both dimensions)."""
    return {"padding": ntuple(cfg["padding"], 2, "padding")[0],
            "output_padding": ntuple(cfg["output_padding"], 2, "output_padding")[0],
            "stride": _conv_stride(cfg, 2), "dilation": _dilation(cfg, 2)}


def _transpose2d_field(cfg: dict[str, Any]) -> Field:
    config = _config("ConvTranspose2dConfig", _transpose2d_args(cfg),
                     {"padding": 0, "output_padding": 0, "stride": 1, "dilation": 1})
    kernel = ntuple(cfg["kernel_size"], 2, "kernel_size")
    shape = (cfg["in_channels"], cfg["out_channels"] // cfg["groups"], *kernel)
    return _field("ConvTranspose2d", cfg, 2, config, shape, "candle_nn::conv_transpose2d",
                  builder_loads=cfg["groups"] == 1)


register_layer(Layer(
    "torch.nn.ConvTranspose1d", _ATTRS + ("output_padding",), outputs="out",
    field=_transpose_field, call=_conv_call(1, transposed=True),
    check=lambda cfg: _transpose_problems(cfg, 1),
    uses=("candle_nn::{ConvTranspose1d, ConvTranspose1dConfig}",),
    params=(("weight", "weight()"),),
    doc="stride, padding, output_padding, dilation, groups, bias, unbatched input",
))
register_layer(Layer(
    "torch.nn.ConvTranspose2d", _ATTRS + ("output_padding",), outputs="out",
    field=_transpose2d_field, call=_conv_call(2, transposed=True),
    check=lambda cfg: _transpose_problems(cfg, 2),
    # `forward` (candle_nn::Module) is named by the call: a grouped layer's does not use it
    uses=("candle_nn::{ConvTranspose2d, ConvTranspose2dConfig}",),
    params=(("weight", "weight()"),), params_as_loaded=_even_dilation,
    doc="stride (also uneven), padding, output_padding, dilation (also uneven), groups, bias, "
        "rectangular kernels, unbatched input; not a padding or output_padding that differs "
        "per dimension",
))


# --- functions: F.conv1d, F.conv2d, F.conv_transpose1d/2d on the model's own tensors --------
# (a filterbank built in forward, a subclass's `F.conv1d(x, self.weight, ...)`)

_FUNCTIONAL_SIG = "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1"
_TRANSPOSED_SIG = ("input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, "
                   "dilation=1")


def _functional_cfg(a: dict[str, Any], weight: T, n: int, transposed: bool) -> dict[str, Any]:
    """The arguments as the module's attributes, the kernel's sizes read off the weight."""
    cfg = {k: a[k] for k in ("stride", "padding", "dilation", "groups")}
    cfg["kernel_size"] = tuple(weight.meta.shapes[0][2:])
    cfg["padding_mode"] = "zeros"
    if transposed:
        cfg["output_padding"] = a["output_padding"]
    if isinstance(cfg["padding"], str) and cfg["padding"] not in ("same", "valid"):
        raise Unsupported(f"padding={cfg['padding']!r}")
    return cfg


def _with_bias(expr: str, bias: Any, n: int) -> str:
    if bias is None:
        return expr
    b = tensor(bias, "bias")
    ones = ", ".join(["1"] * n)
    return f"{expr}.broadcast_add(&{b.name}.reshape((1, (), {ones}))?)?"


def _kernel(w: T) -> str:
    """The kernel argument. Candle's CPU convolutions read the kernel as laid out contiguously:
    a computed one (an `expand`, a slice) is made so; a loaded weight already is."""
    return f"&{w.name}" if w.name.startswith("self.") else f"&{w.name}.contiguous()?"


def _functional_conv(n: int, transposed: bool = False) -> Callable[[str, dict[str, Any], Any], str]:
    def emit(spelling: str, a: dict[str, Any], out: Any) -> str:
        w = tensor(a["weight"], "weight")
        if w.rank != n + 2:
            raise Unsupported(f"a rank-{w.rank} weight for a {n}-d convolution")
        cfg = _functional_cfg(a, w, n, transposed)
        dilated = _dilated(w.borrow, cfg, n)
        kernel = _kernel(w) if dilated is None else f"&{dilated}"
        if transposed and n == 2 and cfg["groups"] > 1:
            need("candle_nn::ConvTranspose2dConfig")
            config = _config("ConvTranspose2dConfig", _transpose2d_args(cfg), {
                "padding": 0, "output_padding": 0, "stride": 1, "dilation": 1})
            bias = "None" if a["bias"] is None else f"Some({tensor(a['bias'], 'bias').borrow})"

            def apply(x: T) -> str:
                return (f"{runtime('conv_transpose2d_grouped')}({x.borrow}, {kernel}, {bias}, "
                        f"{config}, {cfg['groups']})?")
        elif transposed and n == 2:
            args = ", ".join(str(v) for v in _transpose2d_args(cfg).values())

            def apply(x: T) -> str:
                return _with_bias(f"{x.name}.conv_transpose2d({kernel}, {args})?", a["bias"], n)
        elif transposed:
            one = {k: ntuple(cfg[k], 1, k)[0] for k in ("padding", "output_padding", "stride",
                                                         "dilation")}
            args = (f"{one['padding']}, {one['output_padding']}, {one['stride']}, "
                    f"{one['dilation']}, {cfg['groups']}")

            def apply(x: T) -> str:
                return _with_bias(f"{x.name}.conv_transpose1d({kernel}, {args})?", a["bias"], n)
        else:
            args = (f"{_conv_padding(cfg, n)}, {_conv_stride(cfg, n)}, {_dilation(cfg, n)}, "
                    f"{cfg['groups']}")

            def apply(x: T) -> str:
                return _with_bias(f"{x.name}.conv{n}d({kernel}, {args})?", a["bias"], n)

        return _conv(n, transposed, cfg, a["input"], apply)

    return emit


for _n in (1, 2):
    register_op(Op(f"conv{_n}d", {f"torch.nn.functional.conv{_n}d": _FUNCTIONAL_SIG,
                                  f"torch.conv{_n}d": _FUNCTIONAL_SIG},
                   _functional_conv(_n),
                   doc="stride, padding (also 'same', 'valid'), dilation, groups, bias"))
register_op(Op("conv_transpose1d", {"torch.nn.functional.conv_transpose1d": _TRANSPOSED_SIG,
                                    "torch.conv_transpose1d": _TRANSPOSED_SIG},
               _functional_conv(1, transposed=True),
               doc="stride, padding, output_padding, dilation, groups, bias"))
register_op(Op("conv_transpose2d", {"torch.nn.functional.conv_transpose2d": _TRANSPOSED_SIG,
                                    "torch.conv_transpose2d": _TRANSPOSED_SIG},
               _functional_conv(2, transposed=True),
               doc="stride (also uneven), padding, output_padding, dilation (also uneven), "
                   "groups, bias"))
