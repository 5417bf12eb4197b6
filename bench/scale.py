"""Scale: the run list API and the admin runs page with 1,000,000 runs in PostgreSQL.

Seeds the runs with one INSERT ... SELECT over generate_series (the seeding command), then
times first pages, filtered pages and a deep keyset page. Target (issue 10): p50 <= 100 ms.
Also times a Prometheus scrape of ``/metrics`` over them (issue 24): p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import statistics
import time

import sqlalchemy as sa

from bench.stack import Stack, summary

SEED_SQL = """
INSERT INTO runs (parser_id, status, "trigger", args, attempt, queued_at, started_at,
                  finished_at, exit_code)
SELECT 1 + (g % :parsers),
       (ARRAY['completed','completed','completed','error','timeout','cancelled'])[1 + g % 6],
       (ARRAY['manual','schedule','api'])[1 + g % 3],
       '{}', 1,
       now() - make_interval(secs => :n - g),
       now() - make_interval(secs => :n - g),
       now() - make_interval(secs => :n - g) + interval '2 seconds',
       0
FROM generate_series(1, :n) AS g
"""


# The counters the runs' end notifications would have made (parseq.services.metrics).
METRICS_SEED_SQL = """
INSERT INTO metric_counters (metric, labels, value)
SELECT 'runs', format('{"parser": "%s", "status": "%s", "trigger": "%s"}', p.name, r.status,
                      r."trigger"), count(*)
FROM runs r JOIN parsers p ON p.id = r.parser_id
GROUP BY p.name, r.status, r."trigger"
"""


def seed(app, n: int, parsers: int = 10) -> float:  # type: ignore[no-untyped-def]
    """Insert ``parsers`` parsers and ``n`` finished runs; return the seconds it took."""
    from parseq.db.models import Parser, db

    with app.app_context():
        for i in range(parsers):
            db.session.add(Parser(name=f"p{i}", path="hello.py"))
        db.session.commit()
        t0 = time.perf_counter()
        db.session.execute(sa.text(SEED_SQL), {"n": n, "parsers": parsers})
        db.session.commit()
        with contextlib.suppress(sa.exc.ProgrammingError):  # a release without metrics
            db.session.execute(sa.text(METRICS_SEED_SQL))
            db.session.commit()
        db.session.rollback()
        db.session.execute(sa.text("ANALYZE runs"))
        db.session.commit()
        return time.perf_counter() - t0


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        samples.append(time.perf_counter() - t0)
        assert resp.status == 200, (path, resp.status)
    return samples


def admin_headers(stack: Stack) -> dict[str, str] | None:
    """A logged-in admin session cookie, when the admin has logins (None: page not timed)."""
    try:
        from parseq.web.admin.auth import create_user  # type: ignore[import-not-found]
    except ImportError:
        return {}
    with stack.app.app_context():
        create_user("bench", "bench-password-123")
    client = stack.app.test_client()
    page = client.get("/admin/login/").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    client.post(
        "/admin/login/",
        data={
            "username": "bench",
            "password": "bench-password-123",
            "csrf_token": token.group(1) if token else "",
        },
    )
    cookie = client.get_cookie("session")
    return {"Cookie": f"session={cookie.value}"} if cookie else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("-n", type=int, default=30, help="requests per case")
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)

    with Stack(workers=0) as stack:
        seconds = seed(stack.app, opts.runs)
        print(f"seeded {opts.runs:,} runs in {seconds:.1f} s")
        conn = http.client.HTTPConnection("127.0.0.1", stack.server.server_port)
        api = stack.auth_headers()
        first = conn.request("GET", "/api/v1/runs?limit=50", headers=api)
        body = conn.getresponse().read()
        del first, body
        deep_cursor = opts.runs // 2
        cases = {
            "API first page (50)": "/api/v1/runs?limit=50",
            "API status=error": "/api/v1/runs?status=error&limit=50",
            "API parser=p3": "/api/v1/runs?parser=p3&limit=50",
            "API deep cursor page": f"/api/v1/runs?limit=50&cursor={deep_cursor}",
        }
        results = {name: timed_get(conn, path, api, opts.n) for name, path in cases.items()}
        metrics = timed_get(conn, "/metrics", {}, opts.n)
        admin = admin_headers(stack)
        if admin is not None:
            results["admin runs page"] = timed_get(conn, "/admin/runs/", admin, opts.n)
            results["admin runs page 1000"] = timed_get(
                conn, "/admin/runs/?page=1000", admin, opts.n
            )
    print(f"scale on {os.cpu_count()} cores, {opts.runs:,} runs in PostgreSQL (target p50<=100)")
    for name, samples in results.items():
        print(f"  {name:24s} {summary(samples)}")
    worst = max(statistics.median(s) for s in results.values())
    print(f"  worst p50: {worst * 1000:.1f} ms")
    print(f"  {'/metrics scrape':24s} {summary(metrics)}  (target p50<=20)")


if __name__ == "__main__":
    main()
