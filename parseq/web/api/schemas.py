"""Schemas of runs, files, logs and health: what those endpoints take and answer.

Response schemas are closed (marshmallow's ``unknown = RAISE`` makes apispec write
``additionalProperties: false``): an answer holds the declared fields and nothing else.
"""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields

from parseq.core.argv import ARG_NAME_RE, check_positional
from parseq.db.models import RunStatus, RunTrigger
from parseq.services import notify_settings, runs
from parseq.web.api.fields import (
    ConfiguredMaximum,
    QueryTime,
    Scalar,
    StrictBoolean,
    enum_text,
    rule,
)

MAX_ID = 2**63 - 1  # ids and cursors beyond a signed 64-bit integer cannot exist
TIME = {"format": "date-time"}
#: Argument names become ``--name`` options: the runner's rule, in the document too.
ARGS_KEYS = {"propertyNames": {"pattern": ARG_NAME_RE.pattern}}


def _time(description: str = "", **kwargs: object) -> fields.String:
    return fields.String(allow_none=True, metadata={**TIME, "description": description}, **kwargs)


class FileSchema(ma.Schema):
    name = fields.String(required=True, metadata={"description": "relative to the output folder"})
    size = fields.Integer(required=True, metadata={"description": "bytes"})
    sha256 = fields.String(required=True)
    url = fields.String(required=True, metadata={"description": "download URL"})


class FileListSchema(ma.Schema):
    run_id = fields.Integer(required=True)
    files = fields.List(fields.Nested(FileSchema), required=True)


class ProgressSchema(ma.Schema):
    done = fields.Float(allow_none=True, required=True)
    total = fields.Float(allow_none=True, required=True)
    message = fields.String(allow_none=True, required=True)


class DeliverySchema(ma.Schema):
    """A notification of a run's end, and how its delivery went."""

    id = fields.Integer(required=True)
    event = fields.String(required=True, metadata={"enum": list(notify_settings.EVENTS)})
    channel = fields.String(required=True, metadata={"enum": ["webhook", "email"]})
    target = fields.String(required=True, metadata={"description": "webhook host or addresses"})
    status = fields.String(
        required=True, metadata={"enum": ["pending", "held", "sent", "failed", "digested"]}
    )
    attempts = fields.Integer(required=True)
    last_error = fields.String(allow_none=True)
    created_at = _time()
    sent_at = _time()


class RunSchema(ma.Schema):
    """A run: its arguments, status, timing, progress and stored files."""

    id = fields.Integer(required=True)
    parser = fields.String(required=True)
    status = enum_text(RunStatus, required=True)
    trigger = enum_text(RunTrigger, required=True)
    args = fields.Dict(required=True, metadata={"description": "the arguments it ran with"})
    positional = fields.List(Scalar(), required=True)
    attempt = fields.Integer(required=True, metadata={"description": "1, then 2 for a retry..."})
    retry_of = fields.Integer(allow_none=True, metadata={"description": "the run it retries"})
    previous_error = fields.String(allow_none=True, metadata={"description": "retry_of's error"})
    not_before = _time("a retry waits for its backoff until then")
    queued_at = _time(required=True)
    scheduled_for = _time("the schedule occurrence that made it")
    started_at = _time()
    finished_at = _time()
    duration_s = fields.Float(allow_none=True)
    exit_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema, required=True)
    worker_id = fields.String(allow_none=True)
    heartbeat_at = _time()
    env_key = fields.String(allow_none=True)
    code_version = fields.Integer(
        allow_none=True, metadata={"description": "the parser's code version it ran (null: a file)"}
    )
    warnings = fields.List(
        fields.String(), metadata={"description": "files not stored or renamed; no result"}
    )
    files = fields.List(fields.Nested(FileSchema), required=True)
    url = fields.String(required=True)
    notifications = fields.List(
        fields.Nested(DeliverySchema),
        metadata={"description": "GET /runs/{run_id} only: the notifications of its end"},
    )


class RunListSchema(ma.Schema):
    runs = fields.List(fields.Nested(RunSchema), required=True)
    next_cursor = fields.Integer(
        allow_none=True, required=True, metadata={"description": "pass as cursor for more"}
    )


