"""Where a run came from: the git commit, DVC's output hashes, package versions, the process
and host that made it, and the pipeline run it belongs to (the nearest `dvc` process, the DVC
experiment, or PIPELINE_RUN_ID)."""
from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.errors import UserError

SAFE_ID = re.compile(r"[A-Za-z0-9_.:@/+-]{1,200}")


def git_commit(cwd: Path = Path(".")) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_stage_hashes(stages: list[str], lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each named stage's outputs, from dvc.lock (stages finished before this one)."""
    if not lock_path.is_file():
        return {}
    import yaml

    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for stage in stages:
        entry = (lock.get("stages") or {}).get(stage) or {}
        hashes = [o.get("md5", "") for o in entry.get("outs") or []]
        if hashes:
            out[f"dvc.{stage}"] = ",".join(hashes)
    return out


def versions() -> dict[str, str]:
    import torch

    from pipeline.coreml_import import coremltools

    return {"coremltools": coremltools().__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


RUN_PID, RUN_HOST, RUN_JOB = "pipeline.pid", "pipeline.host", "pipeline.job"
JOB_ENV = "PIPELINE_JOB_ID"  # set by a sweep's job (pipeline/sweeps): its runs carry the id


def process_tags() -> dict[str, str]:
    """Who made a run: its process and host, and the sweep job it belongs to (if any)."""
    tags = {RUN_PID: str(os.getpid()), RUN_HOST: socket.gethostname()}
    if os.environ.get(JOB_ENV):
        tags[RUN_JOB] = os.environ[JOB_ENV]
    return tags


@dataclass(frozen=True)
class PipelineRun:
    key: str      # the parent run's tag pipeline.key
    label: str    # in the parent run's name
    source: str   # where the key came from


@dataclass(frozen=True)
class Process:
    pid: int
    ident: str    # host, boot and start time: a pid alone is reused
    command: str


def _linux_process(pid: int) -> tuple[int, str, list[str]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], [a.decode("utf-8", "replace") for a in args if a]


def _ps_process(pid: int) -> tuple[int, str, list[str]] | None:
    try:
        out = subprocess.run(["ps", "-o", "ppid=,lstart=,args=", "-p", str(pid)],
                             capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) < 7:
        return None
    return int(out[0]), "_".join(out[1:6]), out[6:]


def _is_dvc(args: list[str]) -> bool:
    names = [Path(a).name for a in args[:3]]
    return bool(names) and (names[0] == "dvc" or names[1:2] == ["dvc"] or names[1:3] == ["-m", "dvc"])


def dvc_ancestor() -> Process | None:
    """The nearest `dvc` process above this one (DVC runs each stage command as its child,
    possibly through a shell; `dvc queue` workers run each experiment in its own one)."""
    linux = Path("/proc/self/stat").exists()
    boot = ""
    if linux:
        with contextlib.suppress(OSError):
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    pid = os.getppid()
    for _ in range(32):
        if pid <= 1:
            return None
        info = _linux_process(pid) if linux else _ps_process(pid)
        if info is None:
            return None
        ppid, started, args = info
        if _is_dvc(args):
            sub = next((a for a in args[1:] if not a.startswith("-") and Path(a).name != "dvc"), "")
            return Process(pid, f"{socket.gethostname()}:{boot}:{pid}:{started}",
                           f"dvc {sub}".strip())
        pid = ppid
    return None


def pipeline_run(environ: Mapping[str, str] = os.environ) -> PipelineRun | None:
    """The key every stage of one pipeline run shares: PIPELINE_RUN_ID if set (a launcher or
    a user grouping runs), else the DVC experiment's name with its dvc process, else the
    nearest dvc process (host, boot, pid, start time); None for a stage run by hand."""
    given = environ.get("PIPELINE_RUN_ID", "")
    if given:
        if not SAFE_ID.fullmatch(given):
            raise UserError(f"PIPELINE_RUN_ID={given!r} is not a usable run id",
                            "use up to 200 letters, digits and _ . : @ / + -")
        return PipelineRun(f"id:{given}", given, "PIPELINE_RUN_ID")
    dvc = dvc_ancestor()
    exp = environ.get("DVC_EXP_NAME", "")
    if exp:
        return PipelineRun(f"dvc-exp:{exp}:{dvc.ident if dvc else ''}", exp,
                           f"dvc experiment {exp}")
    if dvc:
        return PipelineRun(f"dvc:{dvc.ident}", f"{dvc.command.replace(' ', '-')}-{dvc.pid}",
                           f"{dvc.command} (pid {dvc.pid})")
    return None
