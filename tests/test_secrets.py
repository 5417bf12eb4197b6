"""Secrets: encrypted at rest, rotated, redacted from stored logs and errors, never listed."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet
from flask import Flask

from parseq.cli.main import main
from parseq.core.errors import ConfigError, SecretsKeyError
from parseq.core.redaction import StreamRedactor, needles, redact, redact_text
from parseq.db import crypto
from parseq.db.models import Parser, RunStatus, db
from parseq.sandbox import runner, supervisor
from parseq.services import runs
from parseq.web.app import create_app, init_db
from parseq.worker import execution
from tests.conftest import FIXTURE_PARSERS, add_parser, api_client, wait_for_run

SECRET = "tok-9f2c1e77-very-secret"


def _raw_secrets(name: str) -> str:
    return db.session.execute(
        sa.text("SELECT secrets FROM parsers WHERE name = :n"), {"n": name}
    ).scalar_one()


# --- redaction (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "values", "expected"),
    [
        (b"token=abcd1234\n", ["abcd1234"], b"token=***\n"),
        (b"abcd abcd\n", ["abcd"], b"*** ***\n"),
        (b"pw=abc\n", ["abc"], b"pw=abc\n"),  # shorter than 4: left alone (documented)
        (b"key=secret-long and secret\n", ["secret", "secret-long"], b"key=*** and ***\n"),
        (b"-----BEGIN-----\n", ["-----BEGIN-----\nAAAABBBB\n-----END-----"], b"***\n"),
        (b"nothing here\n", ["zzzz"], b"nothing here\n"),
        (
            "pw=\u0441\u0435\u043a\u0440\u0435\u0442\n".encode(),
            ["\u0441\u0435\u043a\u0440\u0435\u0442"],
            b"pw=***\n",
        ),
    ],
)
def test_redact_masks_every_secret_value(line: bytes, values: list[str], expected: bytes) -> None:
    assert redact(line, needles(values)) == expected


def test_stream_redactor_masks_a_secret_split_across_pieces() -> None:
    r = StreamRedactor(["abcdefgh"])
    out = r.feed(b"start abc") + r.feed(b"def") + r.feed(b"gh end\n") + r.flush()
    assert out == b"start *** end\n"
    assert r.feed(b"tail abcd") + r.flush() == b"tail abcd"


def test_stream_redactor_passes_lines_through_when_there_are_no_secrets() -> None:
    r = StreamRedactor(["ab", ""])
    assert r.feed(b"ab partial") == b"ab partial"


def test_redact_text_for_error_messages() -> None:
    assert (
        redact_text("failed: token abcd1234 refused", ["abcd1234"]) == "failed: token *** refused"
    )
    assert redact_text(None, ["abcd1234"]) is None


def test_supervised_process_printing_its_secret_leaves_only_stars(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = runner.build_env(
        base_env={"PATH": "/usr/bin:/bin"},
        run_id=1,
        parser="leak",
        args={},
        secrets={"API_TOKEN": SECRET},
        output_dir=out,
        state_dir=tmp_path,
        home_dir=tmp_path,
        tmp_dir=tmp_path,
    )
    proc = runner.spawn([sys.executable, str(FIXTURE_PARSERS / "leak_secret.py")], env, tmp_path)
    lines: list[bytes] = []
    outcome = supervisor.supervise(
        proc,
        tmp_path / "run.log",
        timeout_s=30,
        secrets=[SECRET],
        on_line=lambda _s, line: lines.append(line),
    )
    log = (tmp_path / "run.log").read_bytes()
    assert outcome.status is RunStatus.ERROR
    assert SECRET.encode() not in log and SECRET not in outcome.error
    assert b"token on stdout: ***" in log
    assert b"half *** end" in log  # printed in two writes, masked whole
    assert outcome.error == "failing with token=***"
    assert all(SECRET.encode() not in line for line in lines)


def test_executed_notebook_keeps_no_printed_secret(embedded_app: Flask) -> None:
    from nbformat.v4 import new_code_cell

    from parseq.db.models import ParserKind
    from tests.test_notebooks import run_notebook, write_nb

    root = embedded_app.extensions["parseq"].config.notebooks_dir
    rel = write_nb(
        root,
        "leaky_nb",
        [
            new_code_cell(
                'import os\nprint("nb token", os.environ["API_TOKEN"])\nos.environ["API_TOKEN"]'
            )
        ],
    )
    parser = add_parser("leaky_nb", rel, kind=ParserKind.NOTEBOOK, secrets={"API_TOKEN": SECRET})
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    text = json.dumps(nb)
    assert SECRET not in text
    assert "nb token ***" in text and "'***'" in text
    log = api_client(embedded_app).get(f"/api/v1/runs/{run.id}/files/run.log").data
    assert SECRET.encode() not in log


# --- encryption at rest --------------------------------------------------------------------


def test_secrets_are_stored_encrypted_and_read_back_as_a_dict(sqlite_app: Flask) -> None:
    add_parser("vault", "echo_env.py", secrets={"API_TOKEN": SECRET})
    raw = _raw_secrets("vault")
    assert SECRET not in raw and "API_TOKEN" not in raw
    cipher = sqlite_app.extensions["parseq"].cipher
    assert json.loads(cipher.decrypt(raw.encode())) == {"API_TOKEN": SECRET}
    db.session.expire_all()
    parser = db.session.execute(db.select(Parser).filter_by(name="vault")).scalar_one()
    assert parser.secrets == {"API_TOKEN": SECRET}
    assert isinstance(parser.secrets, dict)
    # The generated key lives in var/, readable by its owner only.
    key_file = sqlite_app.extensions["parseq"].config.var_dir / crypto.KEY_FILE
    assert key_file.stat().st_mode & 0o077 == 0


def test_to_dict_lists_secret_names_never_values(sqlite_app: Flask) -> None:
    parser = add_parser("named", "echo_env.py", secrets={"B_TOKEN": SECRET, "A_KEY": "zzzz9999"})
    body = parser.to_dict()
    assert body["secrets"] == ["A_KEY", "B_TOKEN"]
    assert SECRET not in json.dumps(body) and "zzzz9999" not in json.dumps(body)
    resp = api_client(sqlite_app).get("/api/v1/parsers/named")
    assert resp.json["secrets"] == ["A_KEY", "B_TOKEN"]
    assert SECRET not in resp.get_data(as_text=True)


def test_wrong_key_gives_a_clear_error_and_the_web_keeps_working(make_config) -> None:  # type: ignore[no-untyped-def]
    first = create_app(make_config())
    init_db(first)
    with first.app_context():
        add_parser("locked", "echo_env.py", secrets={"API_TOKEN": SECRET})
        token = _raw_secrets("locked")
        db.engine.dispose()

    other = create_app(make_config(secrets_key=Fernet.generate_key().decode()))
    client = api_client(other)
    with other.app_context():
        resp = client.get("/api/v1/parsers/locked")
        assert resp.status_code == 200
        assert resp.json["secrets"] is None
        assert client.get("/api/v1/parsers").status_code == 200
        assert client.get("/api/v1/health").status_code == 200

        parser = runs.get_parser("locked")
        with pytest.raises(SecretsKeyError, match="PARSEQ_SECRETS_KEY"):
            dict(parser.secrets)
        run = execution.run_now(parser)
        assert run.status is RunStatus.ERROR
        assert "cannot be decrypted with PARSEQ_SECRETS_KEY" in run.error
        # Saving the parser without touching its secrets keeps the token as it was.
        parser.description = "edited"
        db.session.commit()
        assert _raw_secrets("locked") == token
        db.engine.dispose()


def test_a_malformed_key_is_a_config_error(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="PARSEQ_SECRETS_KEY is not a Fernet key"):
        create_app(make_config(secrets_key="not-a-key"))
    good = Fernet.generate_key().decode()
    with pytest.raises(ConfigError, match="PARSEQ_SECRETS_OLD_KEYS item 1"):
        create_app(make_config(secrets_key=good, secrets_old_keys="nope"))


def test_rotate_secrets_re_encrypts_every_row_with_the_new_key(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    config = make_config(secrets_key=old)
    app = create_app(config)
    init_db(app)
    with app.app_context():
        add_parser("one", "echo_env.py", secrets={"API_TOKEN": SECRET})
        add_parser("two", "echo_env.py", secrets={})
        # A row written before encryption existed (plain JSON) is read and rotated too.
        db.session.execute(
            sa.text("UPDATE parsers SET secrets = :s WHERE name = 'two'"),
            {"s": json.dumps({"LEGACY": "legacy-value"})},
        )
        db.session.commit()
        assert runs.get_parser("two").secrets == {"LEGACY": "legacy-value"}
        db.engine.dispose()

    for key, value in {
        "PARSEQ_VAR_DIR": str(config.var_dir),
        "PARSEQ_PARSERS_DIR": str(FIXTURE_PARSERS),
        "PARSEQ_SECRET_KEY": "test",
        "PARSEQ_SECRETS_KEY": new,
        "PARSEQ_SECRETS_OLD_KEYS": old,
        "PARSEQ_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["rotate-secrets"])
    assert result.exit_code == 0, result.output
    assert "secrets of 2 parser(s) re-encrypted" in result.output

    only_new = create_app(make_config(secrets_key=new))
    with only_new.app_context():
        assert runs.get_parser("one").secrets == {"API_TOKEN": SECRET}
        assert runs.get_parser("two").secrets == {"LEGACY": "legacy-value"}
        assert "legacy-value" not in _raw_secrets("two")
        db.engine.dispose()

    # A key nobody configured any more: the row is named, left alone, and the exit is non-zero.
    monkeypatch.setenv("PARSEQ_SECRETS_KEY", Fernet.generate_key().decode())
    monkeypatch.delenv("PARSEQ_SECRETS_OLD_KEYS")
    result = CliRunner().invoke(main, ["rotate-secrets"])
    assert result.exit_code == 1
    assert "no configured key decrypts the secrets of: one, two" in result.output


# --- on real services ----------------------------------------------------------------------


@pytest.mark.services
def test_postgres_column_holds_ciphertext(services_app: Flask) -> None:
    name = f"pgvault-{uuid.uuid4().hex[:8]}"
    with services_app.app_context():
        add_parser(name, "echo_env.py", secrets={"API_TOKEN": SECRET})
        raw = _raw_secrets(name)
        assert SECRET not in raw and "API_TOKEN" not in raw
        assert raw.startswith("gAAAA")  # a Fernet token
        db.session.expire_all()
        assert runs.get_parser(name).secrets == {"API_TOKEN": SECRET}


@pytest.mark.services
def test_printed_secret_is_redacted_and_other_parsers_never_see_it(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    client = api_client(services_app)
    leaky, other = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("leaky", "other"))
    with services_app.app_context():
        add_parser(leaky, "leak_secret.py", secrets={"API_TOKEN": SECRET})
        add_parser(other, "leak_secret.py", secrets={"OTHER": "other-value"})
        leaked = wait_for_run(runs.create_run(runs.get_parser(leaky)).id)
        clean = wait_for_run(runs.create_run(runs.get_parser(other)).id)
        assert leaked.status is RunStatus.ERROR
        assert leaked.error == "failing with token=***"
        assert clean.status is RunStatus.COMPLETED, clean.error

    log = client.get(f"/api/v1/runs/{leaked.id}/files/run.log").data
    assert SECRET.encode() not in log
    assert b"token on stdout: ***" in log and b"failing with token=***" in log
    run_json = client.get(f"/api/v1/runs/{leaked.id}").get_data(as_text=True)
    assert SECRET not in run_json
    # The parser itself did get it; the other parser's whole environment has no trace of it.
    assert json.loads(client.get(f"/api/v1/runs/{leaked.id}/files/env.json").data)["API_TOKEN"] == (
        SECRET
    )
    other_env = client.get(f"/api/v1/runs/{clean.id}/files/env.json").get_data(as_text=True)
    assert SECRET not in other_env and "API_TOKEN" not in other_env
    assert "PARSEQ_SECRETS_KEY" not in other_env and "PARSEQ_SECRET_KEY" not in other_env
    assert json.loads(other_env)["OTHER"] == "other-value"
