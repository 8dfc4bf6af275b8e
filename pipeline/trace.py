"""Stage 1, trace: build the model, make its evaluation inputs, trace it, save the reference.

Writes artifacts/trace/: model.pt (torch.jit) or model.pt2 (torch.export), inputs.npz,
reference.npz (FP32 PyTorch outputs, one row per sample) and manifest.json.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline import artifacts, models
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, model_section, to_dict
from pipeline.errors import StageError, UserError

log = logging.getLogger("pipeline.trace")
METHODS = ("jit", "export")


class TupleOutputs(torch.nn.Module):
    """Wraps a model so it returns a tuple of tensors in a fixed order."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        out = self.model(*args)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out.values())
        return tuple(out)


def output_names(model_cfg, count: int) -> list[str]:
    names = list(model_cfg.get("outputs") or [])
    if names and len(names) != count:
        raise UserError(f"model.outputs names {len(names)} outputs, the model returns {count}",
                        "list one name per output, or leave model.outputs empty")
    return names or [f"output_{i}" for i in range(count)]


def run(cfg: DictConfig) -> None:
    method = cfg.trace.method
    if method not in METHODS:
        raise UserError(f"unknown trace.method '{method}'", f"choose one of: {', '.join(METHODS)}")
    model_cfg = model_section(cfg)
    out_dir = artifacts_dir(cfg) / "trace"
    artifacts.check_replaceable(out_dir, is_dir=True)  # before the work
    torch.manual_seed(int(model_cfg.get("seed") or 0))
    model = TupleOutputs(models.build_model(model_cfg)).eval()
    inputs = models.make_inputs(model_cfg)
    specs = models.input_specs(model_cfg)
    n = len(next(iter(inputs.values())))
    log.info("model %s: %d samples of %s", model_cfg["name"], n,
             ", ".join(f"{s.name}{list(s.shape)}" for s in specs))

    started = time.perf_counter()
    refs: list[tuple] = []
    with torch.inference_mode():
        for i in range(n):
            args = [torch.from_numpy(inputs[s.name][i]) for s in specs]
            try:
                refs.append(tuple(o.detach().float().numpy() for o in model(*args)))
            except Exception as exc:
                raise StageError("trace", f"the model's forward pass on input {i} raised "
                                 f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}",
                                 "check model.inputs shapes and dtypes against the model") from None
    eager_s = (time.perf_counter() - started) / n
    names = output_names(model_cfg, len(refs[0]))
    check_reference(refs, names)
    example = tuple(torch.from_numpy(inputs[s.name][0]) for s in specs)
    artifacts.check_free_space(out_dir.parent, sum(
        p.numel() * p.element_size() for p in model.state_dict().values())
        + sum(a.nbytes for a in inputs.values()) + sum(o.nbytes for r in refs for o in r),
        "the traced model, inputs and reference")

    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        started = time.perf_counter()
        try:
            if method == "jit":
                traced = torch.jit.trace(model, example, check_trace=False, strict=False)
                torch.jit.save(traced, str(tmp / "model.pt"))
                program = "model.pt"
            else:
                exported = torch.export.export(model, example).run_decompositions({})
                torch.export.save(exported, str(tmp / "model.pt2"))
                program = "model.pt2"
        except UserError:
            raise
        except Exception as exc:
            artifacts.raise_if_disk_full(tmp, exc)
            raise StageError("trace", f"torch.{'jit.trace' if method == 'jit' else 'export'} "
                             f"raised {exc.__class__.__name__}: {str(exc).strip().splitlines()[0]}",
                             "try trace.method=export (or jit), or simplify the model's forward") from None
        trace_s = time.perf_counter() - started
        artifacts.write_npz(tmp / "inputs.npz", inputs)
        artifacts.write_npz(tmp / "reference.npz", {name: np.stack([r[j] for r in refs])
                                                    for j, name in enumerate(names)})
        artifacts.write_json(tmp / "manifest.json", {
            "model": model_cfg["name"],
            "method": method,
            "program": program,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs],
            "outputs": names,
            "samples": n,
            "tolerance": model_cfg.get("tolerance") or {},
            "task_metric": model_cfg.get("task_metric"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "torch_version": torch.__version__,
        })
        artifacts.write_lineage(tmp, "trace", {"model": model_cfg, "trace": to_dict(cfg.trace)}, {})
    # Timings only in the log: the trace folder's bytes depend on the config alone.
    log.info("traced %s with %s in %.1f s (eager forward %.3f s) -> %s", model_cfg["name"],
             method, trace_s, eager_s, out_dir)


def check_reference(refs: list[tuple], names: list[str]) -> None:
    """A reference with NaN or Inf cannot judge anything: refuse it, saying how much."""
    for j, name in enumerate(names):
        values = np.stack([r[j] for r in refs])
        bad = float(np.mean(~np.isfinite(values)))
        if bad:
            raise UserError(f"the PyTorch reference output '{name}' is {100 * bad:.1f}% NaN/Inf",
                            "check model.checkpoint (or the model's weights and inputs): the FP32 "
                            "reference must be finite")


def main() -> None:
    main_for("trace", run)


if __name__ == "__main__":
    main()
