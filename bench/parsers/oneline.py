"""Benchmark parser: the Scrapyd comparison job (one item from a local file to output.txt)."""

import json
import os

args = json.loads(os.environ["PARSEQ_ARGS"])
with open(args["source"]) as src:
    line = src.readline().strip()
with open(os.path.join(os.environ["PARSEQ_OUTPUT_DIR"], "output.txt"), "w") as out:
    out.write(json.dumps({"line": line}) + "\n")
