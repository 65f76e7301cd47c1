"""Normalisation layers: nn.LayerNorm, nn.GroupNorm via candle_nn; nn.BatchNorm1d/2d (eval) via the
runtime's `BatchNorm` (candle_nn's layer, evaluated in one pass with terms computed at load)."""

from __future__ import annotations

import math
from typing import Any, Callable

from pycandle.registry.core import (
    Field, Layer, Op, T, Unsupported, int_arg, minus, need, one_tensor, register_layer, register_op,
    require, rust_float, shape_tuple, tensor,
)


def _eps(cfg: dict[str, Any]) -> str:
    return rust_float(float(cfg["eps"]))


# --- LayerNorm ------------------------------------------------------------------------------------


def _normalized(cfg: dict[str, Any]) -> list[int]:
    shape = cfg["normalized_shape"]
    return list(shape) if isinstance(shape, (tuple, list)) else [shape]


def _layer_norm_field(cfg: dict[str, Any]) -> Field:
    dims = _normalized(cfg)
    size, eps = math.prod(dims), _eps(cfg)
    affine, bias = cfg["elementwise_affine"], cfg.get("bias") is not None
    if len(dims) == 1 and affine:
        fn = "layer_norm" if bias else "layer_norm_no_bias"
        return Field("LayerNorm", lambda vb: f"candle_nn::{fn}({size}, {eps}, {vb})?")
    if not affine:  # nothing to load: a unit scale and no shift
        return Field("LayerNorm", lambda vb: "{\n"
                     f"let vb = {vb};\n"
                     f"LayerNorm::new_no_bias(Tensor::ones({size}, vb.dtype(), vb.device())?, "
                     f"{eps})\n"
                     "}")
    # over several trailing dimensions: Candle normalises the last one, so the call flattens
    # them and the parameters are flattened alike
    shape = shape_tuple([str(d) for d in dims])
    lines = [f'let weight = vb.get({shape}, "weight")?.flatten_all()?;']
    if bias:
        lines.append(f'let bias = vb.get({shape}, "bias")?.flatten_all()?;')
        lines.append(f"LayerNorm::new(weight, bias, {eps})")
    else:
        lines.append(f"LayerNorm::new_no_bias(weight, {eps})")
    return Field("LayerNorm", lambda vb: "\n".join(["{", f"let vb = {vb};", *lines, "}"]))


def _layer_norm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    dims = _normalized(cfg)
    if x.rank < len(dims) or any(
            tuple(s[x.rank - len(dims):]) != tuple(dims) for s in x.meta.shapes):
        raise Unsupported(f"normalized_shape {tuple(dims)} on an input whose trailing dimensions "
                          "differ")
    if len(dims) == 1:
        return f"{this}.forward({x.borrow})?"
    return (f"{this}.forward(&{x.name}.flatten_from({minus(len(dims))})?)?"
            f".reshape({x.name}.shape())?")


register_layer(Layer(
    "torch.nn.LayerNorm", ("normalized_shape", "eps", "elementwise_affine", "bias"),
    outputs="out", field=_layer_norm_field, call=_layer_norm_call,
    uses=("candle_nn::LayerNorm",), call_uses=("candle_nn::Module",),
    doc="eps, with or without affine parameters and bias, over the last dim(s)",
))

# --- GroupNorm ------------------------------------------------------------------------------------


def _group_norm_field(cfg: dict[str, Any]) -> Field:
    g, c, eps = cfg["num_groups"], cfg["num_channels"], _eps(cfg)
    if cfg["affine"]:
        return Field("GroupNorm", lambda vb: f"candle_nn::group_norm({g}, {c}, {eps}, {vb})?")
    return Field("GroupNorm", lambda vb: "{\n"
                 f"let vb = {vb};\n"
                 f"let ones = Tensor::ones({c}, vb.dtype(), vb.device())?;\n"
                 f"GroupNorm::new(ones.clone(), ones.zeros_like()?, {c}, {g}, {eps})?\n"
                 "}")


def _group_norm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    x = one_tensor(args, kwargs)
    if x.rank < 2:
        raise Unsupported(f"GroupNorm on a rank-{x.rank} input")
    if x.rank == 2:  # (N, C): Candle's GroupNorm wants a spatial dimension
        return f"{this}.forward(&{x.name}.unsqueeze(2)?)?.squeeze(2)?"
    return f"{this}.forward({x.borrow})?"


register_layer(Layer(
    "torch.nn.GroupNorm", ("num_groups", "num_channels", "eps", "affine"), outputs="out",
    field=_group_norm_field, call=_group_norm_call,
    uses=("candle_nn::GroupNorm",), call_uses=("candle_nn::Module",),
    doc="eps, with or without affine parameters, any rank >= 2",
))

