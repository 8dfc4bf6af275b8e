"""Hydra takes launchers only from the `hydra_plugins` namespace: `hydra/launcher=cluster` is
pipeline/sweeps/cluster.py's launcher (Ray, with Mac-only jobs routed to Mac workers)."""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from pipeline.sweeps import cluster


class ClusterLauncher(cluster.ClusterLauncher):
    pass


@dataclass
class ClusterLauncherConf(cluster.ClusterLauncherConf):
    _target_: str = "hydra_plugins.pipeline_launchers.cluster_launcher.ClusterLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="cluster", node=ClusterLauncherConf,
                             provider="pipeline")
