"""Run the benchmarks: ``python -m bench [name ...]`` (``make bench``); no names = all.

Each benchmark is a module of this package with a ``main(argv)``; arguments after ``--`` go
to every selected benchmark, each ignoring the options it does not know. They need the
services the tests use (``scripts/services.sh``).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time


def cpu_model() -> str:
    """The CPU's model name (sessions get different machines: compare only within one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


BENCHMARKS = [
    "dispatch",
    "throughput",
    "scrapyd",
    "scale",
    "envs",
    "notebooks",
    "scheduler",
    "state",
    "code",
]


def main() -> int:
    args = sys.argv[1:]
    extra: list[str] = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1 :]
    unknown = [a for a in args if a not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    print(f"# Parseq benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"# CPU: {cpu_model()}")
    failed: list[str] = []
    for name in args or BENCHMARKS:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"\n## {name}: not available")
                continue
            raise
        print(f"\n## {name}", flush=True)
        try:
            module.main(extra)
        except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the rest
            print(f"{name} FAILED: {exc!r}")
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
