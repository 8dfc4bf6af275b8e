"""`hydra/launcher=cluster`: a sweep's jobs as Ray tasks on a running Ray cluster.

Built on the hydra-ray-launcher plugin (its job runner and Ray start-up), with three things
it lacks:
- routing: a job whose backend is `coreml` asks for the `macos` resource, which only Mac
  workers offer (`ray start ... --resources='{"macos": 1}'`); other jobs go anywhere. With no
  Mac in the cluster such a job fails after `mac_wait_s` with one line saying how to add one;
- no silent retries: a job whose worker dies fails (Ray's `max_retries` is 0 by default;
  set `hydra.launcher.max_retries=N` to allow N retries, logged as such by Ray);
- one failed job does not sink the sweep: each job's result is gathered on its own, a lost
  job returns `Lost` (pipeline/sweeps/multirun.py prints one line for it), and
  the MLflow runs it left RUNNING are marked KILLED (pipeline/sweeps/runs.py).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from pipeline.errors import UserError

log = logging.getLogger("pipeline")


@dataclass
class ClusterLauncherConf:
    _target_: str = ""             # set by hydra_plugins/pipeline_launchers (Hydra's rule)
    address: str = "auto"          # the head's address (ray start --head prints it), or auto
    mac_resource: str = "macos"    # the custom resource only Mac workers offer
    mac_wait_s: float = 60.0       # how long a coreml job waits for a Mac worker to join
    num_cpus: float = 1.0          # CPUs a job takes on its worker
    max_retries: int = 0           # Ray's retries of a job whose worker died (0: it fails)
    init: dict = field(default_factory=dict)   # more ray.init arguments


def needs_mac(cfg: DictConfig) -> bool:
    """Jobs that can only run on macOS: the coreml backend (real Core ML latency, compute
    plans). backend=auto runs wherever it lands (coreml on a Mac, the emulator elsewhere)."""
    return str(cfg.get("backend", "auto")) == "coreml"


class ClusterLauncher(Launcher):
    def __init__(self, address: str = "auto", mac_resource: str = "macos",
                 mac_wait_s: float = 60.0, num_cpus: float = 1.0, max_retries: int = 0,
                 init: Optional[dict] = None) -> None:
        self.address, self.mac_resource, self.mac_wait_s = address, mac_resource, mac_wait_s
        self.num_cpus, self.max_retries, self.init = num_cpus, max_retries, dict(init or {})
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, log_to_driver=True, **self.init)
        except (ConnectionError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UserError(f"no Ray cluster answers at hydra.launcher.address='{self.address}' "
                            f"({first})", "start one with `make ray-head` (and workers with "
                            "`make ray-worker HEAD=host:6379`), or use hydra/launcher=joblib")

    def has_mac(self) -> bool:
        import ray

        deadline = time.monotonic() + self.mac_wait_s
        while True:
            if ray.cluster_resources().get(self.mac_resource, 0) >= 1:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

        from pipeline.sweeps import runs

        setup_globals()
        assert self.config and self.hydra_context and self.task_function
        self.connect()
        sweep_id = uuid.uuid4().hex[:8]
        results: dict[int, JobReturn] = {}
        pending: dict[Any, tuple[int, DictConfig]] = {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"sweep-{sweep_id}-{idx}"
                cfg.hydra.job.num = idx
            options: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": self.max_retries}
            if needs_mac(cfg):
                if not self.has_mac():
                    results[idx] = failed(cfg, overrides, UserError(
                        f"no Mac worker in the Ray cluster (no node offers the "
                        f"'{self.mac_resource}' resource; waited {self.mac_wait_s:.0f} s)",
                        "on a Mac: ray start --address=HEAD:6379 --resources="
                        f"'{{\"{self.mac_resource}\": 1}}' (make ray-mac-worker HEAD=...)"))
                    continue
                options["resources"] = {self.mac_resource: 1}
            log.info("cluster job #%d (%s): %s", idx, "Mac" if needs_mac(cfg) else "any worker",
                     " ".join(filter_overrides(overrides)))
            ref = ray.remote(**options)(_run_job).remote(
                hydra_context=self.hydra_context, sweep_config=cfg,
                task_function=self.task_function, singleton_state=Singleton.get_state())
            pending[ref] = (idx, cfg)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                idx, cfg = pending.pop(done[0])
                try:
                    results[idx] = ray.get(done[0])
                except Exception as exc:  # the worker died, or Ray lost the task
                    results[idx] = failed(cfg, cfg.hydra.overrides.task, exc)
                    runs.close_job_runs(cfg, cfg.hydra.job.id)
        except KeyboardInterrupt:  # Ctrl-C on the driver: stop the rest, close their runs
            for ref, (idx, cfg) in pending.items():
                ray.cancel(ref, force=True)
                runs.close_job_runs(cfg, cfg.hydra.job.id)
            raise
        return [results[i] for i in sorted(results)]


@dataclass
class Lost:
    """What a job that never finished returns (its worker died, no worker could take it).
    Hydra's basic sweeper raises on a FAILED JobReturn, ending the whole sweep, so a lost job
    is a COMPLETED JobReturn holding this; pipeline/sweeps/multirun.py prints its line."""
    reason: str
    exit_code: int = 1


def failed(cfg: DictConfig, overrides: Sequence[str], exc: BaseException) -> JobReturn:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    ret = JobReturn(overrides=list(overrides), hydra_cfg=cfg, status=JobStatus.COMPLETED)
    ret.return_value = Lost(f"{type(exc).__name__}: {first}" if not isinstance(exc, UserError)
                            else first)
    return ret
