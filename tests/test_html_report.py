"""The HTML parity report, as headless Chromium shows it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pycandle.html_report import render
from pycandle.parity import CaseResult

CHROMIUM = os.environ.get("PYCANDLE_CHROMIUM") or shutil.which("chromium")
# Without these, Chromium reaches for the network (updates, sync, field trials).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SCRIPT = "<script>alert(1)</script>"
PASS_RGB, FAIL_RGB = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)  # the page's --pass and --fail


def entry(layer: str, max_abs: float | None, *, kind: str = "layer", output: str = "0",
          ok: bool = True, note: str | None = None) -> dict:
    return {"kind": kind, "layer": layer, "output": output, "shape": [2, 8],
            "expected_shape": [2, 8], "numel": 16, "mismatched": 0 if ok else 16,
            "max_abs": max_abs, "max_rel": None if max_abs is None else 10 * max_abs,
            "cosine": None if max_abs is None else 1 - max_abs, "pass": ok, "note": note}


def results() -> list[CaseResult]:
    def mlp(case: int) -> CaseResult:
        return CaseResult("mlp", case, [entry("0", 2e-7), entry("1", 0.0), entry("2", 3e-6),
                                        entry("mlp", 4e-6, kind="model")], atol=1e-5, rtol=1e-4)

    return [
        mlp(0),
        mlp(1),
        CaseResult("tagger", 0, [
            entry(SCRIPT, 1e-7),
            entry("encoder", 5e-7, output="h_n"),
            entry("decoder.lstm", 3e-2, ok=False),  # the first to diverge
            entry("head", None, ok=False, note="NaN in the actual values"),
            entry("tagger", None, kind="model", ok=False),
        ], atol=1e-5, rtol=1e-4),
        CaseResult("tagger", 1, [entry(SCRIPT, 1e-7), entry("encoder", 6e-7, output="h_n"),
                                 entry("decoder.lstm", 8e-6), entry("head", 9e-6),
                                 entry("tagger", 9e-6, kind="model")], atol=1e-5, rtol=1e-4),
        CaseResult("broken", 0, error="thread 'broken::case0' panicked: weights not found"),
    ]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.iter() if e.tag == tag
                and (cls is None or cls in e.attrs.get("class", "").split())]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)


class TreeBuilder(HTMLParser):
    """Chromium's serialised DOM as a tree: every element but the void ones has an end tag."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, (tag, self.stack[-1].tag)
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB of every pixel of an 8-bit, non-interlaced RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    pixels, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:  # Up
            line = bytearray((x + b) & 255 for x, b in zip(line, prev))
        elif kind == 3:  # Average
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + (a + prev[i]) // 2) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a, b = line[i - bpp] if i >= bpp else 0, prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [bytes(line[i:i + 3]) for i in range(0, stride, bpp)]
        prev = line
    return width, height, pixels


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail("Chromium is required to check the HTML report: install Debian's package "
                    "(`apt-get install -y chromium`; `python3 -m nox -s tests` does it) or set "
                    "PYCANDLE_CHROMIUM to a Chromium binary")
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp)  # a fresh one per run
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    html = tmp / "parity.html"
    html.write_text(render(results()))
    dom = chromium(tmp, "--dump-dom", html.as_uri()).stdout
    screenshot = tmp / "parity.png"
    chromium(tmp, f"--screenshot={screenshot}", "--window-size=1200,2000", html.as_uri())
    return html.read_text(), TreeBuilder(dom).root, screenshot


def test_every_model_and_case_has_a_section_and_every_entry_a_bar(page):
    _, dom, _ = page
    sections = {(s.attrs["data-model"], s.attrs["data-case"]): s
                for s in dom.find_all("section", "case")}
    assert {k: s.attrs["data-status"] for k, s in sections.items()} == {
        ("mlp", "0"): "pass", ("mlp", "1"): "pass", ("tagger", "0"): "fail",
        ("tagger", "1"): "pass", ("broken", "0"): "error"}
    for r in results():
        bars = sections[(r.model, str(r.case))].find_all("rect", "bar")
        assert [(b.attrs["data-layer"], b.attrs["data-status"]) for b in bars] == \
            [(e["layer"], "pass" if e["pass"] else "fail") for e in r.entries]
    assert "panicked: weights not found" in sections[("broken", "0")].text
    # the tolerance line in each chart, the non-finite entries drawn as such
    assert len(dom.find_all("line", "tolerance")) == 4
    nonfinite = dom.find_all("rect", "nonfinite")
    assert [b.attrs["data-layer"] for b in nonfinite] == ["head", "tagger"]
    totals = next(e for e in dom.iter() if e.attrs.get("id") == "totals")
    assert (totals.attrs["data-passed"], totals.attrs["data-failed"]) == ("3", "2")


def test_the_summary_names_the_first_diverging_layer(page):
    _, dom, _ = page
    rows = {(r.attrs["data-model"], r.attrs["data-case"]): r
            for r in dom.find_all("table", "summary")[0].find_all("tr") if "data-model" in r.attrs}
    diverging = {k: r.find_all("td", "diverging") for k, r in rows.items()}
    assert " ".join(diverging[("tagger", "0")][0].text.split()) == \
        "layer decoder.lstm (output 0)"
    assert diverging[("broken", "0")][0].text.startswith("no report: thread 'broken::case0'")
    assert {k for k, cells in diverging.items() if cells} == {("tagger", "0"), ("broken", "0")}
    # the max abs column: the first diverging entry's error, or a passing case's largest one
    for key, row in rows.items():
        cells = row.find_all("td", "num")
        assert bool(cells and cells[0].text.strip()) == (key != ("broken", "0")), key


def test_layer_names_are_text_not_markup(page):
    source, dom, _ = page
    assert not dom.find_all("script")
    assert SCRIPT not in source
    labels = [e.text for e in dom.find_all("code")]
    assert labels.count(SCRIPT) == 2  # in the two tables of the tagger's entries
    assert {b.attrs["data-layer"] for b in dom.find_all("rect", "bar")} >= {SCRIPT}


def test_the_page_is_self_contained(page):
    source, dom, _ = page
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", source)
    assert links and all(link.startswith("#") for link in links), links
    ids = {e.attrs["id"] for e in dom.iter() if "id" in e.attrs}
    assert {link[1:] for link in links} <= ids
    assert "http" not in source and "@import" not in source and "url(" not in source


def test_the_screenshot_shows_the_charts(page):
    *_, screenshot = page
    width, height, pixels = png_pixels(screenshot.read_bytes())
    assert (width, height) == (1200, 2000)
    colours = Counter(pixels)
    assert len(colours) > 50, "the page rendered blank"
    # pass and fail bars, each at least a few hundred pixels of its colour
    assert colours[bytes(PASS_RGB)] > 500 and colours[bytes(FAIL_RGB)] > 500, \
        (colours[bytes(PASS_RGB)], colours[bytes(FAIL_RGB)])


def test_rendering_is_deterministic():
    first = render(results())
    assert render(results()).encode() == first.encode()
    assert first.count('<rect class="bar ') == sum(len(r.entries) for r in results())
