"""Benchmark of per-parser virtualenvs (on demand: ``make bench-envs`` or ``make bench``).

Prints the cache-hit overhead of :func:`parseq.envs.cache.acquire`, a cold build of
``requests beautifulsoup4 lxml`` with a warm package cache (virtualenv + uv, Parseq's default),
and the same build with virtualenv + pip, as medians and a ratio. Needs PyPI (or a mirror).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from parseq.core.config import Config
from parseq.envs import cache as envs
from parseq.sandbox.limits import base_python

PACKAGES = ("requests", "beautifulsoup4", "lxml")


def _config(root: Path, installer: str, offline: bool = False) -> Config:
    config = Config.from_env(envs_dir=root, env_installer=installer, envs_max_count=0)
    if offline:  # uv resolves from its cache alone: no request to the index
        config = replace(config, installer_env={**config.installer_env, "UV_OFFLINE": "1"})
    return config


def cold_build_s(
    installer: str, lines: tuple[str, ...], rounds: int, offline: bool = False
) -> list[float]:
    """Seconds per build into an empty envs dir; a first, unmeasured build warms the cache."""
    times = []
    for i in range(rounds + 1):
        with tempfile.TemporaryDirectory(prefix="parseq-bench-") as tmp:
            config = _config(Path(tmp), installer, offline and i > 0)
            started = time.perf_counter()
            envs.build_env(config, lines, python=base_python(config))
            if i:  # round 0 only fills uv's/pip's package cache
                times.append(time.perf_counter() - started)
    return times


def hit_overhead_ms(lines: tuple[str, ...], n: int) -> list[float]:
    """Milliseconds per cache hit: key, directory check, in-use lease taken and released."""
    with tempfile.TemporaryDirectory(prefix="parseq-bench-") as tmp:
        config = _config(Path(tmp), "uv")
        envs.build_env(config, lines, python=base_python(config))
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            env = envs.acquire(config, lines, python=base_python(config))
            env.release()
            samples.append((time.perf_counter() - started) * 1000)
            assert not env.built
    return samples


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="cold uv builds to take the median of")
    ap.add_argument("--hits", type=int, default=2000, help="cache hits to time")
    ap.add_argument("--no-pip", action="store_true", help="skip the (slow) pip comparison")
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)

    hits = hit_overhead_ms(PACKAGES, opts.hits)
    p95 = statistics.quantiles(hits, n=20)[-1]
    print(
        f"cache hit:        median {statistics.median(hits):.3f} ms  p95 {p95:.3f} ms"
        f"  (target <= 1 ms, n={len(hits)})"
    )
    uv = cold_build_s("uv", PACKAGES, opts.rounds)
    print(
        f"cold build, uv:   median {statistics.median(uv):.3f} s  "
        f"[{', '.join(f'{t:.3f}' for t in uv)}]  (target <= 1 s; {' '.join(PACKAGES)})"
    )
    # What is left of the build without the index: uv asks it whether every cached page and
    # wheel is still current (a round trip each, the network's share of the above).
    offline = cold_build_s("uv", PACKAGES, opts.rounds, offline=True)
    print(
        f"  of which not the index: median {statistics.median(offline):.3f} s "
        f"(UV_OFFLINE=1: the same build from uv's cache alone, no revalidation requests)"
    )
    if opts.no_pip:
        return
    pip = cold_build_s("pip", PACKAGES, 1)
    print(f"cold build, pip:  {pip[0]:.3f} s  (virtualenv + pip, warm pip cache)")
    print(f"pip / uv:         {pip[0] / statistics.median(uv):.1f}x")


if __name__ == "__main__":
    main()
