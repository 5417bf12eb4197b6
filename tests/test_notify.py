"""Notifications end to end: real runs in the embedded stack (in-process workers), a local HTTP
receiver for webhooks and a local SMTP server (aiosmtpd) for mails."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db
from parseq.db.notify_models import NotificationDelivery
from parseq.services import runs
from tests.conftest import add_parser, admin_client, api_client, running, wait_for_run

ALL_EVENTS = "error,timeout,cancelled,recovered,empty,slow"


class Receiver:
    """A webhook receiver on a free port: records each POST; answers from ``statuses`` (then
    200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"receiver down")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/abc123secretpath"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _headers, body in self.requests]

    def wait_for(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def _run(parser_name: str, args: dict[str, Any] | None = None) -> Run:
    run = runs.create_run(runs.get_parser(parser_name), args)
    return wait_for_run(run.id)


def _deliveries(run_id: int, count: int, timeout_s: float = 20.0) -> list[NotificationDelivery]:
    """The run's deliveries once ``count`` of them are final."""
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.rollback()
        db.session.expire_all()
        found = list(
            db.session.execute(
                db.select(NotificationDelivery)
                .where(NotificationDelivery.run_id == run_id)
                .order_by(NotificationDelivery.id)
            ).scalars()
        )
        done = [d for d in found if d.status in ("sent", "failed", "digested", "held")]
        if len(done) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _config(make_config: Callable[..., Config], **overrides: Any) -> Config:
    values = {
        "notify_events": ALL_EVENTS,
        "notify_backoff_s": 0.2,
        "heartbeat_interval_s": 0.2,
        "public_url": "https://parseq.example.org",
    }
    return make_config(**{**values, **overrides})


def test_each_event_sends_one_signed_webhook(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    config = _config(make_config, notify_webhook_url=hook.url, notify_webhook_secret="s3cret")
    with running(config) as app:
        add_parser("site", "fail.py")
        expected: list[tuple[int, str]] = []

        run = _run("site")  # error
        assert run.status is RunStatus.ERROR
        expected.append((run.id, "error"))
        hook.wait_for(1)

        parser = runs.get_parser("site")
        parser.path = "items.py"
        db.session.commit()
        run = _run("site")  # completed after a failure: recovered
        assert run.status is RunStatus.COMPLETED
        expected.append((run.id, "recovered"))
        hook.wait_for(2)

        parser.path = "real_silent.py"
        db.session.commit()
        run = _run("site")  # no file, no stdout (stderr only): empty
        assert run.status is RunStatus.COMPLETED
        expected.append((run.id, "empty"))
        hook.wait_for(3)

        parser.path = "items.py"
        parser.notifications = {"slow_after_s": 0.001}
        db.session.commit()
        run = _run("site")  # longer than the parser's threshold: slow
        expected.append((run.id, "slow"))
        hook.wait_for(4)

        parser.path, parser.timeout_s = "ticker.py", 0.5
        db.session.commit()
        run = _run("site", {"ticks": 100})
        assert run.status is RunStatus.TIMEOUT
        expected.append((run.id, "timeout"))
        hook.wait_for(5)

        run = runs.create_run(parser, {"ticks": 100})
        _wait_running(run.id)
        runs.cancel_run(runs.get_run(run.id))
        run = wait_for_run(run.id)
        assert run.status is RunStatus.CANCELLED
        expected.append((run.id, "cancelled"))
        hook.wait_for(6)
        time.sleep(0.5)  # nothing more comes

        assert [(b["run"]["id"], b["event"]) for b in hook.bodies()] == expected
        for headers, body in hook.requests:
            signature = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
            assert headers["X-Parseq-Signature-256"] == f"sha256={signature}"
        first = hook.bodies()[0]
        assert first["parser"] == "site"
        assert first["run"]["status"] == "error"
        assert "the site changed its layout" in first["run"]["error"]
        assert first["run"]["duration_s"] > 0
        assert first["links"] == {
            "admin": f"https://parseq.example.org/admin/runs/details/?id={expected[0][0]}",
            "api": f"https://parseq.example.org/api/v1/runs/{expected[0][0]}",
        }
        names = {f["name"] for f in first["run"]["files"]}
        assert {"output.txt", "run.log"} <= names

        # Each delivery is recorded and shown on its run, in the API and the admin.
        run_id = expected[0][0]
        body = api_client(app).get(f"/api/v1/runs/{run_id}").json
        [shown] = body["notifications"]
        assert shown["event"] == "error" and shown["status"] == "sent"
        assert shown["attempts"] == 1 and shown["channel"] == "webhook"
        assert "abc123secretpath" not in json.dumps(body)  # the URL's secret part stays hidden
        page = admin_client(app).get(f"/admin/runs/details/?id={run_id}").data.decode()
        assert 'id="run-notifications"' in page and "sent" in page


def _wait_running(run_id: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        db.session.expire_all()
        if db.session.get(Run, run_id).status is RunStatus.RUNNING:
            return
        time.sleep(0.05)


def test_a_failing_receiver_is_retried_and_the_run_is_untouched(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([500, 500])
    with running(_config(make_config, notify_webhook_url=hook.url)):
        add_parser("broken", "fail.py")
        run = _run("broken")
        [delivery] = _deliveries(run.id, 1)
        assert delivery.status == "sent", delivery.last_error
        assert delivery.attempts == 3
        assert len(hook.requests) == 3
        assert len({body for _h, body in hook.requests}) == 1  # the same body each time
        assert "X-Parseq-Signature-256" not in hook.requests[0][0]  # no secret, no signature
        db.session.expire_all()
        again = db.session.get(Run, run.id)
        assert again.status is RunStatus.ERROR
        assert again.finished_at == run.finished_at and again.error == run.error


def test_a_dead_receiver_fails_after_the_bounded_attempts(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([503] * 10)
    config = _config(make_config, notify_webhook_url=hook.url, notify_attempts=2)
    with running(config):
        add_parser("broken", "fail.py")
        run = _run("broken")
        [delivery] = _deliveries(run.id, 1)
        assert delivery.status == "failed"
        assert delivery.attempts == 2
        assert "HTTP 503" in delivery.last_error
        time.sleep(0.6)
        assert len(hook.requests) == 2


def test_slack_format_sends_text(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    with running(_config(make_config)):
        add_parser(
            "slacky", "fail.py", notifications={"webhook_url": hook.url, "webhook_format": "slack"}
        )
        run = _run("slacky")
        _deliveries(run.id, 1)
        [body] = hook.bodies()
        assert list(body) == ["text"]
        assert f"parser slacky failed (run {run.id})" in body["text"]
        assert "the site changed its layout" in body["text"]


def test_events_not_asked_for_send_nothing(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    config = _config(make_config, notify_webhook_url=hook.url, notify_events="error")
    with running(config):
        add_parser("quiet", "items.py")
        add_parser("muted", "fail.py", notifications={"events": []})
        completed = _run("quiet")
        muted = _run("muted")
        assert _deliveries(completed.id, 0, timeout_s=1) == []
        assert _deliveries(muted.id, 0, timeout_s=1) == []
        assert hook.requests == []


# --- e-mail -----------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd's handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, box
    controller.stop()


def _mail_config(make_config: Callable[..., Config], port: int, **overrides: Any) -> Config:
    return _config(
        make_config,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        notify_email_to="ops@example.org, dev@example.org",
        **overrides,
    )


def test_each_event_sends_one_mail(
    make_config: Callable[..., Config], smtp_server: tuple[int, Mailbox]
) -> None:
    port, box = smtp_server
    with running(_mail_config(make_config, port)):
        add_parser("mailed", "fail.py")
        run = _run("mailed")
        [delivery] = _deliveries(run.id, 1)
        assert delivery.status == "sent", delivery.last_error
        assert delivery.channel == "email"
        [(recipients, message)] = box.messages
        assert recipients == ["ops@example.org", "dev@example.org"]
        assert message["Subject"] == f"Parseq: parser mailed failed (run {run.id})"
        text = message.get_payload(decode=True).decode()
        assert "the site changed its layout" in text
        assert f"/admin/runs/details/?id={run.id}" in text


def test_digest_limits_mail(
    make_config: Callable[..., Config], smtp_server: tuple[int, Mailbox]
) -> None:
    port, box = smtp_server
    with running(_mail_config(make_config, port, notify_email_digest_s=3.0)):
        add_parser("stormy", "fail.py")
        ids = [_run("stormy").id for _ in range(3)]
        _deliveries(ids[-1], 1)
        assert len(box.messages) == 1  # the first at once, the next two held
        held = [_deliveries(i, 1)[0].status for i in ids]
        assert held == ["sent", "held", "held"]
        deadline = time.monotonic() + 15
        while len(box.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert len(box.messages) == 2  # then one summary of the two
        summary = box.messages[1][1]
        assert summary["Subject"] == "Parseq: 2 notification(s) of parser stormy"
        text = summary.get_payload(decode=True).decode()
        assert f"(run {ids[1]})" in text and f"(run {ids[2]})" in text
        assert [_deliveries(i, 1)[0].status for i in ids] == ["sent", "digested", "digested"]


def test_test_button_sends_a_sample(
    make_config: Callable[..., Config],
    receiver: Callable[..., Receiver],
    smtp_server: tuple[int, Mailbox],
) -> None:
    hook = receiver()
    port, box = smtp_server
    with running(_mail_config(make_config, port, notify_webhook_url=hook.url)) as app:
        parser = add_parser("sampled", "items.py")
        client = admin_client(app)
        resp = client.post(
            f"/admin/parsers/notify-test/{parser.id}", data={"csrf_token": client.csrf_token}
        )
        assert resp.status_code == 302
        assert [b["event"] for b in hook.bodies()] == ["test"]
        assert len(box.messages) == 1
        page = client.get(resp.headers["Location"]).data.decode()
        assert "Sample notification sent" in page


def test_a_run_the_reaper_finishes_is_notified(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    from datetime import timedelta

    from parseq.db.models import utcnow
    from parseq.services import reaper

    hook = receiver()
    with running(_config(make_config, notify_webhook_url=hook.url)) as app:
        parser = add_parser("lost", "items.py")
        run = runs.create_run(parser, enqueue=False)
        long_ago = utcnow() - timedelta(hours=1)
        run.status, run.started_at, run.heartbeat_at = RunStatus.RUNNING, long_ago, long_ago
        db.session.commit()
        assert reaper.reap_once(app) == 1
        hook.wait_for(1)
        [body] = hook.bodies()
        assert body["event"] == "error" and body["run"]["id"] == run.id
        assert body["run"]["error"].startswith("worker lost")


def test_cancelling_a_pending_run_is_notified_once(
    make_config: Callable[..., Config], receiver: Callable[..., Receiver]
) -> None:
    """A pending run ends at its cancel, with no worker to record it: the cancel announces it
    (issue #24), and only once (a second cancel is a conflict)."""
    hook = receiver()
    with running(_config(make_config, notify_webhook_url=hook.url)):
        parser = add_parser("waiting", "items.py")
        run = runs.create_run(parser, enqueue=False)  # never sent: it stays pending
        cancelled = runs.cancel_run(run)
        assert cancelled.status is RunStatus.CANCELLED
        hook.wait_for(1)
        time.sleep(0.5)  # nothing more comes
        [body] = hook.bodies()
        assert body["event"] == "cancelled" and body["run"]["id"] == run.id
        assert body["run"]["error"] == "cancelled before it started"
        [delivery] = _deliveries(run.id, 1)
        assert delivery.event == "cancelled" and delivery.status == "sent"
