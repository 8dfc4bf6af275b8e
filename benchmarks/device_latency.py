"""The device model against published Core ML latencies: per model and chip, published vs
estimated (leave-one-family-out: each family predicted by a fit on the others), median
|error| and Spearman rank correlation, beside the two-parameter baseline
`latency = a + b * MACs` fitted per chip on the same split; then the source article's table
(EdgeSAM encoder 1x3x1024x1024 on M2, ALL) and the estimate's own run time.

Targets (issue 11): median |error| <= 25%, rank correlation >= 0.9, below the baseline's;
article FP16/FP32/mixed within 25% of 12.19/36.05/12.63 ms, mixed/FP16 in [1.00, 1.15],
FP32 on the GPU; under 1 s per variant.
    python -m benchmarks.device_latency
"""
from __future__ import annotations

import time

from pipeline.device import calibrate, estimate, features

ARTICLE = {"fp16": 12.19, "fp32": 36.05, "mixed": 12.63}


def main() -> None:
    rows, progs = calibrate.load_set()
    v = calibrate.validate(rows, progs)
    print("Published Core ML latency vs the device model's leave-one-family-out estimate")
    print(f"{'model':22} {'chip':8} {'prec':6} {'published':>9} {'estimated':>9} {'error':>7}"
          f" {'a+b*MACs':>9} {'error':>7}")
    for i, m in enumerate(rows):
        est = v["predictions"][i]
        base = v["baseline"].get(i)
        btxt = f"{base:9.2f} {base / m.latency_ms - 1:+7.0%}" if base is not None else \
            f"{'n/a':>9} {'':>7}"
        print(f"{m.model:22} {m.chip:8} {m.precision:6} {m.latency_ms:9.2f} {est:9.2f} "
              f"{est / m.latency_ms - 1:+7.0%} {btxt}")
    print(f"\ndevice model, all {len(rows)} rows: median |error| {v['median_abs_error']:.1%}, "
          f"Spearman {v['spearman']:.3f}")
    n = len(v["baseline_rows"])
    print(f"on the {n} rows where the baseline is defined (a chip keeps two other-family rows):"
          f" device model {v['model_median_abs_error_on_baseline_rows']:.1%}, "
          f"baseline a+b*MACs {v['baseline_median_abs_error']:.1%} "
          f"(Spearman {v['baseline_spearman']:.3f})")

    programs = features.read_ops_file()
    print("\nSource article, EdgeSAM encoder 1x3x1024x1024, M2, ALL (full fit, data/fit.json)")
    lat = {}
    for variant, ms in ARTICLE.items():
        started = time.perf_counter()
        est = estimate(programs[f"edgesam_encoder/{variant}"], "M2", "ALL")
        took = time.perf_counter() - started
        s = est.summary()
        lat[variant] = est.latency_ms
        print(f"  {variant:6} published {ms:6.2f} ms  estimated {est.latency_ms:6.2f} ms "
              f"({est.latency_ms / ms - 1:+.0%})  NE {s['ne_op_share']:.0%} GPU "
              f"{s['gpu_op_share']:.0%} CPU {s['cpu_op_share']:.0%} of ops, "
              f"{est.switches} switches, estimate took {took * 1000:.0f} ms")
    print(f"  mixed/FP16: published {ARTICLE['mixed'] / ARTICLE['fp16']:.3f}, "
          f"estimated {lat['mixed'] / lat['fp16']:.3f}")
    print(f"  source label: {est.source}")


if __name__ == "__main__":
    main()
