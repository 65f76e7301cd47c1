"""Nothing falsely green, nothing injected: the scenarios that need a crate built by cargo.

Two projects whose crates have the same package name share one CARGO_TARGET_DIR, as the README
recommends. The second one's `artifacts:` path is a payload that would close the string literal
of the parity test's ARTIFACTS constant and add a `#[test]` running a command, and its golden
file is cut short. Parity must never pass for the wrong project, never run the payload, and
name the damaged golden file. One test, so the crates build once each.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.codegen import cargo  # noqa: E402
from pycandle.rust import rust_str  # noqa: E402
from test_bad_input import CONFIG, MODULE, snapshot  # noqa: E402

# Closes the literal in `concat!(env!("CARGO_MANIFEST_DIR"), "/../<artifacts>/tiny")`: pasted
# unescaped, this is valid Rust with one more test, which creates PWNED when parity runs.
PAYLOAD = ('x"); #[test] fn pwn() { std::process::Command::new("touch").arg("PWNED")'
           '.status().unwrap(); } const _Y: &str = concat!("')


def make_project(root: Path, artifacts: str = "artifacts") -> Path:
    root.mkdir(parents=True)
    (root / "usermodels.py").write_text(textwrap.dedent(MODULE))
    config = root / "models.yaml"
    config.write_text(textwrap.dedent(CONFIG).replace("artifacts: artifacts",
                                                      f"artifacts: '{artifacts}'"))
    pin_lockfile(root / "crate")
    for stage in ("record", "codegen"):
        assert main([stage, "--config", str(config)]) == 0
    return config


def age(tree: Path, seconds: float) -> None:
    """Set every file's mtime `seconds` in the past (negative: in the future)."""
    when = time.time() - seconds
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (when, when), follow_symlinks=False)


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), " ".join(err.split())


def tree(root: Path) -> dict[str, bytes | str]:
    """The project's files, but for Cargo.lock (cargo itself records the package name there)."""
    return {k: v for k, v in snapshot(root).items() if not k.endswith("Cargo.lock")}


def pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("PWNED")]


@pytest.mark.cargo
def test_two_projects_sharing_a_target_dir_never_pass_for_each_other(tmp_path, cargo_env,
                                                                      capsys):
    a_config = make_project(tmp_path / "a")
    b_config = make_project(tmp_path / "b", artifacts=PAYLOAD)
    a, b = a_config.parent, b_config.parent
    # The same package name: cargo gives the two test binaries one file in the target dir.
    assert cargo.lib_name(a / "crate") == cargo.lib_name(b / "crate")
    assert (a / "crate" / "Cargo.toml").read_text() == (b / "crate" / "Cargo.toml").read_text() \
        or "pycandle-runtime" in (b / "crate" / "Cargo.toml").read_text()

    # The payload reaches the Rust only inside one string literal.
    test_rs = (b / "crate" / "tests" / "parity" / "tiny.rs").read_text()
    literal = rust_str(f"/../{PAYLOAD}/tiny")
    assert f'concat!(env!("CARGO_MANIFEST_DIR"), {literal})' in test_rs
    tests = [line for line in test_rs.splitlines() if line.lstrip().startswith("#[test]")]
    assert len(tests) == 2  # case0 and case1, nothing else

    # B's golden file is cut short (a careless copy, a full disk)
    golden = b / PAYLOAD / "tiny" / "golden.safetensors"
    golden.write_bytes(golden.read_bytes()[:100])

    # A builds and passes; B's crate is older than A's build, so cargo sees nothing to rebuild
    code, out, err = run(capsys, "parity", "--config", str(a_config))
    assert code == 0 and "parity: 2 passed, 0 failed" in out, err
    age(b / "crate", 3600)
    before = tree(b)
    code, out, err = run(capsys, "parity", "--config", str(b_config))
    assert code == 2, (out, err)
    assert "passed" not in out + err, (out, err)
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert "this parity test binary was built to read" in err, err
    assert f"{a}/crate/../artifacts/tiny" in err and f"{b}/" in err, err
    assert "package name of its own" in err, err
    assert tree(b) == before and not pwned(a, b)

    # B's sources changed since: cargo rebuilds B's binary, which names the damaged golden
    age(b / "crate", -5)
    code, out, err = run(capsys, "parity", "--config", str(b_config))
    assert code == 2, (out, err)
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert f"{b}/crate/../{PAYLOAD}/tiny/golden.safetensors is not a readable safetensors " \
        "file (invalid header length)" in err, err
    assert "run `pycandle record --force`" in err, err
    assert not pwned(a, b)

    # recorded again, B passes: the payload directory is just a directory name
    assert main(["record", "--force", "--config", str(b_config)]) == 0
    code, out, err = run(capsys, "parity", "--config", str(b_config))
    assert code == 0 and "parity: 2 passed, 0 failed" in out, err
    assert not pwned(a, b)

    # and A, now older than B's build, is not passed by B's binary either
    age(a / "crate", 3600)
    code, out, err = run(capsys, "parity", "--config", str(a_config))
    assert code == 2 and "this parity test binary was built to read" in err, (out, err)


def test_new_crates_of_different_projects_get_different_package_names(tmp_path):
    """Deterministic (no path, no clock): the crate's directory name and its models."""
    names = {cargo.package_name("generated", {"voice_encoder"}),
             cargo.package_name("generated", {"tiny"}),
             cargo.package_name("generated", {"tiny", "voice_encoder"})}
    assert len(names) == 3
    assert cargo.package_name("generated", {"tiny"}) == cargo.package_name("generated", {"tiny"})
    assert all(n.startswith("generated-") for n in names)
