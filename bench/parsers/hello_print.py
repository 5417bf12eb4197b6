"""Benchmark parser: hello.py that also prints a line, so its run log is not empty (and is
stored as an object of its own: a second PUT per run)."""

import time

STARTED = time.time()

import os  # noqa: E402  (imported after the timestamp on purpose)

print("hello, world")
with open(os.path.join(os.environ["PARSEQ_OUTPUT_DIR"], "output.txt"), "w") as fh:
    fh.write(f"{STARTED!r}\n")
