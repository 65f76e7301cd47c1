"""PyTorch layers beyond the LSTM: parity through the real pipeline, and the options that are
reported instead of silently ignored.

The parity test puts every layer (with randomised conv/pool options, fixed seed) into a few
models that share one generated crate, so there is one cargo build; each layer is checked in
isolation on its golden inputs, and every model at two trace shapes (batch and length differ).
"""

from __future__ import annotations

import json
import random
import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, pin_lockfile  # noqa: E402
from pycandle import registry  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

# Trace shapes: x1 is (batch, 6 channels, length), x2 is (batch, 4 channels, height, width).
BATCHES, LENGTHS, PLANES = (2, 3), (11, 16), ((7, 9), (10, 8))
C1, C2 = 6, 4


def _divisor(rng: random.Random, *channels: int) -> int:
    return rng.choice([g for g in (1, 2, 3, 4) if all(c % g == 0 for c in channels)])


def conv1d(rng: random.Random) -> str:
    out = rng.choice([4, 6, 8])
    kernel, dilation = rng.randint(1, 4), rng.choice([1, 1, 2])
    padding = rng.choice([0, 1, 2, "'same'", "'valid'"])
    stride = 1 if padding == "'same'" else rng.choice([1, 1, 2, 3])
    mode = rng.choice(["'zeros'", "'zeros'", "'replicate'", "'reflect'", "'circular'"])
    return (f"nn.Conv1d({C1}, {out}, {kernel}, stride={stride}, padding={padding}, "
            f"dilation={dilation}, groups={_divisor(rng, C1, out)}, bias={rng.random() < 0.7}, "
            f"padding_mode={mode})")


def conv_transpose1d(rng: random.Random) -> str:
    out, kernel = rng.choice([3, 6]), rng.randint(1, 4)
    stride, dilation = rng.randint(1, 3), rng.choice([1, 2])
    output_padding = rng.randint(0, max(stride, dilation) - 1)  # PyTorch's bound
    return (f"nn.ConvTranspose1d({C1}, {out}, {kernel}, stride={stride}, "
            f"padding={rng.randint(0, 2)}, output_padding={output_padding}, "
            f"dilation={dilation}, groups={_divisor(rng, C1, out)}, bias={rng.random() < 0.7})")


def conv2d(rng: random.Random) -> str:
    out = rng.choice([2, 4, 6])
    kernel = rng.choice([rng.randint(1, 3), (rng.randint(1, 3), rng.randint(1, 3))])
    padding = rng.choice([0, 1, (1, 0), (0, 2), "'same'", "'valid'"])
    stride = 1 if padding == "'same'" else rng.choice([1, 2, (1, 2), (3, 1)])
    mode = rng.choice(["'zeros'", "'zeros'", "'replicate'", "'reflect'", "'circular'"])
    return (f"nn.Conv2d({C2}, {out}, {kernel}, stride={stride}, padding={padding}, "
            f"dilation={rng.choice([1, 1, 2, (1, 2), (2, 1)])}, "
            f"groups={_divisor(rng, C2, out)}, bias={rng.random() < 0.7}, padding_mode={mode})")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return v if isinstance(v, tuple) else (v, v)


def conv_transpose2d(rng: random.Random) -> str:
    out = rng.choice([2, 4, 6])
    kernel = rng.choice([rng.randint(1, 3), (rng.randint(1, 3), rng.randint(1, 3))])
    stride, dilation = rng.choice([1, 2, (1, 2), (2, 3)]), rng.choice([1, 2, (1, 2)])
    # one output_padding for both dimensions, below each one's stride or dilation (PyTorch's)
    bound = min(max(s, d) for s, d in zip(_pair(stride), _pair(dilation)))
    return (f"nn.ConvTranspose2d({C2}, {out}, {kernel}, stride={stride}, "
            f"padding={rng.randint(0, 1)}, output_padding={rng.randint(0, bound - 1)}, "
            f"dilation={dilation}, bias={rng.random() < 0.7})")


