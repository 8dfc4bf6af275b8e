"""Stage 1, trace: build the model, make its evaluation inputs, trace it, save the reference.

Writes artifacts/trace/: model.pt (torch.jit) or model.pt2 (torch.export), inputs.npz,
reference.npz (FP32 PyTorch outputs, one row per sample) and manifest.json.
"""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline import artifacts
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, model_section, to_dict
from pipeline.errors import StageError, UserError

log = logging.getLogger("pipeline.trace")
METHODS = ("jit", "export")


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
    import torch  # after the checks, not above: pipeline/cli.py

    from pipeline import models

    torch.manual_seed(int(model_cfg.get("seed") or 0))
    model = models.TupleOutputs(models.build_model(model_cfg)).eval()
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
                save_jit(traced, tmp / "model.pt")
                program = "model.pt"
            else:
                exported = torch.export.export(model, example).run_decompositions({})
                strip_provenance(exported)
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


def save_jit(traced, path: Path) -> None:
    """torch.jit.save, less the debug records: those hold the absolute path of every source
    file on the model's call stack (the checkout's, the virtualenv's), so the same model
    traced in another folder had other bytes and another DVC hash. TorchScript loads and
    runs the same without them; the archive is rewritten by torch's own writer (its
    alignment, its serialization id computed from the records kept) at the file format
    version jit.save wrote: at the writer's default (3) torch reads `aten::div` as the old
    integer division and wraps each one in an `if`, which coremltools converts to `cond`."""
    import torch

    full = io.BytesIO()
    torch.jit.save(traced, full)
    full.seek(0)
    reader, writer = torch._C.PyTorchFileReader(full), torch._C.PyTorchFileWriter(str(path))
    names = reader.get_all_records()  # in archive order, as jit.save wrote them
    version = ".data/version" if ".data/version" in names else "version"  # where it writes it
    writer.set_min_version(int(reader.get_record(version).decode().strip()))
    for name in names:
        if not name.endswith(".debug_pkl") and name not in (version, ".data/serialization_id"):
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()


def strip_provenance(exported) -> None:
    """Each node's source stack (absolute paths) and provenance (`from_node`, with graph
    ids that are memory addresses) out of an ExportedProgram: the same graph saved twice, or
    from another clone, had other bytes. Neither is needed to load or convert it."""
    for module in exported.graph_module.modules():
        for node in module.graph.nodes if hasattr(module, "graph") else ():
            node.meta.pop("stack_trace", None)
            node.meta.pop("from_node", None)


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
