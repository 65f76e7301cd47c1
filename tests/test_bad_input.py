"""Bad input, end to end through the CLI: one clear message, a non-zero exit, nothing lost.

Every case starts from a good project (a model recorded and generated), breaks one thing, runs
the command and checks that the message names the config file and line, the model and the
field (where they apply), and that the artifacts and the crate are byte-identical afterwards.
models.yaml errors the loader finds on its own are in test_config.py; a Cargo.toml with the
user's edits and comments is kept (test_codegen.py).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from pycandle.cli import main  # noqa: E402

MODULE = """\
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, hidden=4):
            super().__init__()
            self.lstm = nn.LSTM(3, hidden, batch_first=True)
            self.proj = nn.Linear(hidden, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.proj(out)


    class Quoted(nn.Module):  # a submodule name that would end a Rust string literal

        def __init__(self, hidden=4):
            super().__init__()
            self.add_module('p"); panic!("', nn.Linear(3, 2))

        def forward(self, x):
            return getattr(self, 'p"); panic!("')(x)


    def not_a_module(hidden=4):
        return {"hidden": hidden}


    def out_of_memory(hidden=4):
        raise RuntimeError("no room for the model")
    """


def line_of(code: str) -> int:
    """The line of MODULE that holds `code`."""
    lines = textwrap.dedent(MODULE).splitlines()
    return next(i for i, line in enumerate(lines, start=1) if code in line)


RAISE_LINE = line_of('raise RuntimeError("no room for the model")')
FORWARD_LINE = line_of("out, _ = self.lstm(x)")

CONFIG = """\
    crate: crate
    artifacts: artifacts
    models:
      - name: tiny
        factory: usermodels:Tiny
        kwargs: {hidden: 4}
        inputs:
          - x: {shape: [2, 5, 3]}
          - x: {shape: [1, 3, 3]}
    """
# Lines of CONFIG, for the `models.yaml:<line>:` in messages
CRATE, ARTIFACTS, NAME, FACTORY, KWARGS, CASE0 = 1, 2, 4, 5, 6, 8
WEIGHTS = 7  # a `weights:` line inserted after kwargs


@pytest.fixture(scope="module")
def good_project(tmp_path_factory) -> Path:
    """models.yaml, the user's module, and the model recorded and generated."""
    root = tmp_path_factory.mktemp("good")
    (root / "usermodels.py").write_text(textwrap.dedent(MODULE))
    (root / "models.yaml").write_text(textwrap.dedent(CONFIG))
    for stage in ("record", "codegen"):
        assert main([stage, "--config", str(root / "models.yaml")]) == 0
    return root


@pytest.fixture
def project(good_project, tmp_path) -> Path:
    """A private copy of the good project (the artifacts' symlinks kept as they are)."""
    root = tmp_path / "project"
    shutil.copytree(good_project, root, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under `root` with its bytes, and every symlink with its target."""
    tree: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                tree[rel] = path.read_bytes()
    return tree


def listing(root: Path) -> list[str]:
    """The project's top level, but for Python's bytecode cache of the user's modules."""
    return sorted(p.name for p in root.iterdir() if p.name != "__pycache__")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


def add_weights(root: Path, file: str) -> None:
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n",
         f"    kwargs: {{hidden: 4}}\n    weights: {file}\n")


def good_weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "artifacts" / "tiny" / "weights.safetensors")


# --- the cases: each breaks one thing and names what the message must say -------------------


def weights_missing(root: Path) -> None:
    add_weights(root, "nowhere.safetensors")


def weights_garbage_safetensors(root: Path) -> None:
    (root / "w.safetensors").write_bytes(os.urandom(64))
    add_weights(root, "w.safetensors")


def weights_garbage_pt(root: Path) -> None:
    (root / "w.pt").write_bytes(b"\x80\x02garbage, not a pickle")
    add_weights(root, "w.pt")


def weights_pickled_code(root: Path) -> None:
    """A .pth whose unpickling would run a command: torch.load(weights_only=True) refuses it."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    torch.save({"lstm.weight_ih_l0": Payload()}, root / "w.pth")
    add_weights(root, "w.pth")


def weights_whole_model_pickled(root: Path) -> None:
    """torch.save(model) instead of torch.save(model.state_dict())."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save(model, root / "w.pt")
    add_weights(root, "w.pt")


def weights_missing_key(root: Path) -> None:
    state = good_weights(root)
    del state["proj.bias"]
    save_file(state, root / "w.safetensors")
    add_weights(root, "w.safetensors")


def weights_unexpected_key(root: Path) -> None:
    state = good_weights(root)
    state["head.weight"] = torch.zeros(2, 2)
    torch.save(state, root / "w.pt")
    add_weights(root, "w.pt")


