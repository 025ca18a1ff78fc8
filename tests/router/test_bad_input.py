"""Bad input on the HTTP front end: OpenAI-style 4xx bodies for each case, and a hypothesis fuzz: no 5xx, no crash."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.router.conftest import MODEL, Cluster

pytestmark = pytest.mark.slow


def raw_post(
    base: str, path: str, body: bytes, headers: list[tuple[str, bytes | str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        for k, v in headers or []:
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


GOOD = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
CASES = [
    ("malformed json", "/v1/completions", b'{"model": "sim-model", "prompt": ', [], 400, "invalid_json"),
    ("not an object", "/v1/completions", b"[1, 2, 3]", [], 400, "invalid_json"),
    ("missing model", "/v1/completions", b'{"prompt": "x"}', [], 400, None),
    ("missing prompt", "/v1/completions", b'{"model": "sim-model"}', [], 400, None),
    ("missing messages", "/v1/chat/completions", b'{"model": "sim-model"}', [], 400, None),
    ("empty messages", "/v1/chat/completions", b'{"model": "sim-model", "messages": []}', [], 400, None),
    ("unknown model", "/v1/completions", b'{"model": "gpt-nope", "prompt": "x"}', [], 404, "model_not_found"),
    (
        "unknown target",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-brunoise-target", "nope")],
        404,
        "target_not_found",
    ),
    (
        "oversize body",
        "/v1/completions",
        json.dumps({**GOOD, "prompt": "x" * 70000}).encode(),
        [],
        413,
        "body_too_large",
    ),
    (
        "invalid utf-8 body",
        "/v1/completions",
        b'{"model": "sim-model", "prompt": "\xff\xfe"}',
        [],
        400,
        "invalid_encoding",
    ),
    ("negative max_tokens", "/v1/completions", json.dumps({**GOOD, "max_tokens": -3}).encode(), [], 400, None),
    (
        "string max_tokens",
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "3"}).encode(),
        [],
        400,
        None,
    ),
    (
        "bad priority header",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-priority", "urgent")],
        400,
        "invalid_header",
    ),
    (
        "bad region header",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-brunoise-region", "eu west!")],
        400,
        "invalid_header",
    ),
    ("invalid utf-8 header", "/v1/completions", json.dumps(GOOD).encode(), [("x-session-id", b"\xff\xfe")], 400, None),
    (
        "overlong session header",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-session-id", "s" * 2000)],
        400,
        "invalid_header",
    ),
    (
        "bad timeout header",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-brunoise-timeout-ms", "soon")],
        400,
        "invalid_header",
    ),
    (
        "expired deadline",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-brunoise-deadline-ms", "1000")],
        408,
        "deadline_exceeded",
    ),
    (
        "no eligible region",
        "/v1/completions",
        json.dumps(GOOD).encode(),
        [("x-brunoise-region", "mars")],
        503,
        "no_eligible_pod",
    ),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_openai_error(
    cluster: Cluster,
    name: str,
    path: str,
    body: bytes,
    headers: list[tuple[str, bytes | str]],
    status: int,
    code: str | None,
) -> None:
    got, _, raw = raw_post(cluster.http(0), path, body, headers)
    assert got == status, (name, got, raw[:300])
    err = json.loads(raw)["error"]
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code, err


def test_router_still_serves_after_bad_input(cluster: Cluster) -> None:
    got, _, raw = raw_post(cluster.http(0), "/v1/completions", json.dumps(GOOD).encode())
    assert got == 200, raw


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([MODEL, "", "other"]) | _json,
        "prompt": st.text(max_size=200) | _json,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", ""]) | _json, "content": st.text(max_size=50) | _json}
            ),
            max_size=3,
        )
        | _json,
        "max_tokens": st.integers(-5, 3) | _json.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)),
        "stream": st.booleans() | _json,
        "session_id": st.text(max_size=30) | _json,
        "user": st.text(max_size=30) | _json,
        "stream_options": st.just({"include_usage": True}) | _json,
        "request_id": st.text(max_size=10) | _json,
    },
)
_header_names = st.sampled_from(["x-session-id", "x-user-id", "x-tenant-id", "x-priority", "x-brunoise-region", "x-brunoise-labels", "x-brunoise-target",
                                 "x-brunoise-timeout-ms", "x-request-id", "traceparent"])  # fmt: skip
_header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40) | st.binary(
    max_size=12
).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=_fields.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=300),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=3),
)
def test_fuzz_http_front_end_never_5xx(
    cluster: Cluster, path: str, body: bytes, headers: list[tuple[str, bytes | str]]
) -> None:
    status, h, raw = raw_post(
        cluster.http(1),
        path,
        body,
        [(k, v.strip() if isinstance(v, str) else v) for k, v in headers if k != "x-brunoise-timeout-ms" or v],
    )
    assert status < 500, (status, raw[:300])
    if status >= 400 and h.get("content-type", "").startswith("application/json"):  # aiohttp's parser answers
        assert "error" in json.loads(raw)  # malformed HTTP (control bytes in a header) itself, in plain text
