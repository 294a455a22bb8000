"""The HTTP server on a session-trained run: answers equal Predictor.predict, the schema
endpoint describes tasks and inputs, every malformed request is a 4xx naming its problem (and
the server answers a good request right after), concurrent requests are batched without
mixing answers, and one real uvicorn server on 127.0.0.1 starts, answers and stops."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from polytask.errors import PolytaskError
from polytask.serve import ServeConfig, create_app
from polytask.serve.batching import Overloaded

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TestClient = pytest.importorskip("fastapi.testclient").TestClient


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them: NaN becomes null."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


@pytest.fixture(scope="module")
def predictor(trained_run):
    return polytask.load(trained_run["run"])


@pytest.fixture(scope="module")
def client(predictor):
    config = ServeConfig(max_rows=50, batch_window_ms=20, max_body_bytes=200_000)
    with TestClient(create_app(predictor, config)) as test_client:
        yield test_client


def assert_matches(answers: list[dict[str, Any]], expected: pd.DataFrame) -> None:
    """Server answers (JSON) against Predictor.predict's columns, row by row."""
    assert len(answers) == len(expected)
    for answer, (_, row) in zip(answers, expected.iterrows(), strict=True):
        assert answer["click"] == pytest.approx(row["click"], rel=1e-5, abs=1e-6)
        assert answer["spend"] == pytest.approx(row["spend"], rel=1e-5, abs=1e-4)
        assert answer["segment"]["class"] == row["segment"]
        for label, probability in answer["segment"]["probabilities"].items():
            assert probability == pytest.approx(row[f"segment_p_{label}"], rel=1e-5, abs=1e-6)
        for label in ("tag_a", "tag_b"):
            assert answer["tags"][label] == pytest.approx(row[f"tags_{label}"], abs=1e-6)


def good_request(client) -> None:
    response = client.post("/v1/predict", json={"rows": [{"color": "red", "x1": 0.5}]})
    assert response.status_code == 200, response.text


