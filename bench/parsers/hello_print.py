"""Benchmark parser: hello.py that also prints a line, so its run log is not empty (and is
stored as an object of its own, a second PUT per run)."""

import os

print("hello, world")
with open(os.path.join(os.environ["PARSEQ_OUTPUT_DIR"], "output.txt"), "w") as fh:
    fh.write("hello\n")
