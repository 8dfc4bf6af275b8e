"""The longest a command stays silent: runs it, stamps every line and progress-bar update
(stdout and stderr, split at newlines and carriage returns) and prints the longest gaps.

    python -m benchmarks.silence -- dvc repro --force
    python -m benchmarks.silence --top 5 -- python -m pipeline.evaluate model=tiny precision=fp16

The issue's target: no stage silent for more than 10 s (a loaded machine stretches gaps).
"""
from __future__ import annotations

import argparse
import os
import selectors
import subprocess
import sys
import time


def gaps(cmd: list[str]) -> tuple[int, list[tuple[float, str]]]:
    """(exit code, [(seconds of silence before a chunk, the chunk's text)])."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        sel.register(stream, selectors.EVENT_READ)
    last, out, open_streams = time.monotonic(), [], 2
    while open_streams:
        for key, _ in sel.select():
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            now = time.monotonic()
            text = data.decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()
            out.append((now - last, (text[-1] if text else "")[:110]))
            last = now
    out.append((time.monotonic() - last, "<exit>"))
    return proc.wait(), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    started = time.monotonic()
    code, chunks = gaps(cmd)
    print(f"{' '.join(cmd)}: exit {code}, {time.monotonic() - started:.1f} s, "
          f"{len(chunks)} outputs; longest silences:")
    for gap, text in sorted(chunks, reverse=True)[:args.top]:
        print(f"  {gap:6.1f} s before: {text}")
    sys.exit(code)


if __name__ == "__main__":
    main()
