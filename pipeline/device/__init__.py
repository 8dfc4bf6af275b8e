"""The device model: per-chip figures, op placement and latency of a Core ML program,
estimated without a device and calibrated on published Core ML measurements.

    from pipeline.device import estimate
    est = estimate(pipeline.programs.read_ops(package), chip="M2", compute_units="ALL")
    est.latency_ms, est.summary(), est.rows()
"""
from pipeline.device.chips import CHIPS, Chip, get_chip
from pipeline.device.estimate import (COMPUTE_UNITS, DeviceEstimate, OpEstimate, estimate)

__all__ = ["CHIPS", "Chip", "get_chip", "COMPUTE_UNITS", "DeviceEstimate", "OpEstimate",
           "estimate"]
