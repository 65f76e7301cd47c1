"""codegen from hand-written manifests, with torch unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from handmade import meta, speaker_encoder, tagger, with_node
from pycandle.codegen import CodegenError, codegen, generate_model, render_model
from pycandle.codegen.cargo import RUNTIME_DIR, cargo_toml_text, lib_rs_text
from pycandle.lowering import lower
from pycandle.errors import UnsupportedError
from pycandle.manifest import Node, Ref


def write_manifest(artifacts: Path, manifest) -> None:
    out = artifacts / manifest.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(manifest.dumps())


def test_codegen_runs_without_torch(tmp_path):
    """The whole codegen stage in a fresh interpreter where `import torch` fails."""
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from pycandle.codegen import codegen
        changed = codegen(Path({str(tmp_path / 'crate')!r}), Path({str(tmp_path / 'artifacts')!r}),
                          ["speaker"])
        print(len(changed))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # model, parity test, example, parity main.rs, Cargo.toml, lib.rs, and the vendored
    # runtime: its Cargo.toml and sources
    runtime = sorted((RUNTIME_DIR / "src").rglob("*.rs"))
    assert proc.stdout.strip() == str(6 + 1 + len(runtime))
    vendored = tmp_path / "crate" / "vendor" / "pycandle-runtime"
    assert all((vendored / p.relative_to(RUNTIME_DIR)).read_bytes() == p.read_bytes()
               for p in runtime)
    assert "[[bench]]" not in (vendored / "Cargo.toml").read_text()
    src = (tmp_path / "crate" / "src" / "speaker.rs").read_text()
    # the forward glue, generated from the graph, shape-generic
    # the LSTM resumes from (and leaves) its state in forward_stream; forward starts from zeros
    assert "let (_lstm_output, (lstm_h_n, lstm_c_n)) =" in src
    assert ".forward(mels, state.lstm.as_ref().map(|(h, c)| (h, c)))?;" in src
    assert "state.lstm = Some((lstm_h_n.clone(), lstm_c_n.clone()));" in src
    assert "self.forward_stream(mels, &mut SpeakerState::default())" in src
    assert "lstm_h_n.get_on_dim(0, lstm_h_n.dim(0)? - 1)?" in src
    assert "let proj = self.proj.forward(&getitem)?;" in src
    assert "relu.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?" in src
    assert "relu.broadcast_div(&norm)?" in src
    assert 'vb.pp("lstm")' in src and 'Linear::load(16, 4, vb.pp("proj"))?' in src
    # nothing specialised to the traced batch (2 / 1) or sequence length (10 / 7)
    assert "10" not in src.split("pub fn forward")[1]
    test = (tmp_path / "crate" / "tests" / "parity" / "speaker.rs").read_text()
    assert "fn case0()" in test and "fn case1()" in test
    assert 'report.check("layer", "lstm", "h_n", &lstm_h_n, &g("lstm.out.1.0")?)?;' in test
    assert 'const ARTIFACTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../artifacts/speaker");' in test
    lib = (tmp_path / "crate" / "src" / "lib.rs").read_text()
    assert "pub mod speaker;" in lib


def test_codegen_is_deterministic(tmp_path):
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    a = generate_model(tmp_path / "artifacts/speaker/manifest.json", tmp_path / "c",
                       tmp_path / "artifacts/speaker")
    b = generate_model(tmp_path / "artifacts/speaker/manifest.json", tmp_path / "c",
                       tmp_path / "artifacts/speaker")
    assert a.files == b.files


def test_unchanged_files_are_not_rewritten(tmp_path):
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    assert codegen(tmp_path / "crate", tmp_path / "artifacts", ["speaker"])
    assert codegen(tmp_path / "crate", tmp_path / "artifacts", ["speaker"]) == []


def test_unsupported_op_is_reported_with_its_source_and_nothing_is_written(tmp_path):
    manifest = with_node(
        speaker_encoder("bad"),
        Node("cumprod", "call_function", "torch.cumprod", (Ref("div"), 1), out=meta((2, 4), (1, 4)),
             source="model.py:14"),
        Ref("cumprod"))
    with pytest.raises(UnsupportedError) as info:
        lower(manifest)
    assert "model.py:14: function torch.cumprod is not supported" in str(info.value)
    write_manifest(tmp_path / "artifacts", manifest)
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    with pytest.raises(CodegenError, match="nothing was written"):
        codegen(tmp_path / "crate", tmp_path / "artifacts", ["speaker", "bad"])
    assert not (tmp_path / "crate").exists()


def test_unsupported_argument_values_are_reported():
    manifest = with_node(
        speaker_encoder(),
        Node("strided", "call_function", "Tensor.__getitem__",
             (Ref("div"), (slice(None, None, None), slice(0, None, -1))),
             out=meta((2, 2), (1, 2)), source="model.py:15"),
        Ref("strided"))
    with pytest.raises(UnsupportedError, match=r"model.py:15: slice step -1"):
        lower(manifest)


def test_value_checks_that_do_not_reach_the_output_are_dropped():
    """A range check (min/max/gt, then bool) is traced but is not part of the output."""
    manifest = speaker_encoder()
    nodes = list(manifest.nodes)
    nodes.insert(1, Node("max", "call_function", "Tensor.max", (Ref("mels"),), out=meta((), ())))
    nodes.insert(2, Node("gt", "call_function", "Tensor.gt", (Ref("max"), 1.0),
                         out=meta((), (), dtype="bool")))
    ir = lower(type(manifest)(**{**manifest.__dict__, "nodes": tuple(nodes)}))
    assert all("max" not in s.expr for s in ir.stmts)


def test_cargo_toml_keeps_the_users_entries_and_comments(tmp_path):
    crate = tmp_path / "crate"
    crate.mkdir()
    (crate / "Cargo.toml").write_text(textwrap.dedent("""\
        # my crate, my comments
        [package]
        name = "my-models"
        version = "2.0.0"
        edition = "2021"

        [dependencies]
        anyhow = "1"  # for the CLI
        candle-core = { version = "0.3", features = ["mkl"] }
        """))
    text = cargo_toml_text(crate)
    assert "# my crate, my comments" in text and 'anyhow = "1"  # for the CLI' in text
    assert 'version = "2.0.0"' in text and 'name = "my-models"' in text
    assert 'candle-core = { version = "0.11.1", features = ["mkl"] }' in text
    assert 'candle-nn = "0.11.1"' in text
    assert 'pycandle-runtime = {path = "vendor/pycandle-runtime", version = "0.1.0"}' in text
    # its own workspace, with the runtime optimised (a member: `"*"` does not cover it)
    assert "[workspace]" in text and "[profile.dev.package.pycandle-runtime]" in text


def test_runtime_features_a_user_adds_are_kept(tmp_path):
    crate = tmp_path / "crate"
    crate.mkdir()
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "m"\n\n[dependencies]\n'
        'pycandle-runtime = { path = "../old/runtime", features = ["x"] }\n')
    text = cargo_toml_text(crate)
    assert ('pycandle-runtime = {path = "vendor/pycandle-runtime", version = "0.1.0", '
            'features = ["x"]}') in text


def test_crate_inside_a_foreign_workspace_gets_its_own(tmp_path):
    (tmp_path / "Cargo.toml").write_text('[workspace]\nmembers = ["other"]\n')
    text = cargo_toml_text(tmp_path / "gen")
    assert "[workspace]" in text and '[profile.dev.package."*"]' in text


def test_a_member_name_matches_from_the_workspace_root(tmp_path):
    """`members = ["generated"]` does not take in `zoo/generated`."""
    (tmp_path / "Cargo.toml").write_text('[workspace]\nmembers = ["generated", "crates/*"]\n')
    assert "[workspace]" in cargo_toml_text(tmp_path / "zoo" / "generated")
    assert "[workspace]" not in cargo_toml_text(tmp_path / "generated")
    assert "[workspace]" not in cargo_toml_text(tmp_path / "crates" / "gen")


def test_lib_rs_module_block_is_kept_in_sync(tmp_path):
    crate = tmp_path / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / "src" / "lib.rs").write_text("//! mine\npub mod helpers;\n")
    first = lib_rs_text(crate, {"b", "a"})
    assert first.startswith("//! mine\npub mod helpers;\n")
    assert "pub mod a;\npub mod b;" in first
    (crate / "src" / "lib.rs").write_text(first + "\n// trailing user text\n")
    second = lib_rs_text(crate, {"a", "c"})
    assert "pub mod b;" not in second and "pub mod c;" in second
    assert second.endswith("// trailing user text\n") and "pub mod helpers;" in second


def test_module_names_that_are_rust_keywords_become_valid_fields():
    manifest = speaker_encoder()
    modules = dict(manifest.modules)
    modules["type"] = modules.pop("proj")
    nodes = tuple(Node(n.name, n.op, "type", n.args, n.kwargs, n.out, n.source)
                  if n.target == "proj" else n for n in manifest.nodes)
    ir = lower(type(manifest)(**{**manifest.__dict__, "modules": modules, "nodes": nodes}))
    field = next(f for f in ir.fields if f.doc.startswith("`type`"))
    assert field.name == "type_" and 'vb.pp("type")' in field.init
    assert any("self.type_.forward(" in s.expr for s in ir.stmts)


def test_follow_on_problems_are_folded_into_their_root_cause():
    """Only root causes are listed: what needs an unsupported node's result is counted."""
    from pycandle.errors import UnsupportedError

    m = speaker_encoder()
    nodes = tuple(Node(n.name, n.op, "torch.special.bessel_j0" if n.name == "relu" else n.target,
                       n.args, n.kwargs, n.out, n.source) for n in m.nodes)
    m = type(m)(**{**m.__dict__, "nodes": nodes})
    m = with_node(m, Node("twice", "call_function", "Tensor.mul", (Ref("relu"), Ref("div")),
                          out=meta((2, 4), (1, 4))), Ref("twice"))
    with pytest.raises(UnsupportedError) as e:
        lower(m)
    (problem,) = e.value.problems
    assert problem.what == ("function torch.special.bessel_j0 is not supported "
                            "(and 3 uses of its result)")
    assert problem.source == "model.py:12"