def _pool_options(rng: random.Random, kind: str, n: int) -> str:
    """The options beyond kernel, stride and padding, each drawn now and then."""
    options = [f"ceil_mode={rng.random() < 0.4}"]
    if kind == "Max":
        options.append(f"dilation={rng.choice([1, 1, 2])}")
    else:
        options.append(f"count_include_pad={rng.random() < 0.6}")
        if n == 2 and rng.random() < 0.3:
            options.append(f"divisor_override={rng.randint(1, 5)}")
    return ", ".join(options)


def pool1d(rng: random.Random) -> str:
    kernel = rng.randint(1, 4)
    stride, padding = rng.randint(1, kernel), rng.randint(0, kernel // 2)
    kind = rng.choice(["Max", "Avg"])
    return (f"nn.{kind}Pool1d({kernel}, stride={stride}, padding={padding}, "
            f"{_pool_options(rng, kind, 1)})")


def pool2d(rng: random.Random) -> str:
    kernel = rng.choice([rng.randint(1, 3), (rng.randint(1, 3), rng.randint(1, 3))])
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    stride = rng.choice([None, rng.randint(1, 2), (rng.randint(1, 2), rng.randint(1, 2))])
    padding = rng.choice([0, (kh // 2, kw // 2)])
    kind = rng.choice(["Max", "Avg"])
    return (f"nn.{kind}Pool2d({kernel}, stride={stride}, padding={padding}, "
            f"{_pool_options(rng, kind, 2)})")


# Edge cases every run checks, next to the random draws.
FIXED_CONV1D = [
    f"nn.Conv1d({C1}, 6, 4, padding='same', padding_mode='replicate')",  # uneven 'same'
    f"nn.Conv1d({C1}, 4, 3, stride=2, padding=2, padding_mode='replicate', bias=False)",
    f"nn.Conv1d({C1}, 3, 2, padding='valid', groups=3)",
]
FIXED_TRANSPOSED = [
    f"nn.ConvTranspose1d({C1}, 4, 3, stride=3)",  # Candle's col2im path
    f"nn.ConvTranspose1d({C1}, 4, 3, stride=2, padding=1, output_padding=1)",
]
FIXED_CONV2D = [
    f"nn.Conv2d({C2}, 4, (3, 2), padding='same')",  # rectangular, uneven 'same'
    f"nn.Conv2d({C2}, 2, 3, stride=2, padding=(1, 2), dilation=2, groups=2)",
]
FIXED_TRANSPOSED2D = [
    f"nn.ConvTranspose2d({C2}, 4, 2, stride=2)",  # a U-Net's upsampling
    f"nn.ConvTranspose2d({C2}, 2, (3, 2), stride=(2, 1), padding=1, output_padding=1, "
    "dilation=(1, 2), bias=False)",
    # grouped: Candle's conv_transpose2d has no groups, the runtime runs one per group
    f"nn.ConvTranspose2d({C2}, 6, 3, stride=2, padding=1, output_padding=1, groups=2)",
    f"nn.ConvTranspose2d({C2}, 4, (2, 3), stride=(2, 1), dilation=(1, 2), groups=4, bias=False)",
]
FIXED_CONV2D += [f"nn.Conv2d({C2}, 4, (3, 2), dilation=(2, 3), padding='same')",
                 f"nn.Conv2d({C2}, 4, 3, stride=(1, 2), dilation=(1, 2), groups=2, "
                 "padding_mode='reflect', padding=(1, 2))"]
UPSAMPLE1D = ["nn.Upsample(scale_factor=2)", "nn.Upsample(scale_factor=1.75)",
              "nn.Upsample(scale_factor=0.6, mode='nearest-exact')",
              "nn.Upsample(scale_factor=1.7, mode='linear')",
              "nn.Upsample(size=20, mode='linear', align_corners=True)",
              "nn.Upsample(scale_factor=2.5, mode='linear', recompute_scale_factor=True)"]
UPSAMPLE2D = ["nn.Upsample(scale_factor=(1.5, 2.5), mode='bilinear')",
              "nn.UpsamplingBilinear2d(scale_factor=2)", "nn.UpsamplingNearest2d(size=(5, 13))",
              "nn.Upsample(scale_factor=1.3, mode='bilinear', recompute_scale_factor=True)",
              "nn.Upsample(scale_factor=0.5)",
              "nn.Upsample(scale_factor=(2, 0.75), mode='nearest-exact')",
              "nn.Upsample(scale_factor=(1.5, 2), mode='bicubic')",
              "nn.Upsample(size=(7, 9), mode='bicubic', align_corners=True)"]
FIXED_POOL1D = ["nn.MaxPool1d(3, padding=1)", "nn.AvgPool1d(2, count_include_pad=False)",
                "nn.AvgPool1d(3, stride=2, padding=1)",
                "nn.MaxPool1d(2, stride=2, padding=1, dilation=2, ceil_mode=True)",
                "nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)"]
FIXED_POOL2D = ["nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 1))",
                "nn.AvgPool2d(3, stride=2, padding=1)",
                "nn.MaxPool2d(2, stride=(2, 1), dilation=(1, 2), ceil_mode=True)",
                "nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, divisor_override=4)"]


PADS1 = ["nn.ConstantPad1d(2, 0.5)", "nn.ZeroPad1d((0, 3))", "nn.ReflectionPad1d((2, 1))",
         "nn.ReplicationPad1d(3)", "nn.CircularPad1d((1, 2))"]
PADS2 = ["nn.ConstantPad2d((1, 0, 2, 1), -1.5)", "nn.ZeroPad2d(1)", "nn.ReflectionPad2d((1, 2, 0, 1))",
         "nn.ReplicationPad2d((0, 1, 2, 0))", "nn.CircularPad2d(1)", "nn.ConstantPad3d(1, 2.0)"]


def pad1d(rng: random.Random) -> str:
    kind = rng.choice(["Constant", "Zero", "Reflection", "Replication", "Circular"])
    amounts = (rng.randint(0, 3), rng.randint(0, 3))  # reflection needs < the length (11)
    value = f", {rng.uniform(-2, 2):.2f}" if kind == "Constant" else ""
    return f"nn.{kind}Pad1d({amounts}{value})"


def pad2d(rng: random.Random) -> str:
    kind = rng.choice(["Constant", "Zero", "Reflection", "Replication", "Circular"])
    amounts = tuple(rng.randint(0, 2) for _ in range(4))  # < the smallest plane side (7)
    value = f", {rng.uniform(-2, 2):.2f}" if kind == "Constant" else ""
    return f"nn.{kind}Pad2d({amounts}{value})"


def module_source(rng: random.Random) -> str:
    convs1 = ", ".join(FIXED_CONV1D + [conv1d(rng) for _ in range(6)])
    transposed = ", ".join(FIXED_TRANSPOSED + [conv_transpose1d(rng) for _ in range(3)])
    convs2 = ", ".join(FIXED_CONV2D + [conv2d(rng) for _ in range(5)])
    transposed2 = ", ".join(FIXED_TRANSPOSED2D + [conv_transpose2d(rng) for _ in range(4)])
    up1, up2 = ", ".join(UPSAMPLE1D), ", ".join(UPSAMPLE2D)
    pools1 = ", ".join(FIXED_POOL1D + [pool1d(rng) for _ in range(5)])
    pools2 = ", ".join(FIXED_POOL2D + [pool2d(rng) for _ in range(5)])
    pads1 = ", ".join(PADS1 + [pad1d(rng) for _ in range(3)])
    pads2 = ", ".join(PADS2 + [pad2d(rng) for _ in range(3)])
    return textwrap.dedent(f"""\
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Convs(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = nn.ModuleList([{convs1}])
                self.t1 = nn.ModuleList([{transposed}])
                self.c2 = nn.ModuleList([{convs2}])
                self.t2 = nn.ModuleList([{transposed2}])
                self.unbatched = nn.Conv1d({C1}, 3, 3, padding=1)
                self.unbatched_t2 = nn.ConvTranspose2d({C2}, 3, 2, stride=2)

            def forward(self, x1, x2):
                outs = [c(x1) for c in self.c1] + [t(x1) for t in self.t1]
                outs += [c(x2) for c in self.c2] + [t(x2) for t in self.t2]
                return tuple(outs) + (self.unbatched(x1[0]), self.unbatched_t2(x2[0]))


        class Pools(nn.Module):
            def __init__(self):
                super().__init__()
                self.p1 = nn.ModuleList([{pools1}])
                self.p2 = nn.ModuleList([{pools2}])
                self.adaptive = nn.ModuleList([nn.AdaptiveAvgPool1d(n) for n in (1, 3, 4, 5)])
                self.adaptive_2d = nn.ModuleList([nn.AdaptiveAvgPool2d(s) for s in
                                                  (1, 3, (2, 5), (None, 3), (4, None))])
                self.up1 = nn.ModuleList([{up1}])
                self.up2 = nn.ModuleList([{up2}])
                # sliding blocks as columns, and overlapping blocks added back
                self.unfolds = nn.ModuleList([
                    nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=(2, 1)),
                    nn.Unfold(2, stride=2), nn.Unfold(3, padding=1)])
                self.fold = nn.Fold((4, 4), 2, stride=2)
                self.fold_overlap = nn.Fold((5, 6), 3, padding=1)

            def forward(self, x1, x2):
                outs = [p(x1) for p in self.p1] + [p(x2) for p in self.p2]
                outs += [u(x1) for u in self.up1] + [u(x2) for u in self.up2]
                outs += [u(x2) for u in self.unfolds] + [self.unfolds[2](x2[0])]
                outs += [self.fold(self.unfolds[1](x2[..., :4, :4])),
                         self.fold_overlap(self.unfolds[2](x2[..., :5, :6]))]
                outs += [a(x1) for a in self.adaptive] + [a(x2) for a in self.adaptive_2d]
                outs += [F.adaptive_avg_pool2d(x2[0], (3, 2))]
                return tuple(outs) + (self.p1[0](x1[0]),)


        class Norms(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln = nn.LayerNorm({C1})
                self.ln_plain = nn.LayerNorm({C1}, eps=1e-3, elementwise_affine=False)
                self.ln_nobias = nn.LayerNorm({C1}, bias=False)
                self.ln_2d = nn.LayerNorm((2, 3))
                self.gn = nn.GroupNorm(2, {C1})
                self.gn_plain = nn.GroupNorm(3, {C1}, eps=1e-4, affine=False)
                self.gn_2d = nn.GroupNorm(2, {C2})
                self.bn = nn.BatchNorm1d({C1})
                self.bn_plain = nn.BatchNorm1d({C1}, eps=1e-3, affine=False)
                self.bn_2d = nn.BatchNorm2d({C2})
                self.inorm = nn.InstanceNorm1d({C1})
                self.inorm_affine = nn.InstanceNorm1d({C1}, eps=1e-3, affine=True)
                self.inorm_running = nn.InstanceNorm1d({C1}, affine=True, track_running_stats=True)
                self.inorm_2d = nn.InstanceNorm2d({C2}, affine=True)
                self.inorm_2d_running = nn.InstanceNorm2d({C2}, track_running_stats=True)
                self.rms = nn.RMSNorm({C1})
                self.rms_eps = nn.RMSNorm({C1}, eps=1e-3, elementwise_affine=False)
                self.rms_2d = nn.RMSNorm((2, 3), eps=1e-5)
                with torch.no_grad():  # random affine parameters and running statistics
                    for p in self.parameters():
                        p.uniform_(0.5, 1.5)
                    for bn in (self.bn, self.bn_plain, self.bn_2d, self.inorm_running,
                               self.inorm_2d_running):
                        bn.running_mean.uniform_(-0.5, 0.5)
                        bn.running_var.uniform_(0.5, 2.0)

            def forward(self, x1, x2):
                h = x1.transpose(1, 2)  # (batch, length, channels)
                pooled = x1.mean(-1)  # (batch, channels)
                return (self.ln(h), self.ln_plain(h), self.ln_nobias(h),
                        self.ln_2d(h.unflatten(-1, (2, 3))), self.gn(x1), self.gn_plain(x1),
                        self.gn(pooled), self.gn_2d(x2), self.bn(x1), self.bn(pooled),
                        self.bn_plain(x1), self.bn_2d(x2), self.inorm(x1),
                        self.inorm_affine(x1), self.inorm_affine(x1[0]), self.inorm_running(x1),
                        self.inorm_2d(x2), self.inorm_2d_running(x2), self.rms(h),
                        self.rms_eps(h), self.rms_2d(h.unflatten(-1, (2, 3))))


        class Activations(nn.Module):
            def __init__(self):
                super().__init__()
                self.acts = nn.ModuleList([
                    nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.GELU(), nn.GELU(approximate="tanh"),
                    nn.SiLU(), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.Softplus(),
                    nn.Softplus(beta=2.0, threshold=1.5), nn.Mish(), nn.Hardtanh(-0.3, 0.4),
                    nn.ReLU6(), nn.Softmax(dim=1), nn.Softmax(dim=-1), nn.LogSoftmax(dim=-1),
                    nn.Flatten(), nn.Flatten(0, 1), nn.Identity(), nn.Dropout(0.3)])
                self.unflatten = nn.Unflatten(1, (2, 3))
                self.embed = nn.Embedding(10, 5, padding_idx=0)

            def forward(self, x1, idx):
                x = 8.0 * x1 - 4.0
                return tuple(a(x) for a in self.acts) + (self.unflatten(x), self.embed(idx))


        class Extras(nn.Module):
            # layers published models use: PReLU, GLU, hard activations, padding modules

            def __init__(self):
                super().__init__()
                self.prelu = nn.PReLU()
                self.prelu_c = nn.PReLU({C1}, init=0.1)
                self.prelu_w = nn.Parameter(torch.rand({C2}))
                self.hard = nn.ModuleList([nn.Hardswish(), nn.Hardsigmoid()])
                self.glu = nn.GLU(dim=1)
                self.pads = nn.ModuleList([{pads1}])
                self.pads2 = nn.ModuleList([{pads2}])
                with torch.no_grad():
                    self.prelu_c.weight.uniform_(-0.5, 0.5)

            def forward(self, x1, x2):
                x = 8.0 * x1 - 4.0
                outs = [self.prelu(x), self.prelu_c(x), self.prelu(x1[0]),
                        F.prelu(x2 - 0.5, self.prelu_w), self.glu(x), F.glu(x2, 1),
                        F.hardswish(x), F.hardsigmoid(x), torch.atan2(x1, x1.flip(-1)),
                        torch.atan2(x2, x2[:, :1]), torch.atanh(0.99 * x1), x1.arctanh()]
                outs += [h(x) for h in self.hard]
                outs += [p(x1) for p in self.pads] + [p(x2) for p in self.pads2]
                return tuple(outs)
        """)


def _entry(name: str, cls: str, inputs: list[str]) -> str:
    return (f"  - name: {name}\n    factory: layermodels:{cls}\n    inputs:\n"
            + "".join(inputs) + "    tolerance: {atol: 1.0e-5, rtol: 1.0e-4}\n")


def _case(**specs: str) -> str:
    lines = [f"{k}: {v}" for k, v in specs.items()]
    return "      - " + "\n        ".join(lines) + "\n"


def models_yaml() -> str:
    x1 = [f"{{shape: [{b}, {C1}, {n}], low: -1, high: 1}}" for b, n in zip(BATCHES, LENGTHS)]
    x2 = [f"{{shape: [{b}, {C2}, {h}, {w}], low: -1, high: 1}}"
          for b, (h, w) in zip(BATCHES, PLANES)]
    idx = [f"{{shape: [{b}, {n}], dtype: int64, low: 0, high: 10}}"
           for b, n in zip(BATCHES, LENGTHS)]
    two = [_case(x1=a, x2=b) for a, b in zip(x1, x2)]
    return ("crate: crate\nmodels:\n"
            + _entry("convs", "Convs", two) + _entry("pools", "Pools", two)
            + _entry("norms", "Norms", two)
            + _entry("activations", "Activations",
                     [_case(x1=a, idx=i) for a, i in zip(x1, idx)])
            + _entry("extras", "Extras", two))


@pytest.mark.cargo
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_layers_match_pytorch(tmp_path, cargo_env, capsys):
    rng = random.Random(20261124)
    (tmp_path / "layermodels.py").write_text(module_source(rng))
    (tmp_path / "models.yaml").write_text(models_yaml())
    pin_lockfile(tmp_path / "crate")
    code = main(["all", "--config", str(tmp_path / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    assert "parity: 10 passed, 0 failed" in captured.out
    report = json.loads((tmp_path / "reports" / "parity.json").read_text())
    checked = {e["layer"] for r in report for e in r["entries"] if e["kind"] == "layer"}
    # every layer was checked on its own, not only through the model outputs (Identity and
    # Dropout are not layers in the generated code: they pass their input through)
    assert {"c1.8", "t1.4", "c2.8", "t2.5", "unbatched", "unbatched_t2", "up1.5", "up2.5",
            "p1.7", "p2.6", "adaptive.3", "ln_2d",
            "gn_plain", "bn_2d", "acts.17", "unflatten", "embed", "prelu", "prelu_c", "hard.1",
            "glu", "pads.7", "pads2.8", "inorm_running", "inorm_2d", "rms_2d",
            "adaptive_2d.4", "unfolds.0", "unfolds.2", "fold", "fold_overlap"} <= checked
    assert_clippy_clean(tmp_path / "crate")


# --- options that are reported --------------------------------------------------------------------

UNSUPPORTED = """\
    import torch
    from torch import nn
    import torch.nn.functional as F


    class One(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)


    def batch_stats():
        return One(nn.BatchNorm1d(4, track_running_stats=False))

    def max_norm():
        return One(nn.Sequential(nn.Flatten(0), nn.Embedding(10, 3, max_norm=1.0)))

    def indices():
        return One(nn.MaxPool1d(2, return_indices=True))

    def implicit_softmax():
        return One(nn.Softmax())
    """


# factory -> (input shape, what the report says)
REPORTED = {
    "batch_stats": ("[2, 4, 6]",
                    "[layer] BatchNorm1d option not supported: track_running_stats=False"),
    "max_norm": ("[2, 3], dtype: int64, low: 0, high: 10",
                 "[layer.1] Embedding option not supported: max_norm=1.0"),
    "indices": ("[2, 4, 6]", "[layer] MaxPool1d option not supported: return_indices=True"),
    "implicit_softmax": ("[2, 4, 6]", "[layer] softmax without dim"),
}


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_unsupported_layer_options_are_reported(tmp_path):
    """One `record` of a model per option: each is reported, naming the layer, and nothing is
    written."""
    (tmp_path / "badlayers.py").write_text(textwrap.dedent(UNSUPPORTED))
    entries = "".join(f"  - name: {name}\n    factory: badlayers:{name}\n    inputs:\n"
                      f"      - x: {{shape: {shape}}}\n"
                      for name, (shape, _) in REPORTED.items())
    (tmp_path / "models.yaml").write_text("models:\n" + entries)
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    report = " ".join(str(info.value).split())
    for name, (_, expected) in REPORTED.items():
        assert expected in report, (name, report)
    assert not (tmp_path / "artifacts").exists()


def test_every_new_layer_is_registered():
    for name in ("Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "Upsample",
                 "UpsamplingNearest2d", "UpsamplingBilinear2d", "Embedding", "LayerNorm",
                 "GroupNorm",
                 "BatchNorm1d", "BatchNorm2d", "Flatten", "Unflatten", "GELU", "SiLU", "Tanh",
                 "Sigmoid", "LeakyReLU", "ELU", "Softplus", "Mish", "Hardtanh", "Softmax",
                 "LogSoftmax", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
                 "AdaptiveAvgPool1d"):
        assert registry.layer_for(f"torch.nn.{name}") is not None, name

