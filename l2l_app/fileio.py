"""Files written safely and read with one-line errors: atomic writes (temp file, fsync, rename),
JSON, content hashes.  A leaf module: run directories, checkpoints and the split cache use it."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError, ConfigError


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call `write(binary_file)` on a temp file beside `path`, fsync, then rename over `path`.

    A crash or a full disk leaves the previous file (if any) untouched; a failure raises
    CheckpointError (one line, naming the file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
        _unlink_quietly(tmp)
        kept = " (the previous one is kept)" if path.exists() else ""
        raise CheckpointError(f"could not write {path}: {exc.strerror or exc}{kept}; "
                              f"free some disk space or choose another --out") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


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
