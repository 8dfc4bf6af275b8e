"""Compare DVC experiments: one row per experiment and variant, narrow enough for a terminal.

`dvc exp show` gives every metric of every variant a column of its own (variants differ per
model, so mixed and mixed_layernorm land in different columns). This reads
`dvc exp show --json` and turns each variant's summary.json (artifacts/evaluate/<v>/) into a
row: the experiment, its model, the variant, passes, SNR, Neural Engine share, latency and
FP32 ops. Not a pipeline stage: it reads what DVC recorded.

    python -m pipeline.compare                 # or: make compare
    python -m pipeline.compare --md            # a markdown table
    python -m pipeline.compare -- -A           # extra arguments go to `dvc exp show`
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from typing import Any, Iterator

from pipeline.errors import UserError
from pipeline.tracking import headline_ms

SUMMARY = re.compile(r"(?:^|/)evaluate/([^/]+)/summary\.json$")
COLUMNS = ("experiment", "model", "variant", "passes", "SNR dB", "cos min", "NE share", "ms",
           "FP32 ops")


def exp_show(extra: list[str]) -> list[dict]:
    dvc = shutil.which("dvc")
    if dvc is None:
        raise UserError("`dvc` is not on PATH", "activate the environment (source .venv/bin/activate)")
    proc = subprocess.run([dvc, "exp", "show", "--json", *extra], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"`{' '.join(['dvc exp show --json', *extra])}` failed: {last}",
                        "run it in the project folder (a DVC repo with a git commit)")
    return json.loads(proc.stdout or "[]")


def revisions(entries: list[dict]) -> Iterator[tuple[str, dict]]:
    """(label, data) for the workspace, each commit and each of its experiments."""
    for entry in entries:
        rev = entry.get("rev") or "?"
        label = entry.get("name") or (rev if rev == "workspace" else rev[:7])
        if entry.get("data"):
            yield label, entry["data"]
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("data"):
                    yield f"  {rev.get('name') or rev['rev'][:7]}", rev["data"]


def rows(entries: list[dict], units: str = "ALL") -> list[tuple]:
    out = []
    for label, data in revisions(entries):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        for path, metric in sorted((data.get("metrics") or {}).items()):
            found = SUMMARY.search(path)
            if not found or "data" not in metric:
                continue
            s: dict[str, Any] = metric["data"]
            try:
                ms, kind = headline_ms(s, units)
                out.append((label, params.get("model", "?"), found.group(1),
                            "yes" if s["accuracy"]["passes"] else "no",
                            f"{s['accuracy']['snr_db']:.1f}", f"{s['accuracy']['cosine_min']:.4f}",
                            f"{s['placement']['ne_share']:.2f}", f"{ms:.2f}{'' if kind == 'measured' else ' est'}",
                            str(int(s["program"]["fp32_ops"]))))
            except (KeyError, TypeError):  # an older metrics file: not comparable
                continue
    return out


def table(found: list[tuple], markdown: bool, units: str) -> str:
    head = COLUMNS[:-2] + (f"ms {units}", COLUMNS[-1])
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(x.strip() for x in r) + " |" for r in found)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *found)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, found)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--md", action="store_true", help="a markdown table")
    parser.add_argument("--units", default="ALL", help="compute units of the latency column")
    parser.add_argument("dvc_args", nargs="*", help="after --: arguments for `dvc exp show`")
    args = parser.parse_args(argv)
    try:
        found = rows(exp_show(args.dvc_args), args.units)
        if not found:
            raise UserError("no experiment has artifacts/evaluate/<variant>/summary.json",
                            "run `dvc repro` or `dvc exp run` first")
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(table(found, args.md, args.units))


if __name__ == "__main__":
    main()
