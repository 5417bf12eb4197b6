"""Compute pi to N digits: the classic queue demo, no network needed.

Arguments: ``--digits N`` (default 100, at most 10000). Writes pi to ``output.txt`` and a
``pi.json`` file with the digits and the time taken, and reports progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def pi_digits(digits: int) -> str:
    """Pi to ``digits`` decimals by Machin's formula in integer arithmetic."""
    unity = 10 ** (digits + 10)

    def arctan_inv(x: int) -> int:
        total = term = unity // x
        n, sign, x2 = 1, -1, x * x
        while term:
            term //= x2
            total += sign * (term // (2 * n + 1))
            n, sign = n + 1, -sign
        return total

    pi = 4 * (4 * arctan_inv(5) - arctan_inv(239))
    text = str(pi // 10**10)
    return f"{text[0]}.{text[1:]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--digits", type=int, default=100)
    args, _unknown = ap.parse_known_args()
    if not 1 <= args.digits <= 10000:
        print(f"--digits must be between 1 and 10000, got {args.digits}", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("PARSEQ_OUTPUT_DIR", "."))
    started = time.perf_counter()
    print(f"computing pi to {args.digits} digits", file=sys.stderr)
    pi = pi_digits(args.digits)
    elapsed = time.perf_counter() - started
    (out_dir / "output.txt").write_text(pi + "\n")
    (out_dir / "pi.json").write_text(
        json.dumps({"digits": args.digits, "pi": pi, "seconds": elapsed})
    )
    print(f"done in {elapsed:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
