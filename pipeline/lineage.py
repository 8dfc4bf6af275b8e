"""Does an input folder hold what this stage was asked for? Each stage's output folder has a
lineage.json (pipeline/artifacts.py: the config that produced it and its inputs'
fingerprints); these checks compare it with the composed config and with the upstream
folders now on disk, and refuse a mismatch naming both sides and the command that fixes it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import UserError


def _flat(data: Any, prefix: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: data}


def differences(held: Mapping, asked: Mapping, prefix: str) -> list[tuple[str, Any, Any]]:
    a, b = _flat(held, prefix), _flat(asked, prefix)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_section(record: dict, key: str, asked: Mapping, where: Path, rerun: str) -> None:
    """The folder's recorded config section ``key`` must equal the one asked for."""
    held = (record.get("config") or {}).get(key) or {}
    if held.get("name") != asked.get("name"):
        raise UserError(f"{where} holds {key} '{held.get('name')}', you asked for "
                        f"'{asked.get('name')}'",
                        f"run `{rerun}` or pass {key}={held.get('name')}")
    diff = differences(held, asked, key)
    if diff:
        k, was, now = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise UserError(f"{where} was made with {k}={was!r}, you asked for {k}={now!r}{more}",
                        f"run `{rerun}` with the same overrides, or drop the override")


def check_upstream(record: dict, name: str, current: str, where: Path, rerun: str) -> None:
    """The folder was made from the upstream folder ``name`` as it is now (same fingerprint)."""
    made_from = (record.get("upstream") or {}).get(name)
    if made_from != current:
        raise UserError(f"{where} was made from {name} {made_from}, but {name} is now {current} "
                        "(an earlier or later run)", f"re-run `{rerun}`")
