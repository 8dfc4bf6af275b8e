"""Atomic file and directory writes: nothing half-written is ever left where a reader looks."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``dest``.

    On any failure (or a kill) only a ``.tmp`` sibling is left, never ``dest`` itself.
    For a directory, an existing ``dest`` is replaced in two renames so a reader sees either
    the old one or the new one, never a mix.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(dest.parent, dest.name)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = tmp_root / dest.name
    (tmp_root / ".pid").write_text(str(os.getpid()))
    try:
        if is_dir:
            tmp.mkdir()
        yield tmp
        if dest.exists() or dest.is_symlink():
            old = tmp_root / (dest.name + ".old")
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def write_text(dest: str | Path, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json(dest: str | Path, data: Any) -> Path:
    return write_text(dest, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_npz(path: str | Path) -> dict:
    """Every array of an .npz file, loaded."""
    import numpy as np

    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def read_trace(artifacts_root: str | Path) -> tuple[Path, dict]:
    """The trace stage's folder and manifest, for the stages after it."""
    from pipeline.errors import UserError

    trace_dir = Path(artifacts_root) / "trace"
    manifest_path = trace_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"no traced model in {trace_dir}", "run `python -m pipeline.trace` first")
    return trace_dir, read_json(manifest_path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def clean_stale_tmp(folder: str | Path, name: str, older_than_s: float = 3600.0) -> None:
    """Remove what killed writers of ``name`` left in ``folder`` (``.NAME.*.tmp``). Only old
    ones, or ones whose writer is gone: a live writer's folder is never touched."""
    import time

    folder = Path(folder)
    for p in folder.glob(f".{name}.*.tmp"):
        pid_file = p / ".pid"
        try:
            pid = int(pid_file.read_text()) if pid_file.is_file() else None
        except ValueError:
            pid = None
        alive = pid is not None and _pid_alive(pid)
        if not alive and (pid is not None or time.time() - p.stat().st_mtime > older_than_s):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet is a zombie: dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True