def weights_wrong_shape(root: Path) -> None:
    state = good_weights(root)
    state["proj.weight"] = torch.zeros(3, 4)
    save_file(state, root / "w.safetensors")
    add_weights(root, "w.safetensors")


def module_syntax_error(root: Path) -> None:
    (root / "broken.py").write_text("import torch\n\ndef make(:\n    pass\n")
    edit(root / "models.yaml", "usermodels:Tiny", "broken:make")


def module_import_error(root: Path) -> None:
    (root / "broken.py").write_text("import torch\nimport no_such_package_here\n")
    edit(root / "models.yaml", "usermodels:Tiny", "broken:make")


def module_not_found(root: Path) -> None:
    edit(root / "models.yaml", "usermodels:Tiny", "nomodule:Tiny")


def factory_not_in_module(root: Path) -> None:
    edit(root / "models.yaml", "usermodels:Tiny", "usermodels:Small")


def factory_raises(root: Path) -> None:
    edit(root / "models.yaml", "usermodels:Tiny", "usermodels:out_of_memory")


def factory_not_a_module(root: Path) -> None:
    edit(root / "models.yaml", "usermodels:Tiny", "usermodels:not_a_module")


def submodule_name_not_plain(root: Path) -> None:
    edit(root / "models.yaml", "usermodels:Tiny", "usermodels:Quoted")


def kwargs_do_not_fit(root: Path) -> None:
    edit(root / "models.yaml", "{hidden: 4}", "{hidden: 4, colour: red}")


def inputs_name_no_argument(root: Path) -> None:
    edit(root / "models.yaml", "- x: {shape: [2, 5, 3]}", "- mels: {shape: [2, 5, 3]}")
    edit(root / "models.yaml", "- x: {shape: [1, 3, 3]}", "- mels: {shape: [1, 3, 3]}")


def inputs_wrong_shape(root: Path) -> None:
    edit(root / "models.yaml", "[2, 5, 3]", "[2, 5, 7]")


def name_escapes_upwards(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: ../x")


def name_with_slash(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: a/b")


def crate_under_a_file(root: Path) -> None:
    (root / "blocker").write_text("a file where a directory is needed\n")
    edit(root / "models.yaml", "crate: crate", "crate: blocker/crate")


def crate_is_a_file(root: Path) -> None:
    (root / "crate.txt").write_text("not a crate\n")
    edit(root / "models.yaml", "crate: crate", "crate: crate.txt")


def artifacts_under_a_file(root: Path) -> None:
    (root / "blocker").write_text("a file where a directory is needed\n")
    edit(root / "models.yaml", "artifacts: artifacts", "artifacts: blocker/artifacts")


def artifact_dir_is_a_file(root: Path) -> None:
    """A second model whose artifacts/<model> is taken by a file of the user's."""
    (root / "artifacts" / "other").write_text("my notes\n")
    with open(root / "models.yaml", "a") as f:
        f.write("  - name: other\n"
                "    factory: usermodels:Tiny\n"
                "    kwargs: {hidden: 3}\n"
                "    inputs:\n"
                "      - x: {shape: [1, 2, 3]}\n")


def cargo_toml_unparsable(root: Path) -> None:
    with open(root / "crate" / "Cargo.toml", "a") as f:
        f.write("\n[dependencies\nbroken = \n")


def manifest_missing(root: Path) -> None:
    """codegen of a model that was never recorded."""
    shutil.rmtree(root / "artifacts")


def manifest_corrupt(root: Path) -> None:
    (root / "artifacts" / "tiny" / "manifest.json").write_text('{"schema": 1, "name": ')


def yaml_python_tag(root: Path) -> None:
    """A YAML tag that would construct a Python object (and run a command) with yaml.load."""
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n",
         f"    kwargs: !!python/object/apply:os.system ['touch {root / 'PWNED'}']\n")


def config_not_text(root: Path) -> None:
    (root / "models.yaml").write_bytes(b"models:\n  - name: \xff\xfe\x00tiny\n")


# --- issue "Nothing lost, nothing injected, nothing falsely green" ------------------------------
# Bounded input, names, paths that overlap, files PyCandle did not write.


def yaml_alias_bomb(root: Path) -> None:
    """522 bytes of nested aliases in kwargs: each level multiplies the expansion by 9."""
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n",
         "    kwargs: {" + ", ".join(levels) + "}\n")


def yaml_nested_too_deeply(root: Path) -> None:
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n",
         "    kwargs: {hidden: " + "[" * 20000 + "]" * 20000 + "}\n")


