"""Attention through the real pipeline: torch.einsum, F.scaled_dot_product_attention and
nn.MultiheadAttention checked against PyTorch at two trace shapes, and what is reported."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

MODELS_PY = """\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Einsums(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))

        def forward(self, x, y):  # x: (batch, time, 4), y: (batch, time2, 4)
            b, t, _ = x.shape
            q = x.view(b, t, 2, 2).transpose(1, 2)  # (b, 2, t, 2): a strided operand
            att = torch.einsum("bhtd,bhsd->bhts", q, q)
            return (torch.einsum("btf,bsf->bts", x, y), torch.einsum("btf,fk->btk", x, self.w),
                    torch.einsum("...f,fk->...k", [x, self.w]), torch.einsum("btf->bft", x),
                    torch.einsum("btf->b", x), torch.einsum("btf,btf->bt", x, x),
                    torch.einsum("btf,bsf", x, y), att,
                    torch.einsum("bhts,bhsd->bthd", att, q), torch.einsum("...ij->...ji", x),
                    torch.einsum("bt,bs->bts", x[:, :, 0], y[:, :, 1]),
                    torch.einsum("btf,fk,k->bt", x, self.w, self.w[0]),
                    torch.einsum("b...,b...->b...", x, x), torch.einsum("btf,f->bt", x, x[0, 0]))


    class Sdpa(nn.Module):
        def forward(self, x, y):  # x: (batch, time, 4), y: (batch, time2, 4)
            b, t, _ = x.shape
            q = x.view(b, t, 2, 2).transpose(1, 2)
            kv = y.view(b, y.shape[1], 2, 2).transpose(1, 2)
            i = torch.arange(t)
            j = torch.arange(y.shape[1])
            allowed = j[None, :] <= i[:, None] + 1  # (t, time2): True attends
            bias = (x @ y.transpose(1, 2)) * 0.5
            return (F.scaled_dot_product_attention(x, y, y),
                    F.scaled_dot_product_attention(q, kv, kv),
                    F.scaled_dot_product_attention(q, q, q, is_causal=True),
                    F.scaled_dot_product_attention(x, y, y, is_causal=True),
                    F.scaled_dot_product_attention(x, y, y, attn_mask=allowed),
                    F.scaled_dot_product_attention(q, kv, kv, bias[:, None], scale=0.3),
                    F.scaled_dot_product_attention(x, y, y, dropout_p=0.0, enable_gqa=True),
                    F.scaled_dot_product_attention(x.view(b, t, 4, 1).transpose(1, 2), kv[..., :1],
                                                   kv[..., 1:], enable_gqa=True),
                    # windows of heads (snac's local attention): rank 5, a causal one too,
                    # and rank 2
                    F.scaled_dot_product_attention(q[:, None], q[:, None], q[:, None]),
                    F.scaled_dot_product_attention(q.unflatten(0, (b, 1)), kv[:, None],
                                                   kv[:, None], is_causal=True),
                    F.scaled_dot_product_attention(x[0], y[0], y[0]))



    class Attentions(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.cross = nn.MultiheadAttention(4, 2, kdim=3, vdim=5, bias=False)
            self.single = nn.MultiheadAttention(4, 1, batch_first=True, dropout=0.3)

        def forward(self, x, y):  # x: (batch, time, 4), y: (batch, time2, 4)
            b, t, _ = x.shape
            s = y.shape[1]
            i = torch.arange(t)
            causal = i[None, :] > i[:, None]  # (t, t): True is masked
            # key padding (batch, time2): keys past the first of y whose first feature is high
            kpm = torch.cat([y[:, :1, 0] > 2.0, y[:, 1:, 0] > 0.5], dim=1)
            soft = (x @ x.transpose(1, 2)) * -0.5  # a float mask
            soft3 = torch.cat([soft, -soft], dim=2).reshape(b * 2, t, t)  # (batch * heads, t, t)
            out, weights = self.self_attn(x, x, x)
            out2, _ = self.self_attn(x, x, x, need_weights=False)
            out3, w3 = self.self_attn(x, x, x, attn_mask=causal, is_causal=True,
                                      average_attn_weights=False)
            out4 = self.self_attn(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
            out5, w5 = self.self_attn(x, y, y, key_padding_mask=kpm)
            out6, w6 = self.self_attn(x, x, x, attn_mask=soft3)
            j = torch.arange(s)
            ahead = j[None, :] > i[:, None] + 1  # (t, time2): True is masked, key 0 never
            out7, _ = self.self_attn(x, y, y, key_padding_mask=kpm, attn_mask=ahead,
                                     need_weights=False)
            xs, ys = x.transpose(0, 1), y.transpose(0, 1)  # (time, batch, features)
            out8, w8 = self.cross(xs, ys[:, :, :3], torch.cat([ys, ys[:, :, :1]], dim=2))
            out9, w9 = self.single(x, y, y, attn_mask=ahead)
            out10, w10 = self.self_attn(x[0], y[0], y[0], key_padding_mask=kpm[0])
            return (out, weights, out2, out3, w3, out4, out5, w5, out6, w6, out7, out8, w8,
                    out9, w9, out10, w10)
    """

MODELS = {"einsums": "Einsums", "sdpa": "Sdpa", "attentions": "Attentions"}


def _inputs() -> str:
    cases = []
    for b, t, s in ((2, 5, 7), (3, 4, 3)):
        cases.append(f"      - x: {{shape: [{b}, {t}, 4], low: -1, high: 1}}\n"
                     f"        y: {{shape: [{b}, {s}, 4], low: -1, high: 1}}\n")
    return "".join(cases)


@pytest.mark.cargo
def test_attention_matches_pytorch(tmp_path, cargo_env, capsys):
    (tmp_path / "attnmodels.py").write_text(textwrap.dedent(MODELS_PY))
    entries = "".join(f"  - name: {name}\n    factory: attnmodels:{cls}\n    inputs:\n"
                      + _inputs() for name, cls in MODELS.items())
    (tmp_path / "models.yaml").write_text("crate: crate\nmodels:\n" + entries)
    pin_lockfile(tmp_path / "crate")
    code = main(["all", "--config", str(tmp_path / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    assert f"parity: {2 * len(MODELS)} passed, 0 failed" in captured.out
    assert_clippy_clean(tmp_path / "crate")


UNSUPPORTED = """\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Call(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)


    def diagonal():
        return Call(lambda x: torch.einsum("bii->bi", x[:, :3, :3]))

    def sdpa_dropout():
        return Call(lambda x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.1))

    class SelfAttention(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True, **kwargs)

        def forward(self, x):
            return self.attn(x, x, x)[0]


    def mha_bias_kv():
        return SelfAttention(add_bias_kv=True)

    def mha_zero_attn():
        return SelfAttention(add_zero_attn=True)

    def broadcast_index():
        return Call(lambda x: torch.einsum("btf,btf->bt", x, x[:1]))
    """

REPORTED = {
    "diagonal": "einsum 'bii->bi': a repeated index in one operand (a diagonal)",
    "sdpa_dropout": "scaled_dot_product_attention with dropout_p=0.1",
    "mha_bias_kv": "MultiheadAttention option not supported: add_bias_kv=True",
    "mha_zero_attn": "MultiheadAttention option not supported: add_zero_attn=True",
    "broadcast_index": "einsum 'btf,btf->bt': index 'b' has different sizes in the operands",
}


def test_unsupported_attention_is_reported(tmp_path):
    (tmp_path / "badattn.py").write_text(textwrap.dedent(UNSUPPORTED))
    entries = "".join(f"  - name: {name}\n    factory: badattn:{name}\n    inputs:\n"
                      "      - x: {shape: [2, 3, 4]}\n" for name in REPORTED)
    (tmp_path / "models.yaml").write_text("models:\n" + entries)
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    report = " ".join(str(info.value).split())
    for name, expected in REPORTED.items():
        assert expected in report, (name, report)
