"""Atomic file and directory writes: nothing half-written is ever left where a reader looks."""
from __future__ import annotations

import contextlib
import hashlib
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


LINEAGE = "lineage.json"
# Files a stage may keep next to its outputs that are neither tracked nor fingerprinted
# (wall times, MLflow run ids): they differ on every run.
UNTRACKED = ("timings.json", ".gitignore")  # older evaluate folders' wall times; DVC's


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``dest``.

    On any failure (or a kill) only a ``.tmp`` sibling is left, never ``dest`` itself.
    For a directory, an existing ``dest`` is replaced in two renames so a reader sees either
    the old one or the new one, never a mix. Only this pipeline's own output is ever
    replaced: an existing directory must be empty or hold a lineage.json, and a file is never
    replaced by a directory (or the reverse).
    """
    dest = Path(dest)
    check_replaceable(dest, is_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(dest.parent, dest.name)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = tmp_root / dest.name
    (tmp_root / ".pid").write_text(str(os.getpid()))
    try:
        if is_dir:
            tmp.mkdir()
        yield tmp
        check_replaceable(dest, is_dir)
        if is_dir and dest.is_dir():
            keep_dvc_files(dest, tmp)
        if dest.exists() or dest.is_symlink():
            old = tmp_root / (dest.name + ".old")
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def keep_dvc_files(old: Path, new: Path) -> None:
    """Carry DVC's own files (the .gitignore it writes beside the outputs it caches) from the
    folder being replaced into its replacement. A stage run by hand otherwise drops them, and
    a stage that depends on the whole folder (the report on artifacts/evaluate) sees it change
    although every output is the same."""
    for path in old.rglob(".gitignore"):
        target = new / path.relative_to(old)
        if target.parent.is_dir() and not target.exists():
            shutil.copy2(path, target)


def check_replaceable(dest: Path, is_dir: bool) -> None:
    from pipeline.errors import UserError

    if dest.name in ("", ".", "..") or dest.is_symlink():
        raise UserError(f"refusing to write over '{dest}': not a plain output path",
                        "use a plain name under paths.artifacts")
    if not dest.exists():
        return
    if is_dir != dest.is_dir():
        kind = "a directory" if dest.is_dir() else "a file"
        raise UserError(f"'{dest}' is {kind}; this stage writes a {'directory' if is_dir else 'file'} "
                        "there", f"move '{dest}' away, or choose another paths.artifacts")
    if is_dir and not (dest / LINEAGE).is_file() and any(  # DVC leaves untracked files and
            p.is_file() and p.name not in UNTRACKED for p in dest.rglob("*")):  # empty folders
        raise UserError(f"'{dest}' holds files this pipeline did not write (no {LINEAGE})",
                        f"move '{dest}' away or delete it, then re-run the stage")


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Refuse before the work when the disk under ``folder`` cannot take ``need`` bytes (some
    writers, torch.save among them, abort the process on a full disk instead of raising)."""
    from pipeline.errors import UserError

    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    need = int(need * 1.2) + (1 << 20)
    if free < need:
        raise UserError(f"not enough free space for {what} under '{folder}': needs about "
                        f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free",
                        "free space there, or set paths.artifacts to another disk")


def raise_if_disk_full(path: Path, exc: BaseException, margin: int = 1 << 20) -> None:
    """Libraries that write through their own code (torch.save) report a full disk as a
    RuntimeError: turn it back into the OSError it is, so it reads as one line."""
    import errno

    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < margin:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def write_text(dest: str | Path, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json(dest: str | Path, data: Any) -> Path:
    return write_text(dest, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """A JSON file; a missing or damaged one is a UserError naming the file and ``fix``."""
    from pipeline.errors import UserError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"'{path}' is missing", fix or "re-run the stage that writes it") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"'{path}' is damaged ({type(exc).__name__}: {_first_line(exc)})",
                        fix or "re-run the stage that writes it") from None


def read_npz(path: str | Path, fix: str | None = None) -> dict:
    """Every array of an .npz file, loaded; a damaged file is a UserError naming it."""
    import numpy as np

    from pipeline.errors import UserError

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy and zipfile raise many kinds on a damaged file
        raise UserError(f"'{path}' is not a readable .npz ({type(exc).__name__}: "
                        f"{_first_line(exc)})", fix or "re-run the stage that writes it") from None


def write_npz(path: str | Path, arrays: dict) -> None:
    """Like numpy.savez, but byte-identical for identical arrays (fixed zip timestamps)."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------------------ lineage

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_digest(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LINEAGE and p.name not in UNTRACKED}


def write_lineage(folder: Path, stage: str, config: dict, upstream: dict[str, str]) -> dict:
    """Record what produced ``folder``: the stage, the config that matters, the fingerprints
    of its inputs, and a digest of every file (checked by :func:`open_output`)."""
    record = {"stage": stage, "config": config, "upstream": dict(sorted(upstream.items())),
              "files": _files(folder)}
    write_json(folder / LINEAGE, record)
    return record


def fingerprint(folder: Path) -> str:
    """An output folder's fingerprint: the hash of its lineage record."""
    return file_digest(Path(folder) / LINEAGE)[:16]


def open_output(folder: str | Path, rerun: str) -> dict:
    """The lineage record of a stage's output folder, after checking every file it lists is
    there and unchanged; anything missing or damaged -> one UserError naming it and ``rerun``."""
    from pipeline.errors import UserError

    folder = Path(folder)
    fix = f"re-run `{rerun}`"
    # a writer killed mid-write leaves a hidden temporary beside this folder; when DVC then
    # restores the folder from its run cache, the writer never runs again: its reader sweeps
    clean_stale_tmp(folder.parent, folder.name)
    if not folder.is_dir():
        raise UserError(f"no output at {folder}", f"run `{rerun}` first")
    record = read_json(folder / LINEAGE, fix)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        raise UserError(f"'{folder / LINEAGE}' is damaged (no file list)", fix)
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"'{path}' is missing from {folder}", fix)
        if file_digest(path) != digest:
            raise UserError(f"'{path}' changed or is damaged since the stage wrote it "
                            "(its digest differs from lineage.json)", fix)
    record["fingerprint"] = fingerprint(folder)
    return record


def read_trace(artifacts_root: str | Path) -> tuple[Path, dict]:
    """The trace stage's folder and manifest (checked against its lineage), for later stages."""
    trace_dir = Path(artifacts_root) / "trace"
    record = open_output(trace_dir, "python -m pipeline.trace")
    manifest = read_json(trace_dir / "manifest.json", "re-run `python -m pipeline.trace`")
    manifest["lineage"] = record
    return trace_dir, manifest


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