# --- BatchNorm ------------------------------------------------------------------------------------


def _batch_norm_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    require(cfg["track_running_stats"], problems,
            "track_running_stats=False (it normalises with each batch's own statistics, "
            "also in eval mode)")
    return problems


def _batch_norm_field(cfg: dict[str, Any]) -> Field:
    c, eps = cfg["num_features"], _eps(cfg)
    if cfg["affine"]:
        return Field("BatchNorm", lambda vb: f"BatchNorm::load({c}, {eps}, {vb})?")
    config = f"candle_nn::BatchNormConfig {{ eps: {eps}, affine: false, ..Default::default() }}"
    return Field("BatchNorm", lambda vb: f"BatchNorm::load({c}, {config}, {vb})?")


def _batch_norm_call(ranks: tuple[int, ...]) -> Callable[..., str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        x = one_tensor(args, kwargs)
        if x.rank not in ranks:
            expected = " or ".join(map(str, ranks))
            raise Unsupported(f"a rank-{x.rank} input (expected rank {expected})")
        return f"{this}.forward_t({x.borrow}, false)?"  # eval: the running statistics

    return call


for _n, _ranks in ((1, (2, 3)), (2, (4,))):
    register_layer(Layer(
        f"torch.nn.BatchNorm{_n}d",
        ("num_features", "eps", "momentum", "affine", "track_running_stats"), outputs="out",
        field=_batch_norm_field, call=_batch_norm_call(_ranks), check=_batch_norm_check,
        uses=("pycandle_runtime::BatchNorm",), call_uses=("candle_nn::ModuleT",),
        doc="eval mode with the running statistics, with or without affine parameters",
    ))

# --- InstanceNorm ---------------------------------------------------------------------------------
# Statistics of each sample and channel over the spatial dimensions: a GroupNorm with one group
# per channel. With `track_running_stats`, eval mode normalises with the running statistics:
# a BatchNorm in eval, with the same parameter and buffer names.


def _instance_norm_field(cfg: dict[str, Any]) -> Field:
    c = cfg["num_features"]
    if cfg["track_running_stats"]:
        need("pycandle_runtime::BatchNorm")
        return _batch_norm_field(cfg)
    need("candle_nn::GroupNorm")
    return _group_norm_field({"num_groups": c, "num_channels": c, "eps": cfg["eps"],
                              "affine": cfg["affine"]})


def _instance_norm_call(n: int) -> Callable[..., str]:
    def call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
        x = one_tensor(args, kwargs)
        if x.rank not in (n + 1, n + 2):
            raise Unsupported(f"InstanceNorm{n}d on a rank-{x.rank} input (expected rank "
                              f"{n + 1} or {n + 2})")
        running = cfg["track_running_stats"]
        need("candle_nn::ModuleT" if running else "candle_nn::Module")
        method = "forward_t({}, false)" if running else "forward({})"
        if x.rank == n + 1:  # unbatched (C, ...): one sample
            return f"{this}.{method.format(f'&{x.name}.unsqueeze(0)?')}?.squeeze(0)?"
        return f"{this}.{method.format(x.borrow)}?"

    return call


for _n in (1, 2):
    register_layer(Layer(
        f"torch.nn.InstanceNorm{_n}d",
        ("num_features", "eps", "momentum", "affine", "track_running_stats"), outputs="out",
        field=_instance_norm_field, call=_instance_norm_call(_n),
        doc="with or without affine parameters; track_running_stats: the running statistics "
            "in eval",
    ))

# --- RMSNorm --------------------------------------------------------------------------------------

# eps=None: PyTorch takes torch.finfo(dtype).eps of the input, which is the model's dtype
_MACHINE_EPS = ("match vb.dtype() {\n"
                "DType::F16 => 0.0009765625,\n"
                "DType::BF16 => 0.0078125,\n"
                "DType::F64 => f64::EPSILON,\n"
                "_ => f64::from(f32::EPSILON),\n"
                "}")
_FINFO_EPS = {"float32": "f64::from(f32::EPSILON)", "float64": "f64::EPSILON",
              "float16": "0.0009765625", "bfloat16": "0.0078125"}


def _rms_norm_field(cfg: dict[str, Any]) -> Field:
    dims = _normalized(cfg)
    size = math.prod(dims)
    lines = []
    if cfg["eps"] is None:
        need("candle_core::DType")
        lines.append(f"let eps = {_MACHINE_EPS};")
        eps = "eps"
    else:
        eps = _eps(cfg)
    if not cfg["elementwise_affine"]:
        lines.append(f"RmsNorm::new(Tensor::ones({size}, vb.dtype(), vb.device())?, {eps})")
    elif len(dims) == 1 and not lines:
        return Field("RmsNorm", lambda vb: f"candle_nn::rms_norm({size}, {eps}, {vb})?")
    else:  # several trailing dimensions: the weight flattened, as the call flattens the input
        shape = shape_tuple([str(d) for d in dims])
        flat = ".flatten_all()?" if len(dims) > 1 else ""
        lines.append(f'RmsNorm::new(vb.get({shape}, "weight")?{flat}, {eps})')
    return Field("RmsNorm", lambda vb: "\n".join(["{", f"let vb = {vb};", *lines, "}"]))


def _rms_norm_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    return _layer_norm_call(cfg, this, args, kwargs)


register_layer(Layer(
    "torch.nn.RMSNorm", ("normalized_shape", "eps", "elementwise_affine"), outputs="out",
    field=_rms_norm_field, call=_rms_norm_call,
    uses=("candle_nn::RmsNorm",), call_uses=("candle_nn::Module",),
    doc="eps (None: the dtype's machine epsilon), with or without a weight, over the last "
        "dim(s)",
))


# --- torch._weight_norm: a weight-normed parameter read in forward (a parametrized subclass) ------


def _weight_norm_op(spelling: str, a: dict[str, Any], out: Any) -> str:
    """`v * (g / ||v||)`, the norm over every dimension but `dim` (all of them for -1)."""
    v, g = tensor(a["v"], "v"), tensor(a["g"], "g")
    dim = int_arg(a["dim"], "dim")
    if dim == -1:
        norm = f"{v.name}.sqr()?.sum_all()?.sqrt()?"
    else:
        d = v.norm_dim(dim)
        others = [k for k in range(v.rank) if k != d]
        if not others:
            norm = f"{v.name}.abs()?"
        else:
            dims = str(others[0]) if len(others) == 1 else shape_tuple([str(k) for k in others])
            norm = f"{v.name}.sqr()?.sum_keepdim({dims})?.sqrt()?"
    return f"{v.name}.broadcast_mul(&{g.name}.broadcast_div(&{norm})?)?"


register_op(Op("_weight_norm", {"torch._weight_norm": "v, g, dim=0"}, _weight_norm_op,
               doc="weight normalisation computed in forward (a parametrized module of yours)"))


# --- F.layer_norm on the model's own tensors (a LayerNorm subclass's forward, a computed scale) ---


def _trailing_dims(x: T, shape: Any) -> list[int]:
    """A function's `normalized_shape`, checked against the input's trailing dimensions."""
    dims = [int_arg(d, "normalized_shape") for d in (shape if isinstance(shape, (tuple, list))
                                                      else [shape])]
    if x.rank < len(dims) or any(tuple(s[x.rank - len(dims):]) != tuple(dims)
                                 for s in x.meta.shapes):
        raise Unsupported(f"normalized_shape {tuple(dims)} on an input whose trailing "
                          "dimensions differ")
    return dims


def _flat(v: Any, what: str, dims: list[int]) -> str:
    """A per-element parameter for the last dims, flattened as the input is."""
    t = tensor(v, what)
    return f"{t.name}.flatten_all()?" if len(dims) > 1 else f"{t.name}.clone()"


def _ones(x: T, dims: list[int]) -> str:
    need("candle_core::Tensor")
    return f"Tensor::ones({math.prod(dims)}, {x.name}.dtype(), {x.name}.device())?"


def _over_trailing(norm: str, x: T, dims: list[int]) -> str:
    """`norm` (a candle_nn LayerNorm or RmsNorm, which normalise the last dimension) over the
    last `dims` of `x`: flattened into one, and back."""
    need("candle_nn::Module")
    if len(dims) == 1:
        return f"{norm}.forward({x.borrow})?"
    return (f"{norm}.forward(&{x.name}.flatten_from({minus(len(dims))})?)?"
            f".reshape({x.name}.shape())?")


def _functional_layer_norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    dims = _trailing_dims(x, a["normalized_shape"])
    eps = rust_float(float(a["eps"]))
    if a["weight"] is None:
        if a["bias"] is not None:
            raise Unsupported("F.layer_norm with a bias and no weight")
        weight = _ones(x, dims)
    else:
        weight = _flat(a["weight"], "weight", dims)
    if a["bias"] is None:
        norm = f"candle_nn::LayerNorm::new_no_bias({weight}, {eps})"
    else:
        norm = f"candle_nn::LayerNorm::new({weight}, {_flat(a['bias'], 'bias', dims)}, {eps})"
    return _over_trailing(norm, x, dims)


register_op(Op("layer_norm",
               {"torch.nn.functional.layer_norm":
                "input, normalized_shape, weight=None, bias=None, eps=1e-05",
                "torch.layer_norm": "input, normalized_shape, weight=None, bias=None, eps=1e-05"},
               _functional_layer_norm, doc="over the last dim(s), with or without weight and bias"))


# --- F.group_norm, F.batch_norm (eval) on the model's own tensors (asteroid's BatchNorm subclass) -


def _channels(x: T, what: str) -> int:
    """The channel count (dimension 1) of an input of rank 2 or more, one in every trace case."""
    if x.rank < 2:
        raise Unsupported(f"{what} of a rank-{x.rank} input")
    channels = {s[1] for s in x.meta.shapes}
    if len(channels) != 1:
        raise Unsupported(f"{what} of an input whose channel count differs between trace cases")
    return channels.pop()


def _per_channel(a: dict[str, Any], name: str, c: int, x: T, fill: str | None) -> str:
    """A per-channel tensor argument (cloned: reference-counted, no copy), or `fill` (`ones`,
    `zeros`) made in the input's dtype where the call passes none."""
    v = a[name]
    if v is None:
        if fill is None:
            raise Unsupported(f"{name} is None")
        need("candle_core::Tensor")
        return f"Tensor::{fill}({c}, {x.name}.dtype(), {x.name}.device())?"
    t = tensor(v, name)
    if any(math.prod(s) != c for s in t.meta.shapes):
        raise Unsupported(f"'{name}' of {t.meta.shapes[0]} (expected {c} values)")
    return f"{t.name}.clone()"


def _functional_group_norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    groups = int_arg(a["num_groups"], "num_groups")
    c = _channels(x, "group_norm")
    weight = _per_channel(a, "weight", c, x, "ones")
    bias = _per_channel(a, "bias", c, x, "zeros")
    layer = f"candle_nn::GroupNorm::new({weight}, {bias}, {c}, {groups}, {_eps(a)})?"
    need("candle_nn::Module")
    return _group_norm_call({}, layer, (x,), {})


def _functional_batch_norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    if a["training"]:
        raise Unsupported("batch_norm with training=True (the batch's own statistics)",
                          hint="pass training=self.training: the model is traced in eval mode")
    c = _channels(x, "batch_norm")
    stats = (f"{_per_channel(a, 'running_mean', c, x, None)}, "
             f"{_per_channel(a, 'running_var', c, x, None)}")
    if a["weight"] is None and a["bias"] is None:
        layer = f"candle_nn::BatchNorm::new_no_bias({c}, {stats}, {_eps(a)})?"
    else:
        weight = _per_channel(a, "weight", c, x, "ones")
        bias = _per_channel(a, "bias", c, x, "zeros")
        layer = f"candle_nn::BatchNorm::new({c}, {stats}, {weight}, {bias}, {_eps(a)})?"
    need("candle_nn::ModuleT")
    # Candle's BatchNorm takes (N, C, ...) of any rank from 2, as PyTorch's function does
    return _batch_norm_call(tuple(range(2, 9)))({}, layer, (x,), {})


register_op(Op("group_norm", {
    "torch.nn.functional.group_norm": "input, num_groups, weight=None, bias=None, eps=1e-05"},
    _functional_group_norm, doc="weight and bias optional, any rank >= 2"))
register_op(Op("batch_norm", {
    "torch.nn.functional.batch_norm": "input, running_mean, running_var, weight=None, "
                                      "bias=None, training=False, momentum=0.1, eps=1e-05"},
    _functional_batch_norm,
    doc="eval (training=False) with running statistics; weight and bias optional"))


def _functional_rms_norm(spelling: str, a: dict[str, Any], out: Any) -> str:
    x = tensor(a["input"])
    dims = _trailing_dims(x, a["normalized_shape"])
    if x.meta.dtype not in _FINFO_EPS:
        raise Unsupported(f"rms_norm of a {x.meta.dtype} tensor")
    eps = _FINFO_EPS[x.meta.dtype] if a["eps"] is None else rust_float(float(a["eps"]))
    weight = _ones(x, dims) if a["weight"] is None else _flat(a["weight"], "weight", dims)
    return _over_trailing(f"candle_nn::RmsNorm::new({weight}, {eps})", x, dims)


register_op(Op("rms_norm", {
    "torch.nn.functional.rms_norm": "input, normalized_shape, weight=None, eps=None",
    "torch.rms_norm": "input, normalized_shape, weight=None, eps=None"},
    _functional_rms_norm, doc="over the last dim(s), with or without weight, eps=None"))
