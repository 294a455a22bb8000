"""Request bodies: the row-by-row JSON decoder gives json.loads's result and errors exactly,
and parse_rows turns every malformed body into one 4xx line."""

from __future__ import annotations

import json
import random

import pytest

from polytask.serve import body
from polytask.serve.body import decode_json, parse_rows
from polytask.serve.schemas import RequestError

SPACES = ["", " ", "\n", "\t", "\r\n  "]


def random_row(rng: random.Random) -> dict:
    values = [None, True, 1, -2.5, 1e300, "text", " ", "é", 'quo"te', "\\", 10**20]
    return {f"c{k}": rng.choice(values) for k in range(rng.randint(0, 4))}


def with_spaces(payload: dict, rng: random.Random) -> str:
    """JSON text of ``{"rows": [...]}`` with random whitespace between every token."""

    def space() -> str:
        return rng.choice(SPACES)

    rows = [
        json.dumps(row, separators=(space() + "," + space(), space() + ":" + space()))
        for row in payload["rows"]
    ]
    tokens = ["{", '"rows"', ":", "[", ("," + space()).join(rows), "]", "}"]
    return space() + space().join(tokens) + space()


def test_the_row_by_row_decoder_equals_json_loads_on_random_bodies(monkeypatch):
    rng = random.Random(0)
    bodies = []
    for _ in range(300):
        payload = {"rows": [random_row(rng) for _ in range(rng.randint(0, 6))]}
        text = with_spaces(payload, rng)
        assert json.loads(text) == payload
        bodies.append((text, payload))

    def whole_body_parse(text):
        raise AssertionError("a plain body must be decoded row by row")

    monkeypatch.setattr(body.json, "loads", whole_body_parse)
    for text, payload in bodies:
        assert decode_json(text) == payload


@pytest.mark.parametrize(
    "text",
    [
        '{"rows": [{"a": 1}], "extra": 2}',  # not the plain envelope: json.loads decides
        '{"rows": [{"a": 1}], "rows": [{"b": 2}]}',  # duplicate key: the last wins, as ever
        '{"rows": [1, [2], "x"]}',
        '{"rows": [{"a": NaN, "b": Infinity}]}',
        '{"rows": [] }',
        '[{"rows": []}]',
    ],
)
def test_other_bodies_decode_as_json_loads_does(text):
    assert repr(decode_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '{"rows": [{"a": 1},]}',
        '{"rows": [{"a": 1}',
        '{"rows": [{"a": 1}]}}',
        '{"rows": [{"a" 1}]}',
    ],
)
def test_malformed_bodies_raise_json_loads_own_error(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        decode_json(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert (ours.value.msg, ours.value.pos) == (theirs.value.msg, theirs.value.pos)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"rows": [{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}", 400, "nested too deeply"),
        (b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
        (b'\xef\xbb\xbf{"rows": [{"x": 1}]}', None, None),  # a UTF-8 byte-order mark is fine
        (b'{"rows": [{"x": 1}, {"x": 2}, {"x": 3}]}', 413, "3 rows in one request"),
    ],
)
def test_parse_rows_answers(body, status, fragment):
    if status is None:
        assert parse_rows(body, max_rows=10) == [{"x": 1}]
        return
    with pytest.raises(RequestError) as caught:
        parse_rows(body, max_rows=2)
    assert caught.value.status == status and fragment in caught.value.message
