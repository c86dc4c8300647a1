"""Checkpoints that cannot execute code on load: one ``.npz`` of arrays plus a JSON config.

Written atomically (temporary file in the same directory, fsync, rename, fsync of the directory),
so a crash or a full disk mid-write leaves the previous checkpoint intact. Loading never unpickles:
``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "fastnn-checkpoint"
FORMAT_VERSION = 1
_CONFIG_KEY = "__fastnn_config__"


class CheckpointError(ValueError):
    """A file that is not a readable fastnn checkpoint (truncated, foreign, or a newer format)."""


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # the only way to read it; set back at once
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, fsyncs it, then renames it over
    ``path``: readers see the old file or the new one, never a part of either."""
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; the saved file gets the mode of the one it replaces, or
        # what open() would have given it (0666 less the umask)
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: dict) -> Path:
    """Writes ``arrays`` and the JSON-serialisable ``config`` to ``path`` atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    for key in arrays:
        if key == _CONFIG_KEY:
            raise ValueError(f"arrays: the key {_CONFIG_KEY!r} is reserved")
    header = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "config": config})
    payload = {k: np.array(v, order="C") for k, v in arrays.items()}  # keeps 0-d arrays 0-d
    payload[_CONFIG_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))
    return path


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a checkpoint written by :func:`save`: ``(arrays, config)``.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for anything
    that is not a complete fastnn checkpoint.
    """
    path = Path(path)
    if not path.exists() and path.suffix != ".npz" and path.with_name(path.name + ".npz").exists():
        path = path.with_name(path.name + ".npz")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if _CONFIG_KEY not in z.files:
                raise CheckpointError(f"{path}: not a fastnn checkpoint (no config record)")
            header = json.loads(bytes(z[_CONFIG_KEY]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != _CONFIG_KEY}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable fastnn checkpoint (truncated or foreign file): {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastnn checkpoint")
    if header.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {header.get('version')} is newer than this fastnn reads ({FORMAT_VERSION})")
    return arrays, header["config"]
