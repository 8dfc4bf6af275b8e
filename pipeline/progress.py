"""Progress bars (tqdm, on stderr) for the steps that take more than a few seconds: the
samples an evaluation runs, the candidates a precision search tries.

They show under `dvc repro` and in logs too (not only on a terminal); PIPELINE_PROGRESS=0
turns them off.
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def enabled() -> bool:
    return os.environ.get("PIPELINE_PROGRESS", "1").lower() not in ("0", "off", "false", "no")


def bar(desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A bar to update by hand (``update``, ``set_postfix_str``); use it as a context."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5,
                dynamic_ncols=True, disable=not enabled())