def test_vendored_runtime_is_kept_in_step(tmp_path):
    """Codegen replaces an edited file of its runtime copy and deletes one the runtime does
    not have; the user's files beside the copy stay."""
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    crate = tmp_path / "crate"
    codegen(crate, tmp_path / "artifacts", ["speaker"])
    vendored = crate / "vendor" / "pycandle-runtime"
    (vendored / "src" / "lib.rs").write_text("// edited\n")
    (vendored / "src" / "gone.rs").write_text("// a file an older runtime had\n")
    (crate / "src" / "mine.rs").write_text("// the user's\n")
    changed = codegen(crate, tmp_path / "artifacts", ["speaker"])
    assert sorted(p.relative_to(crate).as_posix() for p in changed) == [
        "vendor/pycandle-runtime/src/gone.rs", "vendor/pycandle-runtime/src/lib.rs"]
    assert (vendored / "src" / "lib.rs").read_bytes() == (RUNTIME_DIR / "src" / "lib.rs").read_bytes()
    assert not (vendored / "src" / "gone.rs").exists()
    assert (crate / "src" / "mine.rs").read_text() == "// the user's\n"


def test_every_generated_struct_derives_debug_and_clone(tmp_path):
    """Models, their nested blocks and their streaming state can be printed and cloned."""
    write_manifest(tmp_path / "artifacts", speaker_encoder())
    codegen(tmp_path / "crate", tmp_path / "artifacts", ["speaker"])
    lines = (tmp_path / "crate" / "src" / "speaker.rs").read_text().splitlines()
    structs = [i for i, line in enumerate(lines) if line.startswith("pub struct ")]
    assert len(structs) >= 2  # the model and its state
    for i in structs:
        assert lines[i - 1].startswith("#[derive(Debug, Clone"), lines[i - 1:i + 1]


