"""The config's schema: one dataclass per section, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `config_schema` first in its defaults, so Hydra composes every YAML
file and every command-line override onto these types: a wrong type (`report.fp16_limit=abc`)
or an unknown key (`precision.fp32_opz=[pow]`, `+precsion=fp16`) fails at composition, naming
the key, before any stage runs. `pipeline.config` turns those errors into one line.

To add a section: write its dataclass here, add a field for it to `Config`, and give its
values in `conf/config.yaml`. Model builders take their own keyword arguments, which go under
`model.args` (an open dict: the builder's signature is their schema).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Names become folder names (artifacts/convert/<precision.name>/): letters, digits, _ . -
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@dataclass
class InputConf:
    name: str = MISSING
    shape: List[int] = MISSING
    dtype: str = "float32"
    range: Optional[List[float]] = None   # [low, high] of generated values


@dataclass
class DataConf:
    """Where evaluation inputs come from: a function (`_target_` + its keys), a file, or
    values drawn in each input's range (seeded by model.seed)."""
    _target_: Optional[str] = None
    file: Optional[str] = None            # .npz, one array per input, [samples, *shape]
    count: Optional[int] = None           # images / samples the function makes
    seed: Optional[int] = None            # the function's own seed (e.g. generated images)
    folder: Optional[str] = None          # a folder of images (edgesam's sample_images)
    sentences_file: Optional[str] = None  # minilm's tokenize
    args: Dict[str, Any] = field(default_factory=dict)  # further keywords for `_target_`


@dataclass
class ToleranceConf:
    min_cosine: float = 0.99
    min_snr_db: float = 20.0
    allow_internal_nonfinite: bool = False  # true: an op with an inf/NaN output may still pass


@dataclass
class ModelConf:
    name: str = MISSING
    _target_: str = MISSING               # the builder: a dotted path to a function or class
    args: Dict[str, Any] = field(default_factory=dict)  # the builder's keyword arguments
    seed: Optional[int] = None            # seeds the synthetic weights (and generated inputs)
    checkpoint: Optional[str] = None
    inputs: List[InputConf] = MISSING
    outputs: Optional[List[str]] = None
    data: DataConf = field(default_factory=DataConf)
    samples: int = 4                      # generated samples when inputs come from ranges
    tolerance: ToleranceConf = field(default_factory=ToleranceConf)
    task_metric: Optional[str] = None
    # What each variant slot of `dvc repro` (params.yaml `variants`) means for this model:
    # slot -> conf/precision/<option>.yaml. A slot not listed is the option of the same name.
    variants: Dict[str, str] = field(default_factory=dict)


@dataclass
class RegionConf:
    start: Optional[str] = None
    end: Optional[str] = None


@dataclass
class TargetConf:
    min_snr_db: Optional[float] = None
    min_cosine: Optional[float] = None
    allow_internal_nonfinite: Optional[bool] = None  # null: the model's tolerance


@dataclass
class PrecisionConf:
    name: str = MISSING
    compute: str = MISSING                # fp32 | fp16 | mixed | auto
    fp32_ops: List[str] = field(default_factory=list)
    fp32_regions: List[RegionConf] = field(default_factory=list)
    fp32_names: List[str] = field(default_factory=list)
    target: TargetConf = field(default_factory=TargetConf)   # precision=auto only
    config: Optional[str] = None          # set when model.variants maps this slot to another file


@dataclass
class PathsConf:
    artifacts: str = "artifacts"


@dataclass
class TraceConf:
    method: str = "jit"


@dataclass
class ConvertConf:
    minimum_deployment_target: str = "iOS16"


@dataclass
class LatencyConf:
    warmup: int = 3
    runs: int = 20
    compute_units: List[str] = field(
        default_factory=lambda: ["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"])


@dataclass
class EvaluateConf:
    numerics: str = "device"              # device | ieee | native_fp16 (emulator/numerics)
    numerics_profile: Optional[str] = None  # force ne | gpu | cpu | ieee | PATH on FP16 ops
    emulator_mode: Optional[str] = None   # legacy: fp32_compute (= ieee) | native_fp16
    device: str = "cpu"
    diagnostics: bool = True
    latency: LatencyConf = field(default_factory=LatencyConf)


@dataclass
class DeviceConf:
    """The Apple device placement, latency and device numerics are for (pipeline/device)."""
    chip: str = "M2"
    compute_units: str = "ALL"            # CPU_ONLY | CPU_AND_GPU | CPU_AND_NE | ALL


@dataclass
class TrackingConf:
    uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = None
    enabled: bool = True


@dataclass
class ReportConf:
    fp16_limit: float = 65504.0


@dataclass
class SearchConf:
    max_evaluations: int = 200
    prefer_regions: bool = True
    samples: Optional[int] = None


@dataclass
class Config:
    model: ModelConf = MISSING
    precision: PrecisionConf = MISSING
    backend: str = "auto"
    paths: PathsConf = field(default_factory=PathsConf)
    device: DeviceConf = field(default_factory=DeviceConf)
    trace: TraceConf = field(default_factory=TraceConf)
    convert: ConvertConf = field(default_factory=ConvertConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    report: ReportConf = field(default_factory=ReportConf)
    search: SearchConf = field(default_factory=SearchConf)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
