"""Generated locals take the Python variable names of the source: the value a statement assigns
is named after its target (`h = self.proj(x)`), tuple unpacking names each part
(`out, (h_n, _) = self.lstm(h)`), a loop carries its variable (`out`), a pass-through op on
the right (`F.dropout` in eval mode) hands its name to the value it passes, and names that
would clash with Rust keywords, the generated code's own locals or forward()'s
arguments are numbered. The port still passes parity."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402

MODULE = '''\
import torch
import torch.nn.functional as F
from torch import nn


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

    def forward(self, x):
        h = self.proj(x)
        out, (h_n, _) = self.lstm(h)
        for block in self.blocks:
            out = F.dropout(F.relu(block(out)), 0.1, self.training)
        type = torch.tanh(out)
        model: torch.Tensor = type * 2
        x = (model + h_n[-1].unsqueeze(1)).sum(-1)
        return x, h
'''

MODELS = """\
crate: crate
models:
  - name: named
    factory: nmodels:Named
    inputs:
      - x: {shape: [2, 5, 6]}
      - x: {shape: [1, 3, 6]}
"""


@pytest.mark.cargo
def test_locals_take_python_names(tmp_path, cargo_env, capsys):
    out = run_pipeline(tmp_path, {"nmodels": MODULE}, MODELS, capsys)
    assert "parity: 2 passed, 0 failed" in out, out[-3000:]
    manifest = (tmp_path / "artifacts" / "named" / "manifest.json").read_text()
    assert '"assign": "h"' in manifest and '"assign": [\n' in manifest, manifest
    rust = (tmp_path / "crate" / "src" / "named.rs").read_text()
    forward = rust[rust.index("pub fn forward_stream"):]  # the LSTM leads: a streaming model
    for line in (
        "let h = self.proj.forward(x)?;",
        "let (out, (h_n, lstm_c_n)) = self",
        "let mut out = out;",  # the loop over `self.blocks` carries `out`
        "for block in &self.blocks {",
        "out = pycandle_runtime::ops::relu(&block_out)?;",  # F.dropout in eval mode passes its input through
        "let type_1 = out.tanh()?;",  # a Rust keyword
        "let model_1 = (&type_1 * 2.0)?;",  # a local of the generated tests
        "Ok((x_1, h))",  # forward()'s argument `x` keeps its name
    ):
        assert line in forward, f"{line}\n---\n{forward}"
    assert "let relu" not in forward and "let tanh" not in forward, forward
    assert_clippy_clean(tmp_path / "crate")


def test_readme_shows_the_generated_code():
    """The README's side-by-side examples are the example sources and the committed generated
    code, verbatim."""
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What the generated code looks like"):]
    section = section[:section.index("\n## ")]
    sources = "".join((ROOT / "examples" / f).read_text() for f in ("voice.py", "tts.py", "steps.py"))
    sources = sources.replace("        # Data-dependent Python, as in real encoders: fx and "
                              "torch.export cannot trace this.\n", "")
    generated = "".join((ROOT / "generated" / "src" / f).read_text()
                        for f in ("voice_encoder.rs", "tacotron_encoder.rs", "frame_vad.rs"))
    blocks = re.findall(r"```(python|rust)\n(.*?)```", section, re.S)
    assert [lang for lang, _ in blocks] == ["python", "rust"] * 3, blocks
    for lang, text in blocks:
        assert text in (sources if lang == "python" else generated), text
