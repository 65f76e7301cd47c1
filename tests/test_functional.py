"""Convolutions, linear layers and layer norms called as functions on the model's own tensors,
as published models write them: a subclass of nn.Conv1d whose forward calls F.conv1d with its
weight, a filterbank computed in forward (asteroid's encoders), F.conv_transpose1d decoders,
F.linear, a head of linear layers on every frame, whisper's LayerNorm subclass; F.interpolate,
F.conv_transpose2d (also grouped) and unevenly dilated F.conv2d as decoders and U-Nets use them.
Parity through the real pipeline at two trace shapes, options drawn at random."""

from __future__ import annotations

import json
import random
import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402

CHANNELS = 4


def _conv1d_call(rng: random.Random, weight: str) -> str:
    padding = rng.choice([0, 1, 2, "'same'", "'valid'"])
    stride = 1 if padding == "'same'" else rng.choice([1, 2, 3])
    return (f"F.conv1d(x, {weight}, stride={stride}, padding={padding}, "
            f"dilation={rng.choice([1, 2])})")


def module_source(rng: random.Random) -> str:
    calls = ", ".join(_conv1d_call(rng, "self.bank.expand(8, 4, 6)") for _ in range(4))
    return textwrap.dedent(f"""\
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Conv1d(nn.Conv1d):
            # whisper's habit: the layer's own forward, through F.conv1d
            def forward(self, x):
                return F.conv1d(x, self.weight.to(x.dtype), self.bias, self.stride,
                                self.padding, self.dilation, self.groups)


        class Linear(nn.Linear):
            def forward(self, x):
                return F.linear(x, self.weight.to(x.dtype), self.bias)


        class LayerNorm(nn.LayerNorm):
            # whisper's habit: normalise in float32, return in the input's dtype
            def forward(self, x):
                return super().forward(x.float()).type(x.dtype)


        class Tied(nn.Module):
            # a language model's output projection tied to its embedding
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(20, 6)
                self.proj = nn.Linear(6, 6)

            def forward(self, tokens):
                h = self.proj(self.embed(tokens))
                return h @ self.embed.weight.T, F.linear(h, self.embed.weight), h @ self.proj.weight


        class Filterbank(nn.Module):
            # asteroid's free/param encoders: filters made in forward, then F.conv1d
            def __init__(self):
                super().__init__()
                self.bank = nn.Parameter(torch.randn(8, 1, 6))
                self.window = nn.Parameter(torch.rand(6))
                self.bias = nn.Parameter(torch.randn(8))
                self.conv = Conv1d({CHANNELS}, 6, 3, padding=1, groups=2)
                self.conv2 = Conv1d({CHANNELS}, 4, 2, stride=2, bias=False)
                self.proj = Linear(6, 5)
                self.proj_nobias = Linear(6, 3, bias=False)
                self.image = nn.Parameter(torch.randn(5, 2, 3, 2))
                self.norm = LayerNorm(6)
                self.register_buffer("mean", torch.randn(6) * 0.1)
                self.register_buffer("var", torch.rand(6) + 0.5)
                self.gamma = nn.Parameter(torch.rand(6) + 0.5)
                self.scale = nn.Parameter(torch.rand(2, 3) + 0.5)

            def forward(self, x, wave, im):
                filters = self.bank * self.window
                encoded = F.conv1d(wave, filters, stride=3, padding=2)
                decoded = F.conv_transpose1d(encoded, filters, stride=3, padding=2)
                decoded_b = F.conv_transpose1d(encoded, filters, self.bias[:1], stride=2,
                                               output_padding=1, dilation=2)
                grouped = F.conv1d(x, self.bank[:4].expand(4, 1, 6), self.bias[:4],
                                   padding='same', groups={CHANNELS})
                y = self.conv(x)
                return (encoded, decoded, decoded_b, grouped, y, self.conv2(x),
                        self.proj(y.transpose(1, 2)), self.proj_nobias(y.transpose(1, 2)),
                        F.conv1d(x[0], self.bank[:3].expand(3, {CHANNELS}, 6)),
                        F.conv2d(im, self.image, stride=(1, 2), padding=1),
                        F.conv2d(im, self.image, self.bias[:5], padding='same'),
                        self.norm(y.transpose(1, 2)),
                        F.layer_norm(y.transpose(1, 2).unflatten(-1, (2, 3)), (2, 3),
                                     self.scale * 2, eps=1e-3),
                        F.layer_norm(y.transpose(1, 2), (6,)),
                        F.batch_norm(y, self.mean, self.var, self.gamma, self.bias[:6],
                                     training=self.training, eps=1e-3),
                        F.batch_norm(y.unsqueeze(-1), self.mean, self.var),
                        F.group_norm(y, 3, self.gamma, self.bias[:6]), F.group_norm(y, 2),
                        F.rms_norm(y.transpose(1, 2), (6,), self.gamma),
                        F.rms_norm(y.transpose(1, 2).unflatten(-1, (2, 3)), (2, 3), eps=1e-4),
                        {calls})


        class Head(nn.Module):
            # a tagger's or a classifier's head on every frame: enough rows, and outputs few
            # enough, for the runtime's own product (wider outputs stay on Candle's)
            def __init__(self):
                super().__init__()
                self.proj = Linear(24, 10)
                self.out = nn.Linear(24, 40)
                self.bare = nn.Linear(24, 16, bias=False)
                self.wide = nn.Linear(24, 70)

            def forward(self, x):  # x: (batch, 24, frames)
                frames = x.transpose(1, 2)
                return (self.proj(frames), self.bare(frames.contiguous()), self.wide(frames),
                        F.log_softmax(self.out(frames), -1), self.out(frames[0]))


        class Resample(nn.Module):
            # decoders and U-Nets: upsampling to a skip connection's size, transposed 2-d
            # convolutions, dilations that differ per dimension
            def __init__(self):
                super().__init__()
                self.up = nn.Parameter(torch.randn(2, 3, 3, 2))
                self.image = nn.Parameter(torch.randn(3, 2, 3, 2))
                self.bias = nn.Parameter(torch.randn(3))

            def forward(self, x, im):
                skip = x[:, :, ::2]
                return (F.interpolate(skip, size=x.shape[-1]),
                        F.interpolate(skip, size=x.shape[-1], mode='linear'),
                        F.interpolate(x, scale_factor=1.75),
                        F.interpolate(x, scale_factor=0.6, mode='nearest-exact'),
                        F.interpolate(x, scale_factor=2.5, mode='linear', align_corners=True),
                        F.interpolate(x, scale_factor=1.3, mode='linear',
                                      recompute_scale_factor=True),
                        F.interpolate(im, size=(im.shape[2] * 2, 11), mode='bilinear'),
                        F.interpolate(im, scale_factor=(1.5, 0.7), mode='bilinear'),
                        F.interpolate(im, scale_factor=(2, 3)),
                        F.interpolate(im, size=(4, im.shape[-1] + 3), mode='bilinear',
                                      align_corners=True),
                        F.interpolate(im, scale_factor=(0.7, 2.5), mode='bicubic'),
                        F.interpolate(im, size=(5, im.shape[-1] * 2), mode='bicubic',
                                      align_corners=True),
                        F.conv_transpose2d(im, self.up, self.bias, stride=2, padding=1,
                                           output_padding=1),
                        F.conv_transpose2d(im, self.up, stride=(1, 2), dilation=(2, 1)),
                        F.conv_transpose2d(im, self.up, stride=2, padding=1, groups=2),
                        F.conv_transpose2d(im, self.up[:, :1], self.bias[:2], groups=2,
                                           dilation=(1, 2)),
                        F.conv2d(im, self.image, self.bias, dilation=(2, 1), padding=(2, 1)),
                        F.conv2d(im, self.image, padding='same', dilation=(1, 3)),
                        F.unfold(im, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
                        F.unfold(im[0], 2),
                        # a dual-path model's chunks of 4 frames at a hop of 2, overlap-added
                        # back to the input's length
                        F.fold(F.unfold(x.unsqueeze(-1), (4, 1), padding=(4, 0), stride=(2, 1)),
                               (x.shape[-1], 1), (4, 1), padding=(4, 0), stride=(2, 1)),
                        # frames of a signal (Tensor.unfold): the window a new last dimension
                        x.unfold(-1, 5, 2), x.unfold(1, 2, 1))
        """)


