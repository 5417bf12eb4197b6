"""Benchmark parser: records the moment its first line runs, then writes one line of output."""

import time

STARTED = time.time()

import os  # noqa: E402  (imported after the timestamp on purpose)

with open(os.path.join(os.environ["PARSEQ_OUTPUT_DIR"], "output.txt"), "w") as fh:
    fh.write(f"{STARTED!r}\n")
