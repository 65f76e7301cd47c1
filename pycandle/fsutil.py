"""Atomic writes: an interrupted run leaves the previous good output in place.

A single file is written under a temporary name and renamed over the old one. A set of files
that must change together (a model's recording) lives in a directory reached through a
symlink, and switches to a new set by one rename of that symlink: see `write_dir_atomic`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock between concurrent runs
    fcntl = None

# Temporary names: `.<name>.<16 hex>.tmp`, next to the file they will replace.
_TMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")


def _create_exclusive(path_for: callable) -> tuple[int, Path]:
    """Create a new file at `path_for(random)`; the mode follows the umask, as for any file."""
    while True:
        path = path_for(secrets.token_hex(8))
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def write_atomic(path: Path, data: bytes | str) -> bool:
    """Write `data` to `path` via a temporary file and a rename.

    Returns False (and leaves the file, and its mtime, untouched) when the content is unchanged,
    so cargo's incremental build is not invalidated needlessly.
    """
    if isinstance(data, str):
        data = data.encode()
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_exclusive(lambda r: path.with_name(f".{path.name}.{r}.tmp"))
    try:
        if path.is_file():
            os.chmod(tmp, path.stat().st_mode & 0o7777)  # keep the file's permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def remove_stale_temps(directory: Path) -> None:
    """Delete the temporary files a killed `write_atomic` left in `directory`."""
    if directory.is_dir():
        for entry in directory.iterdir():
            if _TMP.match(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)


# --- a directory of files that switches as a whole ------------------------------------------
#
#   artifacts/enc          -> .enc.3f9a0c1e   (a relative symlink: what readers open)
#   artifacts/.enc.3f9a0c1e/                  (the current set of files)
#
# Writing a new set: fill and fsync a fresh `.enc.<random>/`, create a symlink `.enc.<random>.tmp`
# to it and rename that over `enc`. rename(2) is atomic, so a reader, or a run killed at any
# instant, sees the old set or the new one, never a mix. Version directories other than the
# current one are then deleted (and so are the leftovers of a killed run, the next time).
#
# A plain directory `enc/` (written before this scheme) is renamed to `.enc.legacy` just before
# the switch. A kill between those two renames leaves no `enc` and an intact `.enc.legacy`,
# which the next write (or `tidy_dir_versions`) links back as the current set.
#
# Writers hold a lock on the parent directory, so a second run waits rather than deleting the
# first one's new set as a leftover. Readers need no lock.


def _legacy(link: Path) -> Path:
    return link.with_name(f".{link.name}.legacy")


def _ours(link: Path) -> bool:
    """Whether `link` is a symlink this scheme made (to a sibling `.<name>.<suffix>`)."""
    if not link.is_symlink():
        return False
    target = os.readlink(link)
    return "/" not in target and target.startswith(f".{link.name}.")


def _version_entry(link: Path, name: str) -> bool:
    """Whether `name`, in `link`'s directory, is one this scheme makes for `link`: a version
    directory `.<link>.<8 hex>`, its temporary link `.<link>.<8 hex>.tmp` or `.<link>.legacy`.
    Anything else (the user's `.<link>.bak`, say) is not PyCandle's to delete."""
    return re.fullmatch(re.escape(f".{link.name}.") + r"(?:[0-9a-f]{8}(?:\.tmp)?|legacy)",
                        name) is not None


def _check_writable_target(link: Path, files: dict[str, bytes]) -> None:
    if link.is_symlink():
        if not _ours(link):
            raise OSError(f"{link} is a symlink PyCandle did not make; remove it (its target "
                          "is left alone) and run again")
    elif link.exists() and not link.is_dir():
        raise OSError(f"{link} is not a directory; move it away and run again")
    elif link.is_dir():
        # A plain directory is taken over only when it holds nothing but the files of a
        # recording (written before the symlinks): anything else is the user's, left alone.
        foreign = sorted(p.name for p in link.iterdir() if p.name not in files
                         or p.is_symlink() or not p.is_file())
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OSError(f"{link} is a directory PyCandle did not write (it holds {shown}); "
                          "it is left alone: move it away, or rename the model or choose "
                          "another `artifacts:` directory, and run again")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory`, held by one writer at a time."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tidy_dir_versions(link: Path) -> None:
    """Finish an interrupted switch to the symlink layout, and delete every version directory
    and temporary link of `link` other than the current one."""
    if link.parent.is_dir():
        with _locked(link.parent):
            _tidy(link)


def _tidy(link: Path) -> None:
    legacy = _legacy(link)
    if not link.exists() and not link.is_symlink() and legacy.is_dir():
        os.symlink(legacy.name, link)
    current = os.readlink(link) if _ours(link) else None
    for entry in link.parent.iterdir():
        if _version_entry(link, entry.name) and entry.name != current:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def write_dir_atomic(link: Path, files: dict[str, bytes]) -> bool:
    """Make the directory `link` hold exactly `files` (name -> content), switching from the old
    set to the new one in a single atomic step (see the layout above).

    Returns False, writing nothing, when `link` already holds these files byte for byte.
    """
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    with _locked(link.parent):
        _check_writable_target(link, files)
        _tidy(link)
        if link.is_dir() and sorted(p.name for p in link.iterdir()) == sorted(files) \
                and all((link / name).read_bytes() == data for name, data in files.items()):
            return False
        _switch(link, files)
        _tidy(link)
    return True


def _switch(link: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a fresh version directory, then rename a link to it over `link`."""
    while True:
        version = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
        try:
            version.mkdir()  # mode from the umask (mkdtemp would make it private)
            break
        except FileExistsError:
            continue
    tmp_link = version.with_name(version.name + ".tmp")
    try:
        for name, data in files.items():
            with open(version / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(version)
        os.symlink(version.name, tmp_link)
        if link.is_dir() and not link.is_symlink():
            os.rename(link, _legacy(link))  # a plain directory cannot be renamed over
        os.replace(tmp_link, link)  # the switch
    except BaseException:
        tmp_link.unlink(missing_ok=True)
        shutil.rmtree(version, ignore_errors=True)
        if not link.exists() and not link.is_symlink() and _legacy(link).is_dir():
            os.rename(_legacy(link), link)  # the switch failed: put the plain directory back
        raise
    _fsync_dir(link.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
