"""Files written safely and read with one-line errors: atomic writes (temp file, fsync, rename),
JSON, content hashes, and output folders checked before work and replaced only after it (`check_output_folder`,
`staged_output`).  A leaf module: run directories, checkpoints and the split cache use it."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Type

from .errors import CheckpointError, ConfigError, L2LAppError

#: errors that more disk space would not cure: the fix is another folder or its permissions
_PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call `write(binary_file)` on a temp file beside `path`, fsync, then rename over `path`.

    A crash or a full disk leaves the previous file (if any) untouched; a failure raises
    CheckpointError (one line, naming the file).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if tmp is not None:
            _unlink_quietly(tmp)
        kept = " (the previous one is kept)" if path.exists() else ""
        fix = ("choose another --out or fix its permissions" if exc.errno in _PERMISSION_ERRNOS
               else "free some disk space or choose another --out")
        raise CheckpointError(f"could not write {path}: {exc.strerror or exc}{kept}; {fix}") from None
    except BaseException:
        if tmp is not None:
            _unlink_quietly(tmp)
        raise


def nearest_existing(path: Path) -> Path:
    """`path` if it exists (a dangling link counts), else its nearest existing ancestor."""
    path = Path(path)
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def missing_folders(path: Path) -> List[Path]:
    """The folders `mkdir -p path` would create, deepest first ([] when `path` exists)."""
    path = Path(path)
    return [path, *path.parents][:len(path.parts) - len(nearest_existing(path).parts)]


def check_writable(folder: Path, what: str, error: Type[L2LAppError] = ConfigError,
                   fix: str = "choose another --out or fix its permissions") -> None:
    """Raise `error` (one line) unless files can be written in `folder`, or it can be created.

    Checked by writing and removing a probe file in `folder` or, when it does not exist yet, in its
    nearest existing parent: nothing is created and nothing is left behind.  `what` names the
    folder in the message (e.g. "--out bench/b1"), `fix` says what to do about it.
    """
    folder = Path(folder)
    existing = nearest_existing(folder)
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise error(f"cannot write {what}: {where}; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".l2l-app-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if existing == folder else f" (in {existing})"
        raise error(f"cannot write {what}{where}: {exc.strerror or exc}; {fix}") from None


def check_output_folder(folder: Path, results: Sequence[str], overwrite: bool, command: str) -> None:
    """Refuse, before any work, an --out folder that cannot take `command`'s results: a file, an
    unwritable folder, or (without `overwrite`) one already holding any of the files `results`."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; choose a directory")
    held = [name for name in results if os.path.lexists(folder / name)]
    if held and not overwrite:
        raise ConfigError(f"--out {folder} already holds the results of an earlier {command} ({', '.join(held)}); "
                          f"pass --overwrite to replace them once the new ones are written, or choose another --out")
    check_writable(folder, f"--out {folder}")


@contextlib.contextmanager
def staged_output(folder: Path) -> Iterator[Path]:
    """A temporary folder inside `folder` (created if needed) to write a command's new files into;
    when the block succeeds each is moved over its namesake in `folder` (`os.replace`), so earlier
    results are replaced only once every new file is ready.  When it fails, the staged files are
    removed, and so are the folders this call created (`folder`, its missing parents) while empty."""
    folder = Path(folder)
    created = make_folder(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))
    except BaseException:
        remove_empty(created)
        raise
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, folder / item.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def make_folder(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it created, deepest first (for `remove_empty`)."""
    missing = missing_folders(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each of `folders` (deepest first) while it is empty; stop at the first that is not."""
    for d in folders:
        try:
            Path(d).rmdir()
        except OSError:
            return


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented JSON with a trailing newline."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; an unreadable one is a one-line ConfigError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
