"""The parity results as one self-contained HTML page.

A summary (models, trace cases passed and failed, the first diverging layer of each failing
case), then per model and trace case a chart of every entry's max absolute error on a log scale,
in check order (the layers in forward order, then the model end to end), coloured pass or fail,
with the absolute tolerance; and the table of entries. Inline CSS and SVG: no script, nothing
fetched. The same results always render to the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

if TYPE_CHECKING:
    from pycandle.parity import CaseResult

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # layer names come from the user's models
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

# Chart geometry in SVG user units; the chart scales to the page's width.
WIDTH = 1000
KIND_WIDTH = 56  # the entry's kind, then its layer and output, left of the plot
LABEL_WIDTH = 300
VALUE_WIDTH = 90  # the number, right of the bar
ROW = 20
BAR = 14
TOP = 28  # the decade labels, above the bars
BOTTOM = 18  # the tolerance's label, below them
MAX_LABEL = 32  # characters; longer names keep their end (the full name is in the tooltip)
MIN_BAR = 2  # an error of exactly 0 still shows its colour


def _sci(value: float | None) -> str:
    return "non-finite" if value is None else f"{value:.2e}"


def _shape(entry: dict[str, Any]) -> str:
    actual, expected = ("×".join(map(str, entry[key])) or "scalar"
                        for key in ("shape", "expected_shape"))
    return actual if actual == expected else f"{actual} ≠ {expected}"


def _label(entry: dict[str, Any]) -> str:
    text = f"{entry['layer']} · {entry['output']}"
    return text if len(text) <= MAX_LABEL else "…" + text[-(MAX_LABEL - 1):]


@dataclass(frozen=True)
class Bar:
    entry: dict[str, Any]
    y: float
    length: float
    label: str

    @property
    def status(self) -> str:
        return "pass" if self.entry["pass"] else "fail"


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    height: float
    left: float  # where the plot (the log axis) starts
    bars: list[Bar]
    ticks: list[Tick]
    tolerance_x: float | None  # where atol is on the axis, when known


def chart(result: CaseResult) -> Chart:
    """One bar per entry, its length log10(max abs error) on decades spanning the entries' errors
    and atol; a non-finite error fills the plot."""
    errors = [e["max_abs"] for e in result.entries]
    known = [v for v in errors + [result.atol] if v is not None and v > 0]
    lo = min(math.floor(math.log10(v)) for v in known) - 1 if known else -8
    hi = max(max(math.ceil(math.log10(v)) for v in known) if known else 0, lo + 1)
    left, right = KIND_WIDTH + LABEL_WIDTH, WIDTH - VALUE_WIDTH

    def x(value: float) -> float:
        return round(left + (math.log10(value) - lo) / (hi - lo) * (right - left), 1)

    def length(value: float | None) -> float:
        if value is None:
            return right - left
        return max(round(x(value) - left, 1), MIN_BAR) if value > 0 else MIN_BAR

    bars = [Bar(e, TOP + i * ROW, length(e["max_abs"]), _label(e))
            for i, e in enumerate(result.entries)]
    step = math.ceil((hi - lo) / 10)
    ticks = [Tick(x(10.0 ** k), f"1e{k}") for k in range(lo, hi + 1, step)]
    tolerance = x(result.atol) if result.atol else None  # atol 0 is off a log axis
    return Chart(TOP + len(bars) * ROW + BOTTOM, left, bars, ticks, tolerance)


@dataclass(frozen=True)
class CaseView:
    result: CaseResult
    chart: Chart | None  # None without entries

    @property
    def status(self) -> str:
        if self.result.error is not None:
            return "error"
        return "pass" if self.result.passed else "fail"

    @property
    def anchor(self) -> str:
        return f"{self.result.model}-case{self.result.case}"


def render(results: list[CaseResult]) -> str:
    """The page, for results in the order `pycandle parity` produced them."""
    models: dict[str, list[CaseView]] = {}
    for r in results:
        models.setdefault(r.model, []).append(CaseView(r, chart(r) if r.entries else None))
    cases = [c for views in models.values() for c in views]
    return _env.get_template("parity_report.html.j2").render(
        models=models, cases=cases, passed=sum(c.status == "pass" for c in cases),
        width=WIDTH, kind_width=KIND_WIDTH, bar_height=BAR, row=ROW, top=TOP, sci=_sci,
        shape=_shape)
