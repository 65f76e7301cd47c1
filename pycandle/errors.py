"""Errors that PyCandle reports to the user: one clear message each, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass, replace


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


def grouped(problems: list[Problem], uses: list[int]) -> list[Problem]:
    """One entry per construct: the same problem at the same source line (a layer built in a
    loop, a function called from a block used several times) is reported once, with how many
    times it occurs and how many later results depend on it."""
    groups: dict[tuple[str, str | None, str | None], list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault((p.what, p.source, p.hint), []).append(i)
    out = []
    for (what, _, _), members in groups.items():
        first = problems[members[0]]
        modules = [problems[i].module for i in members if problems[i].module is not None]
        module = first.module
        if len(set(modules)) > 1:
            module = f"{modules[0]} and {len(set(modules)) - 1} more"
        count, used = len(members), sum(uses[i] for i in members)
        if count == 1:
            note = f" (and {used} use{'s' * (used != 1)} of its result)" if used else ""
        else:
            note = f" ({count} times" + (
                f", and {used} use{'s' * (used != 1)} of their results)" if used else ")")
        out.append(replace(first, what=what + note, module=module))
    return out