def yaml_merge_key(root: Path) -> None:
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n", "    kwargs: {<<: {hidden: 4}}\n")


def models_empty(root: Path) -> None:
    (root / "models.yaml").write_text("crate: crate\nartifacts: artifacts\nmodels: []\n")


def crate_is_root(root: Path) -> None:
    edit(root / "models.yaml", "crate: crate", "crate: /")


def crate_is_config_dir(root: Path) -> None:
    edit(root / "models.yaml", "crate: crate", "crate: .")


def artifacts_is_config_dir_with_user_folder(root: Path) -> None:
    """`artifacts: .` and a model named like the user's folder `data/` (and `.data.bak`)."""
    (root / "data").mkdir()
    (root / "data" / "thesis.txt").write_text("years of work\n")
    (root / ".data.bak").write_text("a backup\n")
    edit(root / "models.yaml", "artifacts: artifacts", "artifacts: .")
    edit(root / "models.yaml", "name: tiny", "name: data")


def artifacts_in_crate_model_src(root: Path) -> None:
    """`artifacts:` pointing into the crate, a model named `src`: would replace its sources."""
    edit(root / "models.yaml", "artifacts: artifacts", "artifacts: crate")
    edit(root / "models.yaml", "name: tiny", "name: src")


def crate_in_artifacts(root: Path) -> None:
    edit(root / "models.yaml", "crate: crate", "crate: artifacts/crate")


def user_folder_named_like_model(root: Path) -> None:
    """A second model whose artifacts/<model> is the user's own folder, with a sibling
    `.notes.bak`: neither is PyCandle's to rename or delete."""
    (root / "artifacts" / "notes").mkdir()
    (root / "artifacts" / "notes" / "todo.txt").write_text("mine\n")
    (root / "artifacts" / ".notes.bak").write_text("my backup\n")
    with open(root / "models.yaml", "a") as f:
        f.write("  - name: notes\n"
                "    factory: usermodels:Tiny\n"
                "    kwargs: {hidden: 3}\n"
                "    inputs:\n"
                "      - x: {shape: [1, 2, 3]}\n")


def user_module_in_crate(root: Path) -> None:
    """The crate's src/tiny.rs is the user's own code, which PyCandle never wrote."""
    (root / "crate" / "src" / "tiny.rs").write_text("// my own tiny model\npub fn mine() {}\n")


def user_folder_named_like_the_runtime(root: Path) -> None:
    """The crate's vendor/pycandle-runtime/ is the user's own (not the copy codegen vendors)."""
    folder = root / "crate" / "vendor" / "pycandle-runtime"
    shutil.rmtree(folder, ignore_errors=True)  # PyCandle's copy, if codegen ran
    (folder / "src").mkdir(parents=True)
    (folder / "Cargo.toml").write_text('[package]\nname = "pycandle-runtime"\n')
    (folder / "src" / "lib.rs").write_text("// my fork\n")


