"""The admin's form fields and parsers of form input, without a request."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict
from wtforms import Form, ValidationError

from parseq.web.admin.admin_forms import JSONObjectField, parse_secrets


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("A=1\n\nB_2=x=y\n", {"A": "1", "B_2": "x=y"}),
        ("TOKEN=", {"TOKEN": ""}),
    ],
)
def test_parse_secrets(text: str, expected: dict[str, str]) -> None:
    assert parse_secrets(text) == expected


@pytest.mark.parametrize("text", ["novalue", "1BAD=x", "PARSEQ_ARGS=x"])
def test_parse_secrets_rejects(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_secrets(text)


class ArgsForm(Form):
    args = JSONObjectField()


@pytest.mark.parametrize(
    "raw, expected",
    [("", {}), ("  ", {}), ('{"pages": 3, "city": "Oslo"}', {"pages": 3, "city": "Oslo"})],
)
def test_json_object_field_takes_a_json_object(raw: str, expected: dict) -> None:
    form = ArgsForm(MultiDict({"args": raw}))
    assert form.validate(), form.errors
    assert form.args.data == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "args must be a JSON object"),
        ('{"bad name": 1}', "bad name"),
    ],
)
def test_json_object_field_answers_bad_input_with_a_form_error(raw: str, message: str) -> None:
    form = ArgsForm(MultiDict({"args": raw}))
    assert not form.validate()
    assert message in form.args.errors[0]
    assert form.args.data is None
    assert form.args._value() == raw  # what the user typed is shown back to be fixed
