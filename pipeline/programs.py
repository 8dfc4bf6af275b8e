"""What a saved Core ML program contains: its ops in order, with dtypes, as plain records."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.emulator.runtime import dtype_str, load_program
from pipeline.precision import canonical

NON_COMPUTE = {"const", "cast"}


@dataclass(frozen=True)
class OpRecord:
    index: int
    op_type: str
    name: str
    dtype: str           # dtype of its first output
    output: str          # name of its first output
    elements: int        # elements of its first output
    weights: int         # elements of const tensor inputs (weights)
    rank: int            # rank of its first output
    macs: int            # multiply-accumulates (conv, linear, matmul, einsum); else elements
    # Sizes for the device model (pipeline/device): bytes each op moves and its shape.
    input_bytes: int = 0     # bytes of its non-const tensor inputs (activations read)
    weight_bytes: int = 0    # bytes of its const tensor inputs over 16 elements (weights)
    output_bytes: int = 0    # bytes of all its outputs
    shape: tuple[int, ...] = ()  # shape of its first output
    kernel: int = 1          # conv: kernel elements (kh * kw); matmul/linear: reduction length K
    groups: int = 1          # conv groups (depthwise: groups == channels)
    chained_bytes: int = 0   # bytes of its input that the op just before it produced

    @property
    def key(self) -> str:
        return canonical(self.name)

    @property
    def is_compute(self) -> bool:
        return self.op_type not in NON_COMPUTE and not self.op_type.startswith("constexpr_")


def op_records(prog) -> list[OpRecord]:
    records = []
    previous = None  # output names of the op before, for chained_bytes
    for op in prog.functions["main"].operations:
        if op.op_type == "const":
            continue
        out = op.outputs[0]
        shape = _shape(out)
        weights = weight_bytes_in = input_bytes = chained = 0
        for v in op.inputs.values():
            for var in (v if isinstance(v, (list, tuple)) else [v]):
                if var.op is not None and var.op.op_type == "const":
                    if var.val is not None and np.asarray(var.val).size > 16:
                        weights += int(np.asarray(var.val).size)
                        weight_bytes_in += _nbytes(var)
                else:
                    input_bytes += _nbytes(var)
                    if previous is not None and var.name in previous and not chained:
                        chained = _nbytes(var)
        elements = int(np.prod(shape)) if shape else 1
        records.append(OpRecord(
            len(records), op.op_type, op.name, dtype_str(out), out.name, elements, weights,
            len(shape), _macs(op, shape, elements, weights), input_bytes, weight_bytes_in,
            sum(_nbytes(o) for o in op.outputs), tuple(shape), _kernel(op), _groups(op),
            chained))
        previous = {o.name for o in op.outputs}
    return records


def _shape(var) -> list[int]:
    try:
        dims = var.shape or ()
    except Exception:  # tuple / list / state types have no shape
        return []
    return [int(s) if isinstance(s, (int, np.integer)) else 1 for s in dims]


def _nbytes(var) -> int:
    """Bytes of a tensor variable (1 byte per bool, dtype width otherwise)."""
    dtype = dtype_str(var)
    width = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8, "int32": 4, "int64": 8, "int16": 2,
             "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}.get(dtype, 4)
    shape = _shape(var)
    return width * (int(np.prod(shape)) if shape else 1)


def _kernel(op) -> int:
    """conv: kernel elements (kh * kw); matmul/linear: reduction length K; else 1."""
    try:
        if op.op_type in ("conv", "conv_transpose"):
            return int(np.prod(op.inputs["weight"].shape[2:]))
        if op.op_type == "linear":
            return int(op.inputs["weight"].shape[-1])
        if op.op_type == "matmul":
            x = op.inputs["x"]
            tx = op.inputs.get("transpose_x")
            k = x.shape[-2] if tx is not None and tx.val else x.shape[-1]
            return int(k) if isinstance(k, (int, np.integer)) else 1
    except (KeyError, TypeError, AttributeError, IndexError):
        pass
    return 1


def _groups(op) -> int:
    g = op.inputs.get("groups") if op.op_type in ("conv", "conv_transpose") else None
    return int(g.val) if g is not None and g.val is not None else 1


def _macs(op, shape: list[int], elements: int, weights: int) -> int:
    if op.op_type in ("conv", "conv_transpose") and len(shape) > 1 and weights:
        return elements * max(1, weights // max(1, shape[1]))
    if op.op_type == "linear" and shape and weights:
        return elements * max(1, weights // max(1, shape[-1]))
    if op.op_type == "matmul":
        x = op.inputs["x"]
        k = x.shape[-2] if op.inputs.get("transpose_x") is not None and op.inputs["transpose_x"].val \
            else x.shape[-1]
        return elements * (int(k) if isinstance(k, (int, np.integer)) else 1)
    return elements


def read_ops(package: str | Path) -> list[OpRecord]:
    return op_records(load_program(package))


def weight_bytes(prog) -> int:
    total = 0
    for op in prog.functions["main"].operations:
        if op.op_type == "const":
            val = op.outputs[0].val
            if isinstance(val, np.ndarray):
                total += val.nbytes
    return total


def summarize(records: list[OpRecord]) -> dict:
    compute = [r for r in records if r.is_compute]
    by_type: dict[str, Counter] = {}
    for r in compute:
        by_type.setdefault(r.op_type, Counter())[r.dtype] += 1
    return {
        "compute_ops": len(compute),
        "ops_by_type": {t: sum(c.values()) for t, c in sorted(by_type.items())},
        "ops_by_dtype": dict(Counter(r.dtype for r in compute)),
        "ops_by_type_and_dtype": {t: dict(c) for t, c in sorted(by_type.items())},
        "casts": sum(1 for r in records if r.op_type == "cast"),
        "fp32_compute_ops": [{"op_type": r.op_type, "name": r.name} for r in compute
                             if r.dtype == "fp32"],
        "fp16_compute_ops": sum(1 for r in compute if r.dtype == "fp16"),
    }


def virtual_records(records: list, dtypes: Mapping[str, str]) -> list:
    """The FP32 program's op records retyped as a virtual mixed program types its ops
    (``dtypes``: op name -> output dtype), with a cast where program order enters or leaves
    an FP32 island (as the FP16 pass inserts them); bytes halve for ops made FP16."""
    names = {f.name for f in fields(records[0])} if records else set()

    def retype(r, dtype, **more):
        changes = {"dtype": dtype, **more}
        if r.dtype == "fp32" and dtype == "fp16":
            changes.update({k: getattr(r, k) // 2 for k in ("input_bytes", "weight_bytes",
                                                            "output_bytes") if k in names})
        return replace(r, **{k: v for k, v in changes.items() if k in names})

    out, current = [], "fp16"  # the FP16 pass casts the input to FP16 first
    for r in records:
        dtype = dtypes.get(r.name, r.dtype)
        if r.is_compute and dtype in ("fp16", "fp32") and dtype != current:
            size = 2 if dtype == "fp16" else 4
            out.append(retype(r, dtype, op_type="cast", name=f"{r.name}@cast", weights=0,
                              macs=r.elements, weight_bytes=0,
                              input_bytes=r.elements * (6 - size), output_bytes=r.elements * size))
            current = dtype
        out.append(retype(r, dtype))
    return [replace(r, index=i) for i, r in enumerate(out)]


def make_deterministic(package: Path) -> None:
    """Make a saved package's bytes depend on the program alone: coremltools names the
    package's items with random UUIDs (Manifest.json; renamed here from path and content with
    uuid5), stamps the conversion date, and writes protobuf maps in hash order."""
    import hashlib
    import json
    import uuid

    from coremltools.proto import Model_pb2

    # The model spec: protobuf maps in sorted order, and no conversion date in the metadata.
    spec_path = next(Path(package).glob("Data/com.apple.CoreML/*.mlmodel"))
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date", None)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    manifest_path = Path(package) / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = manifest.get("itemInfoEntries") or {}
    renamed = {}
    for old, info in entries.items():
        item = Path(package) / "Data" / info.get("path", "")
        digest = hashlib.sha256()
        for f in sorted([item] if item.is_file() else item.rglob("*")):
            if f.is_file():
                digest.update(f"{f.relative_to(item.parent)}\0".encode() + f.read_bytes())
        digest = digest.hexdigest()
        renamed[old] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{info.get('path')}:{digest}")).upper()
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(entries.items(),
                                                                     key=lambda kv: renamed[kv[0]])}
    if manifest.get("rootModelIdentifier") in renamed:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
