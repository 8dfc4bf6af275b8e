"""The `emulator` backend: runs a saved Core ML program op by op on Linux (see runtime.py)."""
from pipeline.emulator.runtime import MODES, Emulator, build_plan, load_program

__all__ = ["Emulator", "MODES", "build_plan", "load_program"]
