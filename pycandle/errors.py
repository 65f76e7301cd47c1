"""Errors that PyCandle reports to the user: one clear message each, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class PyCandleError(Exception):
    """An error with a message meant for the user."""


@dataclass(frozen=True)
class Problem:
    """One thing PyCandle cannot do, with where it comes from and what to do about it."""

    what: str
    source: str | None = None  # "file:line" of the user's code or config
    module: str | None = None  # qualified module path in the model, if any
    hint: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}:")
        if self.module is not None:
            parts.append(f"[{self.module or '<root>'}]")
        parts.append(self.what)
        text = " ".join(parts)
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class UnsupportedError(PyCandleError):
    """The model uses things PyCandle cannot translate; lists every one of them."""

    def __init__(self, model: str, problems: list[Problem]):
        self.model = model
        self.problems = problems
        lines = [f"model '{model}': {len(problems)} unsupported construct(s):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))
