"""The benchmark's machinery (no timing is asserted: only what was run and reported)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, pin_lockfile
from pycandle.bench import common, main, models
from pycandle.config import load_config


def test_rounds_rotate_and_ratios_pair_up():
    calls = []

    def contender(name: str, seconds: float):
        def run() -> float:
            calls.append(name)
            return seconds
        return run

    seconds = common.alternate({"a": contender("a", 2.0), "b": contender("b", 1.0),
                                "c": contender("c", 4.0)}, rounds=3, warmup=1, gap=0)
    assert calls == list("abc" "abc" "bca" "cab")  # warm-up, then each one first once
    assert seconds == {"a": [2.0] * 3, "b": [1.0] * 3, "c": [4.0] * 3}
    q = common.ratios(seconds, [("a", "b")])["a/b"]
    assert (q["median"], q["p25"], q["p75"], q["min"], q["max"], q["n"]) == (2, 2, 2, 2, 2, 3)


def test_the_bench_models_are_a_valid_config():
    cfg = load_config(ROOT / "bench" / "models.yaml")
    assert [m.name for m in cfg.models] == ["speaker_encoder", "tacotron2_encoder",
                                            "token_tagger"]
    # scratch, never the committed crate
    assert (ROOT / "target") in cfg.crate.parents and (ROOT / "target") in cfg.artifacts.parents
    assert [len(m.inputs) for m in cfg.models] == [2, 2, 2]


def test_a_one_round_run_reports_every_row(tmp_path, cargo_env):
    """Small models through the whole-model part: record, codegen, the server binary (dev
    profile: the tests' candle), one round, memory in fresh processes, the JSON report."""
    import torch

    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        crate: crate
        artifacts: artifacts
        models:
          - name: tagger
            factory: examples.tts:TokenTagger
            kwargs: {vocab: 50, dim: 24, hidden: 32, n_tags: 7}
            inputs:
              - tokens: {shape: [4, 12], dtype: int64, low: 0, high: 50}
              - tokens: {shape: [1, 5], dtype: int64, low: 0, high: 50}
          - name: bi_tagger
            factory: examples.tagger:BiTagger
            kwargs: {n_features: 20, hidden_size: 32, n_tags: 6}
            inputs:
              - frames: {shape: [9, 2, 20], low: -1.0, high: 1.0}
                h0: {shape: [4, 2, 32], low: -0.5, high: 0.5}
                c0: {shape: [4, 2, 32], low: -0.5, high: 0.5}
        """))
    pin_lockfile(tmp_path / "crate")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--models-only", "--config", str(tmp_path / "models.yaml"), "--rounds", "1",
                     "--warmup", "0", "--gap", "0", "--threads", "1", "--cargo-profile", "dev",
                     "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(out.read_text())
    assert "layers" not in report and report["threads"] == 1
    assert report["machine"]["cpu"] and report["rust"]["kernel_path"] in (
        "avx512 (avx2 at batch 1)", "avx512", "avx2", "portable")
    assert report["rust"]["threads"] == 1
    # the runtime's default `avx512` feature gives Candle's matmuls AVX-512 where the CPU has it
    _, flags = common.cpu()
    assert report["rust"]["gemm"] == ("avx512f" if "avx512f" in flags else
                                      "fma" if "fma" in flags else "baseline")
    assert report["machine"]["isa"] == "native"
    assert list(report["models"]) == ["tagger[0]", "tagger[1]", "bi_tagger[0]"]
    for row in report["models"].values():
        assert row["check"]["max_abs_err"] < 1e-4
        assert {len(v) for v in row["seconds"].values()} == {1}
        assert set(row["ratios"]) == {"pycandle/pytorch"}
        assert set(row["memory"]) == {"pytorch", "pycandle"}
        assert all(m["growth_mb"] >= 0 for m in row["memory"].values())
    assert report["models"]["bi_tagger[0]"]["check"]["output_shape"] == [9, 2, 6]


def test_avx2_limit_needs_a_process_pytorch_has_not_started_in(capsys):
    import torch  # noqa: F401  (started, as in any test)

    with pytest.raises(SystemExit) as stop:
        main(["--isa", "avx2", "--models-only", "--rounds", "1"])
    assert stop.value.code == 2
    assert "PyTorch has already started" in capsys.readouterr().err


@pytest.mark.skipif(not {"avx2", "fma"} <= common.cpu()[1], reason="the CPU has no AVX2")
def test_avx2_limit_reaches_pytorch_and_the_rust_side():
    """In a fresh process: PyTorch's kernels drop to AVX2, and the environment the Rust side
    and the memory processes inherit carries the limits."""
    code = ("from pycandle.bench.common import AVX2_ONLY_ENV, child_env, limit_to_avx2\n"
            "assert limit_to_avx2() is None\n"
            "env = child_env(1)\n"
            "assert all(env[k] == v for k, v in AVX2_ONLY_ENV.items())\n"
            "import torch\n"
            "print(torch.backends.cpu.get_cpu_capability())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert done.stdout.split() == ["AVX2"]


def test_the_runtime_features_come_back_after_an_avx2_build(tmp_path):
    manifest = tmp_path / "Cargo.toml"
    text = textwrap.dedent("""\
        [package]
        name = "x"

        [dependencies]
        # the user's comment
        pycandle-runtime = {path = "vendor/pycandle-runtime", version = "0.1.0"}
        """)
    manifest.write_text(text)
    with models.runtime_without_default_features(manifest):
        inside = manifest.read_text()
    assert 'default-features = false' in inside and "# the user's comment" in inside
    assert manifest.read_text() == text
    with pytest.raises(RuntimeError), models.runtime_without_default_features(manifest):
        raise RuntimeError("the build failed")
    assert manifest.read_text() == text
    manifest.write_text("[package]\nname = \"x\"\n")
    with pytest.raises(RuntimeError, match="no \\[dependencies\\] entry for pycandle-runtime"):
        with models.runtime_without_default_features(manifest):
            pass


def test_a_run_says_when_candles_matmuls_miss_the_asked_instruction_set():
    xeon = {"simd": ["avx2", "fma", "avx512f"], "isa": "native"}
    assert common.isa_mismatch(xeon, {"gemm": "avx512f"}) is None
    assert "default `avx512` feature off" in common.isa_mismatch(xeon, {"gemm": "fma"})
    assert common.isa_mismatch({"simd": ["avx2", "fma"], "isa": "native"}, {"gemm": "fma"}) is None
    limited = {**xeon, "isa": "avx2"}
    assert common.isa_mismatch(limited, {"gemm": "fma"}) is None
    assert "not AVX2" in common.isa_mismatch(limited, {"gemm": "avx512f"})