class RunCreateSchema(ma.Schema):
    args = fields.Dict(
        validate=rule(runs.check_args),
        metadata={"description": "overlaid on the parser's default_args", "json_schema": ARGS_KEYS},
    )
    positional = fields.List(
        Scalar(),
        validate=rule(check_positional),
        metadata={"description": "after the options in argv; default: the parser's"},
    )


class WaitQuery(ma.Schema):
    wait = ConfiguredMaximum(
        "max_wait_s",
        metadata={"description": "seconds to wait for the run to finish (the synchronous form)"},
    )


class RunListQuery(ma.Schema):
    parser = fields.String(metadata={"description": "parser name"})
    status = fields.Enum(RunStatus, by_value=True)
    trigger = fields.Enum(RunTrigger, by_value=True)
    since = QueryTime(metadata={"description": "queued at or after (naive = UTC)"})
    until = QueryTime(metadata={"description": "queued before (naive = UTC)"})
    limit = fields.Integer(
        validate=ma.validate.Range(1, MAX_ID),
        metadata={"description": "page size, capped at PARSEQ_MAX_PAGE_SIZE"},
    )
    cursor = fields.Integer(
        validate=ma.validate.Range(1, MAX_ID), metadata={"description": "next_cursor"}
    )


class LogQuery(ma.Schema):
    offset = fields.Integer(
        validate=ma.validate.Range(0, 2**62 - 1), metadata={"description": "byte offset"}
    )
    follow = fields.Boolean(metadata={"description": "stream new lines until the run ends"})


class DeleteQuery(ma.Schema):
    cascade = fields.Boolean(metadata={"description": "cancel pending and running runs first"})


class DownloadQuery(ma.Schema):
    format = fields.String(
        validate=ma.validate.OneOf(["raw", "json", "html"]),
        metadata={
            "description": "raw (default); json: output.txt or a .jsonl file as JSON; "
            "html: a .ipynb rendered as a sandboxed page"
        },
    )


class RangeHeader(ma.Schema):
    """Documents the ``Range`` header; :func:`parseq.web.files.requested_range` reads it
    (a malformed one gets the whole file, as RFC 9110 allows)."""

    range = fields.String(
        data_key="Range",
        metadata={"description": "bytes=START-END, bytes=START- or bytes=-SUFFIX (one range)"},
    )


class JsonLinesSchema(ma.Schema):
    run_id = fields.Integer(required=True)
    file = fields.String(required=True)
    items = fields.List(fields.Raw(), required=True, metadata={"description": "one per line"})


class CheckSchema(ma.Schema):
    ok = fields.Boolean(required=True)
    latency_ms = fields.Float(required=True)
    error = fields.String()
    queue_depth = fields.Integer(metadata={"description": "broker only"})


class QueueSchema(ma.Schema):
    name = fields.String(required=True)
    depth = fields.Integer(allow_none=True, required=True)


class WorkerSchema(ma.Schema):
    id = fields.String(required=True)
    queue = fields.String(required=True)
    threads = fields.Integer(required=True)
    started_at = _time()
    last_heartbeat_at = _time()
    alive = StrictBoolean(required=True)


class HostSchema(ma.Schema):
    cpu_count = fields.Integer(allow_none=True)
    load_avg = fields.List(fields.Float())
    cpu_percent = fields.Float()
    memory_total_bytes = fields.Integer()
    memory_available_bytes = fields.Integer()
    memory_percent = fields.Float()
    disk_path = fields.String()
    disk_total_bytes = fields.Integer()
    disk_free_bytes = fields.Integer()
    disk_percent = fields.Float()


class HealthSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["ok", "down"]})
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(CheckSchema), required=True)
    queue = fields.Nested(QueueSchema, required=True)
    workers = fields.List(fields.Nested(WorkerSchema), required=True)
    workers_alive = fields.Integer(required=True)
    host = fields.Nested(HostSchema, required=True)


class DeletedSchema(ma.Schema):
    deleted = fields.String(required=True, metadata={"description": "the parser's name"})
    runs_deleted = fields.Integer(required=True)
