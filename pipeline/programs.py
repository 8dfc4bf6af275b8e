"""What a saved Core ML program contains: its ops in order, with dtypes, as plain records."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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

    @property
    def key(self) -> str:
        return canonical(self.name)

    @property
    def is_compute(self) -> bool:
        return self.op_type not in NON_COMPUTE and not self.op_type.startswith("constexpr_")


def op_records(prog) -> list[OpRecord]:
    records = []
    for op in prog.functions["main"].operations:
        if op.op_type == "const":
            continue
        out = op.outputs[0]
        shape = [int(s) if isinstance(s, (int, np.integer)) else 1 for s in (out.shape or ())]
        weights = 0
        for v in op.inputs.values():
            for var in (v if isinstance(v, (list, tuple)) else [v]):
                if var.op is not None and var.op.op_type == "const" and var.val is not None \
                        and np.asarray(var.val).size > 16:
                    weights += int(np.asarray(var.val).size)
        elements = int(np.prod(shape)) if shape else 1
        records.append(OpRecord(len(records), op.op_type, op.name, dtype_str(out), out.name,
                                elements, weights, len(shape), _macs(op, shape, elements, weights)))
    return records


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