def name_lib(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: lib")


def name_main(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: main")


def name_tests(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: tests")


def name_trailing_newline(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", 'name: "tiny\\n"')


def name_too_long(root: Path) -> None:
    edit(root / "models.yaml", "name: tiny", "name: " + "t" * 300)


def shape_too_large(root: Path) -> None:
    """8 TB: refused before torch tries to allocate it."""
    edit(root / "models.yaml", "[2, 5, 3]", "[1000000, 1000000, 2]")


def seed_beyond_int64(root: Path) -> None:
    edit(root / "models.yaml", "    kwargs: {hidden: 4}\n",
         f"    kwargs: {{hidden: 4}}\n    seed: {2**64}\n")


def int_bound_beyond_int64(root: Path) -> None:
    edit(root / "models.yaml", "- x: {shape: [2, 5, 3]}",
         f"- x: {{shape: [2, 5, 3], dtype: int64, high: {2**70}}}")


def manifest_odd_input_name(root: Path) -> None:
    """A hand-edited manifest whose input is not a node of its graph."""
    import json

    path = root / "artifacts" / "tiny" / "manifest.json"
    data = json.loads(path.read_text())
    data["inputs"] = ['x"); panic!("']
    path.write_text(json.dumps(data))


def rustfmt_not_on_path(root: Path) -> None:
    """Nothing to change in the project: the case's PATH lacks the tool."""


def cargo_not_on_path(root: Path) -> None:
    """Nothing to change in the project: the case's PATH lacks the tool."""


def _path_without(tool: str) -> str:
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d
            and shutil.which(tool, path=d) is None]
    return os.pathsep.join(dirs)


@dataclass(frozen=True)
class Case:
    breaks: Callable[[Path], None]
    command: str
    line: int | None  # models.yaml line the message points at (None: not about one line)
    says: tuple[str, ...]  # fragments of the message, in order
    env: dict[str, Callable[[], str]] | None = None

    @property
    def id(self) -> str:
        return self.breaks.__name__


MODEL = "model 'tiny':"
CASES = [
    Case(weights_missing, "record", WEIGHTS, (MODEL, "field 'weights':", "file not found",
                                              "nowhere.safetensors")),
    Case(weights_garbage_safetensors, "record", WEIGHTS,
         (MODEL, "field 'weights':", "cannot read", "w.safetensors", "SafetensorError")),
    Case(weights_garbage_pt, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.pt does not load with torch.load(weights_only=True)",
          "not a PyTorch state dict", "save the state dict instead")),
    Case(weights_pickled_code, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.pth does not load with torch.load(weights_only=True)",
          "pickled Python object (posix.system)", "could run code")),
    Case(weights_whole_model_pickled, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.pt", "pickled Python object (torch.nn",
          "torch.save(model.state_dict(), path)")),
    Case(weights_missing_key, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.safetensors does not fit the model",
          "missing keys ['proj.bias']")),
    Case(weights_unexpected_key, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.pt does not fit the model",
          "unexpected keys ['head.weight']")),
    Case(weights_wrong_shape, "record", WEIGHTS,
         (MODEL, "field 'weights':", "w.safetensors does not fit the model",
          "proj.weight: file (3, 4) vs model (2, 4)")),
    Case(module_syntax_error, "record", FACTORY,
         (MODEL, "field 'factory':", "cannot import 'broken': SyntaxError",
          "(at broken.py:3)")),
    Case(module_import_error, "record", FACTORY,
         (MODEL, "field 'factory':", "cannot import 'broken': ModuleNotFoundError",
          "no_such_package_here", "(at broken.py:2)")),
    Case(module_not_found, "record", FACTORY,
         (MODEL, "field 'factory':", "No module named 'nomodule'",
          "put nomodule.py (or the package nomodule/) next to models.yaml")),
    Case(factory_not_in_module, "record", FACTORY,
         (MODEL, "field 'factory':", "'usermodels' has no attribute 'Small'")),
    Case(factory_raises, "record", FACTORY,
         (MODEL, "field 'factory':", "usermodels:out_of_memory(hidden=4) raised RuntimeError: "
          "no room for the model", f"(at usermodels.py:{RAISE_LINE})")),
    Case(factory_not_a_module, "record", FACTORY,
         (MODEL, "field 'factory':", "returned dict, not a torch.nn.Module")),
    Case(submodule_name_not_plain, "record", NAME,
         ("model 'tiny': 1 unsupported construct(s)", "[<root>]",
          """submodule name 'p"); panic!("' is not made of letters, digits and underscores""",
          "rename it")),
    Case(kwargs_do_not_fit, "record", KWARGS,
         (MODEL, "field 'kwargs':", "unexpected keyword argument 'colour'")),
    Case(inputs_name_no_argument, "record", CASE0,
         (MODEL, "field 'inputs[0]':", "does not fit forward(x)")),
    Case(inputs_wrong_shape, "record", CASE0,
         (MODEL, "field 'inputs[0]':", "forward() raised RuntimeError",
          "Expected 3, got 7", f"(at usermodels.py:{FORWARD_LINE})")),
    Case(name_escapes_upwards, "record", NAME,
         ("field 'name':", "'../x' must be a lowercase identifier")),
    Case(name_with_slash, "codegen", NAME,
         ("field 'name':", "'a/b' must be a lowercase identifier")),
    Case(crate_under_a_file, "codegen", CRATE,
         ("field 'crate':", MODEL, "cannot write the crate at", "blocker/crate",
          "Not a directory", "nothing was changed", "writable directory")),
    Case(crate_is_a_file, "codegen", CRATE,
         ("field 'crate':", MODEL, "cannot write the crate at", "crate.txt",
          "nothing was changed")),
    Case(artifacts_under_a_file, "record", ARTIFACTS,
         ("field 'artifacts':", MODEL, "cannot write", "blocker/artifacts/tiny",
          "Not a directory", "writable directory", "the previous recordings are kept")),
    Case(artifact_dir_is_a_file, "record", ARTIFACTS,
         ("field 'artifacts':", "model 'other':", "artifacts/other is not a directory",
          "move it away")),
    Case(cargo_toml_unparsable, "codegen", None,
         ("crate/Cargo.toml: cannot parse Cargo.toml",)),
    Case(manifest_missing, "codegen", None,
         ("codegen stopped; nothing was written", MODEL, "artifacts/tiny/manifest.json",
          "manifest not found; run `pycandle record` first")),
    Case(manifest_corrupt, "codegen", None,
         (MODEL, "artifacts/tiny/manifest.json: malformed manifest")),
    Case(yaml_python_tag, "record", KWARGS,
         ("invalid YAML: the tag !!python/object/apply:os.system is not allowed",
          "plain data")),
    Case(config_not_text, "record", None,
         ("models.yaml: not a UTF-8 text file",)),
    Case(yaml_alias_bomb, "record", KWARGS,
         ("the YAML expands to more than 100000 values", "aliases")),
    Case(yaml_nested_too_deeply, "record", None, ("the YAML is nested too deeply",)),
    Case(yaml_merge_key, "record", KWARGS,
         ("YAML merge keys (`<<:`) are not supported", "write the keys out")),
    Case(models_empty, "record", 3, ("field 'models': lists no models", "add at least one")),
    Case(crate_is_root, "codegen", CRATE,
         ("field 'crate':", "'/' is /", "a directory of its own")),
    Case(crate_is_config_dir, "codegen", CRATE,
         ("field 'crate':", "the directory of models.yaml", "a directory of its own")),
    Case(artifacts_is_config_dir_with_user_folder, "record", ARTIFACTS,
         ("field 'artifacts':", "'.' is", "the directory of models.yaml")),
    Case(artifacts_in_crate_model_src, "record", ARTIFACTS,
         ("field 'artifacts':", "overlaps the crate directory", "separate directories")),
    Case(crate_in_artifacts, "codegen", CRATE,
         ("field 'crate':", "overlaps the artifacts directory", "separate directories")),
    Case(user_folder_named_like_model, "record", ARTIFACTS,
         ("field 'artifacts':", "model 'notes':", "artifacts/notes is a directory PyCandle did "
          "not write (it holds todo.txt)", "left alone")),
    Case(user_module_in_crate, "codegen", CRATE,
         ("field 'crate':", MODEL, "crate/src/tiny.rs exists and was not written by PyCandle",
          "left alone and nothing was changed")),
    Case(user_folder_named_like_the_runtime, "codegen", None,
         ("crate/vendor/pycandle-runtime exists and is not PyCandle's copy of its runtime",
          "left alone and nothing was changed")),
    Case(name_lib, "codegen", NAME, ("field 'name':", "'lib' names a file of the generated "
                                     "crate itself")),
    Case(name_main, "codegen", NAME, ("field 'name':", "'main' names a file")),
    Case(name_tests, "codegen", NAME, ("field 'name':", "'tests' names a file")),
    Case(name_trailing_newline, "record", NAME,
         ("field 'name':", "'tiny\\n' must be a lowercase identifier")),
    Case(name_too_long, "record", NAME, ("field 'name':", "is 300 characters long; at most 64")),
    Case(shape_too_large, "record", CASE0,
         (MODEL, "field 'inputs[0].x.shape':", "takes 8000000000000 bytes", "smaller shape")),
    Case(seed_beyond_int64, "record", WEIGHTS,
         (MODEL, "field 'seed':", "must be <= 4294967295", str(2**64))),
    Case(int_bound_beyond_int64, "record", CASE0,
         (MODEL, "field 'inputs[0].x.high':", "must be between", "for int64", str(2**70))),
    Case(manifest_odd_input_name, "codegen", None,
         (MODEL, "artifacts/tiny/manifest.json: field 'inputs'", "record --force")),
    Case(rustfmt_not_on_path, "codegen", None,
         ("rustfmt not found on PATH", "rustup component add rustfmt"),
         env={"PATH": lambda: _path_without("rustfmt")}),
    Case(cargo_not_on_path, "parity", None,
         ("cargo not found", "install a Rust toolchain", "https://rustup.rs"),
         env={"PATH": lambda: _path_without("cargo")}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_loses_nothing(project, case, capsys, monkeypatch):
    case.breaks(project)
    for name, value in (case.env or {}).items():
        monkeypatch.setenv(name, value())
    before = {d: snapshot(project / d) for d in ("artifacts", "crate")}
    files_before = listing(project)
    config = project / "models.yaml"
    capsys.readouterr()

    code = main([case.command, "--config", str(config)])

    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    if case.line is not None:
        assert f"{config}:{case.line}:" in err, err
    position = 0
    for fragment in case.says:  # each fragment present, in this order
        found = err.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in (after position {position}): {err}"
        position = found + len(fragment)
    assert {d: snapshot(project / d) for d in ("artifacts", "crate")} == before
    assert listing(project) == files_before
    assert not (project / "PWNED").exists()  # no payload ran
