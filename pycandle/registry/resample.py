"""Resampling: F.interpolate and nn.Upsample (with UpsamplingNearest2d, UpsamplingBilinear2d) in
the modes `nearest`, `nearest-exact`, `linear` (1-d), `bilinear` and `bicubic` (2-d), through
the runtime's `resize_nearest`, `resize_nearest_exact` and `resize_linear` (one call per spatial
dimension, the last one first: PyTorch's order of sums for bilinear) and `resize_bicubic` (both
dimensions in one call), the source positions computed from the sizes at run time. A `scale_factor` keeps PyTorch's meaning: the output size is
floor(size * scale) and positions map with 1 / scale, unless `recompute_scale_factor=True`."""

from __future__ import annotations

from typing import Any

from pycandle.registry.core import (
    Dim, Layer, Op, T, Unsupported, bind, chained, is_int, is_number, minus, no_field,
    register_layer, register_op, runtime, rust_float, size_as, tensor, usize_expr,
)

# mode -> (number of spatial dimensions, the runtime function); `nearest` modes take 1 or 2
_MODES = {"nearest": (None, "resize_nearest"), "nearest-exact": (None, "resize_nearest_exact"),
          "linear": (1, "resize_linear"), "bilinear": (2, "resize_linear"),
          "bicubic": (2, "resize_bicubic")}
_SUPPORTED = "PyCandle resamples with nearest, nearest-exact, linear, bilinear and bicubic"
_WHY = {"area": "F.adaptive_avg_pool1d/2d to the output size is supported"}


def mode_problems(mode: Any, antialias: Any = False) -> list[str]:
    """What the port cannot do, whatever the input."""
    problems = []
    if mode not in _MODES:
        why = _WHY.get(mode, _SUPPORTED) if isinstance(mode, str) else _SUPPORTED
        problems.append(f"mode={mode!r} ({why})")
    if antialias:
        problems.append("antialias=True")
    return problems


def _per_dim(v: Any, n: int, what: str) -> list[Any]:
    items = list(v) if isinstance(v, (tuple, list)) else [v] * n
    if len(items) != n:
        raise Unsupported(f"{what}={v!r} for {n} spatial dimension(s)")
    return items


def _scale_literal(s: Any) -> str:
    if not is_number(s) or s <= 0:
        raise Unsupported(f"scale_factor {s!r} (expected a positive number)")
    return rust_float(float(s))


def resample(x: Any, size: Any, scale_factor: Any, mode: Any, align_corners: Any,
             recompute_scale_factor: Any, antialias: Any) -> Any:
    """Rust for `F.interpolate(x, ...)` with the arguments as PyTorch binds them."""
    x = tensor(x)
    problems = mode_problems(mode, antialias)
    if problems:
        raise Unsupported("; ".join(problems))
    n = x.rank - 2
    dims, fn = _MODES[mode]
    if n not in (1, 2) or (dims is not None and n != dims):
        raise Unsupported(f"mode={mode!r} on a rank-{x.rank} input")
    if (size is None) == (scale_factor is None):
        raise Unsupported("exactly one of size and scale_factor must be given")
    if mode.startswith("nearest") and align_corners is not None:
        raise Unsupported(f"align_corners with mode={mode!r}")
    resize = runtime("Resize")
    targets: list[str | None] = []
    if size is not None:
        for s in _per_dim(size, n, "size"):
            if not (is_int(s) or isinstance(s, Dim)):
                raise Unsupported(f"size {s!r} (expected integers)")
            targets.append(f"{resize}::To({usize_expr(s)})")
    else:
        for i, s in enumerate(_per_dim(scale_factor, n, "scale_factor")):
            scale = _scale_literal(s)
            if recompute_scale_factor:  # the size from the scale, positions from the sizes
                length = size_as(Dim(x.dim(2 + i), ()), "f64")
                targets.append(f"{resize}::To(({length} * {scale}) as usize)")
            elif float(s) == 1.0:  # the same size, positions mapped one to one: no call
                targets.append(None)
            else:
                targets.append(f"{resize}::By({scale})")
    if fn == "resize_bicubic":  # both dimensions in one call (a scale of 1 is the identity)
        height, width = (t or f"{resize}::By(1.0)" for t in targets)
        aligned = "true" if align_corners else "false"
        return chained(x, f"{runtime(fn)}({x.borrow}, {height}, {width}, {aligned})?")
    expr = x.name
    extra = f", {'true' if align_corners else 'false'}" if fn == "resize_linear" else ""
    for i in reversed(range(n)):
        if targets[i] is None:
            continue
        where = x.borrow if expr == x.name else f"&{expr}"
        expr = f"{runtime(fn)}({where}, {minus(n - i)}, {targets[i]}{extra})?"
    return chained(x, expr)


_SIG = ("input, size=None, scale_factor=None, mode='nearest', align_corners=None, "
        "recompute_scale_factor=None, antialias=False")


def _interpolate(spelling: str, a: dict[str, Any], out: Any) -> Any:
    return resample(a["input"], a["size"], a["scale_factor"], a["mode"], a["align_corners"],
                    a["recompute_scale_factor"], a["antialias"])


register_op(Op("interpolate", {"torch.nn.functional.interpolate": _SIG}, _interpolate,
               doc="modes nearest, nearest-exact (1-d, 2-d), linear (1-d), bilinear and bicubic "
                   "(2-d) with align_corners; size (also from shapes) or scale_factor, "
                   "recompute_scale_factor"))


def _upsample_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    x = bind("input", args, kwargs)["input"]
    if not isinstance(x, T):
        raise Unsupported(f"expected a tensor input, got {x!r}")
    return resample(x, cfg["size"], cfg["scale_factor"], cfg["mode"], cfg["align_corners"],
                    cfg.get("recompute_scale_factor"), False)


for _name in ("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"):
    register_layer(Layer(
        f"torch.nn.{_name}", ("size", "scale_factor", "mode", "align_corners",
                              "recompute_scale_factor"),
        outputs="out", field=no_field, call=_upsample_call,
        check=lambda cfg: mode_problems(cfg["mode"]),
        doc="as F.interpolate: nearest, nearest-exact, linear, bilinear, bicubic, size or "
            "scale_factor"))
