"""Parameters and buffers used directly in forward() (LayerScale's `x * self.scale`, input
normalisation by buffers, a learned bias or initial state added by hand): each becomes a
`Tensor` field of the struct of the module that owns it, loaded by its state-dict name, and
the port matches PyTorch through the whole pipeline. Also a parameter passed to a
`@torch.jit.script` function, which is traced as the Python it was compiled from."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

MODELS = """\
    import torch
    from torch import nn


    class LayerScale(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.scale = nn.Parameter(torch.rand(dim) + 0.5)

        def forward(self, x):
            return x * self.scale


    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            self.ls = LayerScale(dim)
            self.bias = nn.Parameter(torch.randn(dim))

        def forward(self, x):
            return x + self.ls(self.proj(x)) + self.bias


    class Scaled(nn.Module):
        \"\"\"Input statistics as buffers (one not saved in the state dict), blocks whose
        parameters are used directly, and a learned initial state for an LSTM.\"\"\"

        def __init__(self, dim=6):
            super().__init__()
            self.register_buffer("input_mean", torch.rand(dim))
            self.register_buffer("input_scale", torch.rand(dim) + 1.0, persistent=False)
            self.blocks = nn.ModuleList([Block(dim) for _ in range(2)])
            self.lstm = nn.LSTM(dim, 5, batch_first=True)
            self.h0 = nn.Parameter(torch.randn(1, 1, 5))
            self.c0 = nn.Parameter(torch.randn(1, 1, 5))

        def forward(self, x):
            x = (x - self.input_mean) * self.input_scale
            for block in self.blocks:
                x = block(x)
            b = x.shape[0]
            h0 = self.h0.expand(-1, b, -1).contiguous()
            c0 = self.c0.expand(-1, b, -1).contiguous()
            out, _ = self.lstm(x, (h0, c0))
            return out, self.h0


    class Shared(nn.Module):
        # one layer under two names, as asteroid's LSTMMasker registers its activation

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 6)
            self.seq = nn.Sequential(self.proj, nn.Tanh())

        def forward(self, x):
            return self.proj(self.seq(x))


    class Masked(nn.Module):
        # boolean tensors end to end: a bool input, bool results compared with PyTorch's
        def forward(self, x, mask):
            return x.masked_fill(mask, 0.0), mask & (x > 0.5), x > 0, ~mask


    @torch.jit.script
    def snake(x, alpha):
        # a TorchScript function (snac's activation): traced as the Python it was compiled from
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        x = x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
        return x.reshape(shape)


    class Snake(nn.Module):
        def __init__(self, channels=3):
            super().__init__()
            self.alpha = nn.Parameter(torch.rand(1, channels, 1) + 0.5)

        def forward(self, x):
            return snake(x, self.alpha)


    class OfALayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return x @ self.proj.weight.t()
    """


@pytest.mark.cargo
def test_parameters_used_in_forward_match_pytorch(tmp_path, cargo_env, capsys):
    (tmp_path / "pmodels.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        crate: crate
        models:
          - name: scaled
            factory: pmodels:Scaled
            inputs:
              - x: {shape: [2, 7, 6], low: -1, high: 1}
              - x: {shape: [3, 4, 6], low: -1, high: 1}
          - name: shared
            factory: pmodels:Shared
            inputs:
              - x: {shape: [2, 6]}
              - x: {shape: [3, 6]}
          - name: masked
            factory: pmodels:Masked
            inputs:
              - {x: {shape: [2, 5], low: -1, high: 1}, mask: {shape: [2, 5], dtype: bool}}
              - {x: {shape: [3, 4], low: -1, high: 1}, mask: {shape: [3, 4], dtype: bool}}
          - name: snake
            factory: pmodels:Snake
            inputs:
              - x: {shape: [2, 3, 9], low: -2, high: 2}
              - x: {shape: [1, 3, 14], low: -2, high: 2}
        """))
    pin_lockfile(tmp_path / "crate")
    code = main(["all", "--config", str(tmp_path / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    assert "parity: 8 passed, 0 failed" in captured.out
    snake = (tmp_path / "crate" / "src" / "snake.rs").read_text()
    assert ".sin()?" in snake and "self.alpha" in snake, snake
    src = (tmp_path / "crate" / "src" / "scaled.rs").read_text()
    assert 'let input_mean = vb.get((6,), "input_mean")?;' in src
    assert "pub scale: Tensor," in src and "pub bias: Tensor," in src
    assert "self.input_scale" in src and "self.h0" in src
    assert_clippy_clean(tmp_path / "crate")


def test_a_registered_layers_own_parameter_is_reported(tmp_path):
    (tmp_path / "pmodels.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "models.yaml").write_text(
        "models:\n  - name: of_a_layer\n    factory: pmodels:OfALayer\n    inputs:\n"
        "      - x: {shape: [2, 4]}\n      - x: {shape: [3, 4]}\n")
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    assert "direct use of parameter 'proj.weight' of a torch.nn.Linear layer" in str(info.value)
