"""Arithmetic: tensor-tensor (with broadcasting) and tensor-scalar, also reflected and in-place."""

from __future__ import annotations

from typing import Any

from typing import Callable

from pycandle.registry.core import Op, T, Unsupported, register_op, rust_float

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


register_op(Op("add", _binary_spellings("add", ("add",)), _binary("add")))
register_op(Op("sub", _binary_spellings("sub", ("sub", "subtract")), _binary("sub")))
register_op(Op("mul", _binary_spellings("mul", ("mul", "multiply")), _binary("mul")))
register_op(Op("div", _binary_spellings("div", ("div", "divide", "true_divide")), _binary("div")))