def test_predict_equals_predictor_on_the_same_rows(client, predictor, trained_run):
    frame = trained_run["frames"]["test"].iloc[:40]  # targets included: known, ignored
    response = client.post("/v1/predict", json={"rows": records(frame)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tasks"] == ["click", "segment", "spend", "tags"]
    assert body["model"] == trained_run["run"].name
    assert_matches(body["predictions"], predictor.predict(frame))


def test_missing_columns_nulls_and_unseen_categories_are_answered(client, predictor):
    rows = [
        {"color": "purple", "city": "atlantis", "x1": 1.5},
        {"x2": None, "count": "7"},  # a number sent as text, as a CSV would hold it
        {},
        {"color": "red", "city": None, "x1": -2.0, "x2": 3.0, "count": 3.0},
    ]
    response = client.post("/v1/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], predictor.predict(pd.DataFrame(rows)))


ENCODER_ROWS = [
    {"color": " red ", "city": "rome", "x1": 0.25, "x2": -1, "count": 3},
    {"color": "", "city": "atlantis", "x1": None, "count": " 7 "},
    {"color": 5, "city": 2.0, "x2": "-1.5e1", "count": ""},
    {"color": float("nan"), "x1": float("nan"), "x2": 10**3},
    {},
]


def test_fast_row_encoder_equals_the_preprocessor(predictor):
    """The pandas-free encoding of plain JSON cells gives the preprocessor's exact inputs."""
    served = create_app(predictor).state.served
    fast = served.encoder.encode(ENCODER_ROWS)
    assert fast is not None
    slow = predictor.preprocessor.transform(served.frame(ENCODER_ROWS))
    assert torch.equal(fast.categorical, slow.categorical)
    torch.testing.assert_close(fast.numeric, slow.numeric)
    for declined in ({"x1": True}, {"x1": "1_000"}, {"x1": "nan"}, {"color": 1.5}):
        assert served.encoder.encode([*ENCODER_ROWS, declined]) is None


@pytest.mark.parametrize("value", [float("inf"), 1e300, -(10**30)])
def test_both_encoding_paths_refuse_an_out_of_range_number_naming_it(predictor, value):
    """Never NaN with success: the fast path names rows[i]['x'], the preprocessor the row."""
    served = create_app(predictor).state.served
    rows = [{"x1": 0.5}, {"x2": value}]
    with pytest.raises(PolytaskError, match=r"rows\[1\]\['x2'\].* is out of range"):
        served.encoder.encode(rows)
    with pytest.raises(PolytaskError, match=r"column 'x2', row 2: .* is out of range"):
        predictor.preprocessor.transform(served.frame(rows))


@pytest.mark.parametrize("extra", [{}, {"count": True}], ids=["fast path", "preprocessor path"])
def test_both_encoding_paths_answer_as_predictor_predict(client, predictor, extra):
    plain = {**ENCODER_ROWS[3], "color": None, "x1": None}  # JSON from httpx has no NaN
    rows = [*ENCODER_ROWS[:3], plain, {**ENCODER_ROWS[4], **extra}]
    response = client.post("/v1/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    served = client.app.state.served
    expected = predictor.predict(served.frame(rows))
    assert_matches(response.json()["predictions"], expected)


def test_tasks_option_restricts_the_answers(predictor):
    config = ServeConfig(tasks=("spend", "click", "spend"))
    with TestClient(create_app(predictor, config)) as restricted:
        body = restricted.post("/v1/predict", json={"rows": [{"x1": 1.0}]}).json()
        assert body["tasks"] == ["click", "spend"]
        assert set(body["predictions"][0]) == {"click", "spend"}
        schema = restricted.get("/v1/tasks").json()
        assert [t["name"] for t in schema["tasks"]] == ["click", "spend"]
    with pytest.raises(PolytaskError, match="did you mean 'click'"):
        create_app(predictor, ServeConfig(tasks=("clik",)))


def test_tasks_endpoint_describes_tasks_and_inputs(client, trained_run):
    schema = client.get("/v1/tasks").json()
    assert schema["model"] == trained_run["run"].name
    kinds = {task["name"]: task["kind"] for task in schema["tasks"]}
    assert kinds == {
        "click": "binary",
        "segment": "multiclass",
        "spend": "regression",
        "tags": "multilabel",
    }
    segment = next(t for t in schema["tasks"] if t["name"] == "segment")
    assert segment["outputs"]["classes"] == ["high", "low", "mid"]
    inputs = {column["name"]: column for column in schema["inputs"]}
    assert set(inputs) == {"color", "city", "x1", "x2", "count"}
    assert inputs["color"]["kind"] == "categorical"
    assert inputs["color"]["unseen_values_allowed"] is True
    assert inputs["x1"]["kind"] == "numeric"
    assert "clicked" in schema["ignored_columns"]
    assert schema["limits"]["max_rows"] == 50


def test_healthz_and_openapi(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert "rows" in str(paths["/v1/predict"]["post"]["requestBody"])


def test_a_server_bug_is_a_bare_500_and_the_server_keeps_serving(predictor):
    app = create_app(predictor)
    batcher = app.state.batcher
    real = batcher.process

    def broken(payloads):
        raise KeyError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        batcher.process = broken
        response = test_client.post("/v1/predict", json={"rows": [{"x1": 1.0}]})
        batcher.process = real
        assert response.status_code == 500
        assert response.json()["detail"].startswith("internal error")
        assert "secret" not in response.text and "Traceback" not in response.text
        assert test_client.post("/v1/predict", json={"rows": [{"x1": 1.0}]}).status_code == 200


BAD_REQUESTS = [
    ("malformed json", {"content": b'{"rows": [{"x1": 1,}]}'}, 400, "malformed JSON"),
    ("not utf-8", {"content": b"\xff\xfe\x00"}, 400, "malformed JSON"),
    ("empty body", {"content": b""}, 400, "body is empty"),
    ("body is a list", {"json": [{"x1": 1}]}, 422, "must be a JSON object"),
    ("rows missing", {"json": {"row": [{"x1": 1}]}}, 422, "'rows' is required"),
    ("rows not a list", {"json": {"rows": {"x1": 1}}}, 422, "'rows' must be a list"),
    ("row not an object", {"json": {"rows": [{"x1": 1}, 5]}}, 422, "rows[1] must be an object"),
    ("empty rows", {"json": {"rows": []}}, 422, "'rows' is empty"),
    ("nested cell", {"json": {"rows": [{"x1": [1, 2]}]}}, 422, "rows[0]['x1'] must be a string"),
    (
        "unknown column",
        {"json": {"rows": [{"x1": 1, "colour": "red"}]}},
        400,
        "unknown column 'colour' (did you mean 'color'?)",
    ),
    (
        "text in a numeric column",
        {"json": {"rows": [{"x1": 1}, {"x1": 2, "x2": "high"}]}},
        400,
        "rows[1]['x2']: 'high' is not a number",
    ),
    ("too many rows", {"json": {"rows": [{"x1": 1}] * 51}}, 413, "51 rows in one request"),
    ("body too large", {"json": {"rows": [{"color": "x" * 300_000}]}}, 413, "limit"),
    (
        "number out of range",
        {"json": {"rows": [{"x1": 1}, {"x1": 1e300}]}},
        400,
        "rows[1]['x1'] (column 'x1'): 1e+300 is out of range",
    ),
    (
        "infinite number",
        {"content": b'{"rows": [{"x2": Infinity}]}'},
        400,
        "rows[0]['x2'] (column 'x2'): inf is out of range",
    ),
    (
        "deeply nested JSON",
        {"content": b'{"rows": [{"x1": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}"},
        400,
        "nested too deeply",
    ),
    (
        "deeply nested, not in rows",
        {"content": b"[" * 50_000 + b"]" * 50_000},
        400,
        "nested too deeply",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_are_4xx_naming_the_problem(client, request_kwargs, status, fragment):
    response = client.post("/v1/predict", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment in body["detail"], body
    assert body["errors"] and "Traceback" not in response.text
    good_request(client)


def test_unknown_paths_and_methods_are_json_errors(client):
    assert client.get("/v1/nothing").json()["detail"] == "Not Found"
    assert client.get("/v1/predict").status_code == 405
    good_request(client)


def test_concurrent_requests_are_batched_and_not_mixed(client, predictor, trained_run):
    frame = trained_run["frames"]["valid"]
    parts = [frame.iloc[3 * i : 3 * i + 1 + i % 3] for i in range(20)]  # 1-3 distinct rows
    before = client.get("/healthz").json()["batching"]

    def send(part: pd.DataFrame) -> list[dict[str, Any]]:
        response = client.post("/v1/predict", json={"rows": records(part)})
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(send, parts))
    for part, answer in zip(parts, answers, strict=True):
        assert_matches(answer, predictor.predict(part))
    after = client.get("/healthz").json()["batching"]
    assert after["requests"] - before["requests"] == 20
    assert after["batches"] - before["batches"] < 20  # rows of several requests shared a call


def wait_until(condition, timeout: float = 60.0) -> bool:
    """Poll ``condition``; the timeout only matters when the test is failing anyway."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_overload_is_503_before_the_body_is_read_and_the_server_recovers(predictor):
    """Deterministic: the worker is held on the first request, the second fills the queue,
    and only then is the third sent. It is refused by admission (before its body is read),
    not by the batcher after parsing; every wait is on an event, never on elapsed time."""
    config = ServeConfig(max_rows=2, max_batch_rows=2, max_queue_rows=2, batch_window_ms=0)
    app = create_app(predictor, config)
    release, holding = threading.Event(), threading.Event()
    batcher, admission = app.state.batcher, app.state.admission
    real = batcher.process

    def held(payloads):
        holding.set()
        release.wait(timeout=120)
        return real(payloads)

    row = {"rows": [{"x1": 1.0}, {"x1": 2.0}]}
    with TestClient(app) as test_client, ThreadPoolExecutor(max_workers=2) as pool:
        batcher.process = held
        try:
            first = pool.submit(test_client.post, "/v1/predict", json=row)
            assert holding.wait(timeout=60)  # the worker holds the first request
            second = pool.submit(test_client.post, "/v1/predict", json=row)
            assert wait_until(lambda: batcher.stats.pending_rows == 2)  # the queue is full
            refused = test_client.post("/v1/predict", json=row)
        finally:
            release.set()
        statuses = [first.result(timeout=60).status_code, second.result(timeout=60).status_code]
        batcher.process = real
        assert refused.status_code == 503, refused.text
        assert "overloaded" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        assert (admission.refused, batcher.stats.rejected) == (1, 0)  # before reading it
        assert statuses == [200, 200]
        assert test_client.post("/v1/predict", json=row).status_code == 200
        health = test_client.get("/healthz").json()
        assert health["admission"] == {
            "refused": 1,
            "requests_being_read": 0,
            "body_bytes_in_flight": 0,
        }


def test_large_bodies_are_refused_before_reading_once_their_budget_is_spent(predictor):
    """Memory stays bounded: the bodies of admitted requests may hold at most
    max_body_bytes_in_flight; a request beyond it is 503 from its headers alone."""
    config = ServeConfig(max_body_bytes=1000, max_body_bytes_in_flight=2500)
    admission = create_app(predictor, config).state.admission
    tickets = [admission.admit(1000), admission.admit(1000)]
    with pytest.raises(Overloaded, match="bytes of request bodies"):
        admission.admit(1000)
    small = admission.admit(400)  # a small body still fits
    assert admission.bytes_in_flight == 2400
    with pytest.raises(Overloaded):
        admission.admit(None)  # an undeclared size counts as the body limit
    for ticket in [*tickets, small]:
        admission.release(ticket)
    assert (admission.bytes_in_flight, admission.unqueued, admission.refused) == (0, 0, 2)


def test_admission_counts_requests_being_read_at_the_mean_request_size(predictor):
    """Rows budget before reading: rows waiting plus unqueued requests at the mean size."""
    config = ServeConfig(max_rows=10, max_queue_rows=30)
    app = create_app(predictor, config)
    admission, stats = app.state.admission, app.state.batcher.stats
    stats.requests, stats.rows = 4, 40  # 10 rows per request so far
    stats.pending_rows = 5
    first = admission.admit(10)  # expected 5 + 0 * 10 rows
    second = admission.admit(10)  # 5 + 1 * 10
    third = admission.admit(10)  # 5 + 2 * 10 = 25 < 30
    with pytest.raises(Overloaded, match="3 requests are being read"):
        admission.admit(10)  # 5 + 3 * 10 = 35 >= 30
    admission.queued(first)  # its rows are counted by the batcher from now on
    assert admission.admit(10).unqueued
    for ticket in (first, second, third):
        admission.release(ticket)


def test_a_batch_that_fails_on_data_fails_only_the_culprit(predictor):
    """The per-request check normally stops bad rows; should one slip through, the batch is
    retried request by request and only that request gets the 400."""
    served = create_app(predictor).state.served
    results = served.predict_many([[{"x1": 1.0}], [{"x1": "not a number"}], [{"x2": 2.0}]])
    assert isinstance(results[0], list) and isinstance(results[2], list)
    assert "is not a number" in str(results[1])


def test_real_server_on_loopback_starts_answers_and_stops(predictor):
    import httpx
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(predictor, ServeConfig(max_rows=10))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            rows = [{"color": "red", "x1": 0.1}, {"city": "oslo", "x2": 5}]
            body = http.post("/v1/predict", json={"rows": rows}).json()
            assert_matches(body["predictions"], predictor.predict(pd.DataFrame(rows)))
            bad = http.post("/v1/predict", content=b"{oops")
            assert bad.status_code == 400 and "malformed JSON" in bad.json()["detail"]
            assert http.post("/v1/predict", json={"rows": rows}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
    assert not thread.is_alive()


def test_config_limits_are_checked():
    with pytest.raises(PolytaskError, match="max_queue_rows"):
        ServeConfig(max_rows=100, max_queue_rows=10)
    with pytest.raises(PolytaskError, match="batch_window_ms"):
        ServeConfig(batch_window_ms=-1)
    assert np.isfinite(ServeConfig().batch_window_ms)


def test_an_address_that_cannot_be_listened_on_is_one_line(predictor, trained_run):
    from polytask.serve.app import listening_socket
    from tests.cli_helpers import assert_user_error, invoke

    taken = listening_socket("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(PolytaskError, match=rf"cannot listen on 127.0.0.1:{port}: .*in use"):
            listening_socket("127.0.0.1", port)
        assert_user_error(
            invoke("serve", trained_run["run"], "--port", port), "cannot listen", "in use"
        )
    finally:
        taken.close()
    with pytest.raises(PolytaskError, match=r"--host 'no such host\.invalid'"):
        listening_socket("no such host.invalid", 8000)
    with pytest.raises(PolytaskError, match=r"--port must be 0..65535 \(got -1\)"):
        listening_socket("127.0.0.1", -1)


def test_a_large_body_is_parsed_off_the_event_loop_and_answered(client, predictor):
    """A body over THREADED_PARSE_BYTES goes through the parse thread: same answers."""
    from polytask.serve.app import THREADED_PARSE_BYTES

    rows = [{"color": "x" * 3000, "x1": float(i)} for i in range(40)]
    body = json.dumps({"rows": rows}).encode()
    assert THREADED_PARSE_BYTES <= len(body) <= 200_000
    response = client.post("/v1/predict", content=body)
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], predictor.predict(pd.DataFrame(rows)))
