"""Compute pi to N digits, with live progress and intermediate results: no network needed.

Arguments: ``--digits N`` (default 100, at most 10000), ``--steps K`` (default 10, at most
100: pi is computed to 1/K, 2/K, ... of the digits, each step reported as progress and kept in
``steps.jsonl``), ``--delay S`` (seconds to pause after each step, default 0: makes the
progress watchable). Writes pi to ``output.txt`` and ``pi.json``.
"""

from __future__ import annotations

import sys
import time

from parseq_sdk import context, output, output_json, progress, save_file

MAX_STEPS = 100


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
    digits = context.args.int("digits", 100)
    steps = context.args.int("steps", 10)
    delay_s = context.args.float("delay", 0.0)
    if not 1 <= digits <= 10000:
        print(f"--digits must be between 1 and 10000, got {digits}", file=sys.stderr)
        return 2
    steps = max(1, min(steps, digits, MAX_STEPS))
    started = time.perf_counter()
    print(f"computing pi to {digits} digits in {steps} steps", file=sys.stderr)
    pi = ""
    for step in progress(range(1, steps + 1), message=f"pi to {digits} digits"):
        n = digits * step // steps
        pi = pi_digits(n)
        output_json({"step": step, "digits": n, "pi": pi}, file="steps.jsonl")
        if delay_s:
            time.sleep(delay_s)
    elapsed = time.perf_counter() - started
    output(pi)
    save_file("pi.json", {"digits": digits, "pi": pi, "seconds": elapsed})
    print(f"done in {elapsed:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
