"""Importing coremltools: once, quietly, without the optional packages it only probes.

``import coremltools`` tries every package it has a converter or a flag for (coremltools/_deps).
Two of those cost more than half of its import here and do nothing for this project:
- scikit-learn (2.3 s with the scipy.stats it pulls in): coremltools 9.0 supports 0.17-1.5.1 and
  disables its sklearn converter for the 1.9 that mlflow installs ("scikit-learn version ...
  is not supported ... Disabling scikit-learn conversion API"), so hiding it changes nothing;
- transformers (1.3 s): it only sets ``_HAS_HF``, which no coremltools 9.0 module reads.
A package another module already imported is left alone (its cost is paid). Measured here:
``import coremltools`` 7.3-9.0 s -> 4.0-5.0 s; every stage that converts or reads a package
starts that much sooner, and each joblib worker too (benchmarks/sweep_parallel.py).
"""
from __future__ import annotations

import contextlib
import io
import sys
from typing import Iterator

UNUSED_PROBES = ("sklearn", "transformers")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools prints progress bars and proxy warnings on import and load; hide them."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def coremltools():
    """The coremltools module, imported without its Linux proxy warnings on stderr and without
    the probes above (an ``import x`` of a ``None`` entry in sys.modules raises ImportError,
    which coremltools takes as "not installed")."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hidden = [name for name in UNUSED_PROBES if name not in sys.modules]
    try:
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        with quiet():
            import coremltools as ct
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return ct