@pytest.mark.parametrize("dropout", [False, True], ids=["directly", "through a Dropout"])
def test_an_embedding_that_feeds_only_a_recurrent_layer_is_folded_into_it(dropout):
    """The layer reads the token ids (`forward_tokens`) and the model folds the embedding at
    load; the embedding keeps its own layer test."""
    ir = lower(tagger(dropout=dropout))
    assert [(f.layer, f.embedding) for f in ir.folds] == [("lstm", "embed")]
    code = "\n".join(s.expr for s in ir.stmts)
    assert "self.lstm.forward_tokens(&self.embed, tokens, " in code, code
    assert "self.embed.forward" not in code
    assert {t.node for t in ir.layer_tests} == {"embed", "lstm"}
    rust = render_model(ir)
    assert "let mut model = Self { embed, lstm };" in rust, rust
    assert "model.lstm.fold_embedding(&model.embed)?;" in rust


@pytest.mark.parametrize("manifest", [tagger(embedded_out=True), tagger(token_dtype="int32")],
                         ids=["embedding also returned", "int32 tokens"])
def test_an_embedding_is_not_folded_when_anything_else_needs_it(manifest):
    ir = lower(manifest)
    assert ir.folds == []
    code = "\n".join(s.expr for s in ir.stmts)
    assert "self.embed.forward(" in code and "forward_tokens" not in code, code
    assert "fold_embedding" not in render_model(ir)