MODELS = """\
crate: crate
models:
  - name: filterbank
    factory: fnmodels:Filterbank
    inputs:
      - x: {shape: [2, 4, 13], low: -1, high: 1}
        wave: {shape: [2, 1, 40], low: -1, high: 1}
        im: {shape: [2, 2, 6, 7], low: -1, high: 1}
      - x: {shape: [1, 4, 18], low: -1, high: 1}
        wave: {shape: [1, 1, 57], low: -1, high: 1}
        im: {shape: [1, 2, 9, 5], low: -1, high: 1}
    tolerance: {atol: 1.0e-5, rtol: 1.0e-4}
  - name: resample
    factory: fnmodels:Resample
    inputs:
      - x: {shape: [2, 4, 13], low: -1, high: 1}
        im: {shape: [2, 2, 6, 7], low: -1, high: 1}
      - x: {shape: [1, 4, 18], low: -1, high: 1}
        im: {shape: [1, 2, 9, 5], low: -1, high: 1}
    tolerance: {atol: 1.0e-5, rtol: 1.0e-4}
  - name: head
    factory: fnmodels:Head
    inputs:
      - x: {shape: [2, 24, 40], low: -1, high: 1}
      - x: {shape: [3, 24, 21], low: -1, high: 1}
    tolerance: {atol: 1.0e-5, rtol: 1.0e-4}
  - name: tied
    factory: fnmodels:Tied
    inputs:
      - tokens: {shape: [2, 5], dtype: int64, low: 0, high: 20}
      - tokens: {shape: [3, 8], dtype: int64, low: 0, high: 20}
"""


