"""The classifier output, as coremltools/converters/mil/mil/ops/defs/iOS15/classify.py
defines it: the label of the highest probability and a {label: probability} dict."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, py


@op()
def classify(probabilities, classes):
    labels = py(classes)
    probs = probabilities.reshape(-1).float().tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    label = labels[best]
    top = label if isinstance(label, str) else torch.tensor(int(label), dtype=torch.int64)
    return top, dict(zip(labels, probs))
