"""The one place where text becomes Rust: string literals, identifiers and numbers.

Every string that reaches generated Rust from models.yaml or a manifest goes through
`rust_str` (inside a string literal) or `ident` (checked, never escaped into code); numbers
through `rust_float`/`rust_int`. No torch here.
"""

from __future__ import annotations

import math
import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RustTextError(ValueError):
    """A value that cannot appear in generated Rust where it was asked to."""


def rust_str(text: str) -> str:
    """`text` as a Rust string literal (with quotes), whatever it contains."""
    if not isinstance(text, str):
        raise RustTextError(f"expected a string, got {type(text).__name__}")
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable() and ch not in "\u2028\u2029":
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def ident(text: str, what: str = "name") -> str:
    """`text` unchanged when it is a plain identifier; anything else is refused."""
    if not isinstance(text, str) or not _IDENT.fullmatch(text):
        raise RustTextError(f"{what} {text!r} is not a plain identifier")
    return text


def rust_int(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RustTextError(f"expected an integer, got {value!r}")
    return str(value)


def rust_float(value: float) -> str:
    """A float literal that reads as PyTorch's value (`1.0`, `0.1`, `f64::NAN`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RustTextError(f"expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return "f64::NAN"
    if math.isinf(value):
        return "f64::INFINITY" if value > 0 else "f64::NEG_INFINITY"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)