@pytest.mark.cargo
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_functional_convolutions_match_pytorch(tmp_path, cargo_env, capsys):
    out = run_pipeline(tmp_path, {"fnmodels": module_source(random.Random(20261203))}, MODELS,
                       capsys)
    assert "parity: 8 passed, 0 failed" in out
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    outputs = {e["output"] for r in report for e in r["entries"]
               if e["kind"] == "model" and r["model"] == "filterbank"}
    assert len(outputs) == 24  # every output checked end to end
    outputs = {e["output"] for r in report for e in r["entries"]
               if e["kind"] == "model" and r["model"] == "resample"}
    assert len(outputs) == 23
    # Candle's conv_transpose2d has no groups: the runtime runs one per group
    resample = (tmp_path / "crate" / "src" / "resample.rs").read_text()
    assert resample.count("conv_transpose2d_grouped(") == 2, resample
    src = (tmp_path / "crate" / "src" / "filterbank.rs").read_text()
    # the subclasses are traced through: their forward's F.conv1d / F.linear on the weights,
    # in a forward of the subclass's own struct that the model calls
    assert ".conv1d(&self.weight" in src and "let y = self.conv.forward(x)?;" in src, src
    assert "pycandle_runtime::Linear::new(self.weight.clone()" in src, src
    # a layer's own weight read in forward (tied output projection) is the field's accessor
    tied = (tmp_path / "crate" / "src" / "tied.rs").read_text()
    assert "self.embed.embeddings()" in tied and "self.proj.weight()" in tied, tied
    # the head's linear layers (80 and 63 rows: the runtime's own product for up to 64 outputs)
    head = (tmp_path / "crate" / "src" / "head.rs").read_text()
    assert "Linear::load(24, 40" in head and "pycandle_runtime::softmax::log_softmax" in head
    assert_clippy_clean(tmp_path / "crate")
