"""Fuzz of the router's OpenAI HTTP surface: surrogates, NaN, huge numbers, deep nesting, wrong types, huge strings.

Whatever the body, the answer is never a 5xx, every error is OpenAI-shaped JSON, and the router still serves after.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.router.conftest import MODEL, Cluster, post

pytestmark = pytest.mark.slow

_scalar = st.sampled_from(
    ["null", "true", "false", "0", "-1", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1.5", "-0.0",
     "4294967297", "18446744073709551617", "1e-999", '""', '"\\u0000"', '"\\ud800"',
     '"h\\ud800i"', '"\\udfff\\ud800"', '"\\ud83d\\ude00"']
) | st.builds(lambda: "1" + "0" * 5000)  # over json's 4300-digit limit  # fmt: skip
_text = st.text(max_size=40).map(json.dumps)
_huge = st.integers(1, 80_000).map(lambda n: json.dumps("x" * n))


def _nest(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


_deep = st.builds(_nest, st.sampled_from([10, 500, 5_000, 50_000]), st.sampled_from(["list", "dict"]))
_value = st.recursive(
    _scalar | _text,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(_text, inner), max_size=3).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
    ),
    max_leaves=6,
)
_any = _value | _huge | _deep
_message = st.one_of(
    st.builds(
        lambda r, c: '{"role":' + r + ',"content":' + c + "}", st.sampled_from(['"user"', '"system"']) | _any, _any
    ),
    _any,
)
_messages = st.lists(_message, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]") | _any
_POOL: dict[str, st.SearchStrategy[str]] = dict(
    model=_any,
    prompt=_text | _scalar | _any,
    messages=_messages,
    max_tokens=st.sampled_from(["1", "0", "-1", "1e3", "true", '"4"', "NaN", "99999999999999999999"]) | _any,
    stream=st.sampled_from(["true", "false", '"yes"', "1"]) | _any,
    stream_options=st.sampled_from(['{"include_usage": true}', "[]", "null", '{"include_usage": "x"}']),
    temperature=_scalar,
    top_p=_scalar,
    n=_scalar,
    stop=_any,
    seed=_scalar,
    user=_any,
    session_id=_any,
    request_id=_any,
)
#: Mostly a valid request with a few adversarial fields laid over it (so most examples reach a pod), sometimes
#: adversarial fields alone.
_VALID = {"model": json.dumps(MODEL), "prompt": '"hello there"', "max_tokens": "2"}
_adversarial = st.lists(st.sampled_from(sorted(_POOL)), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _POOL[n] for n in names})
)
_fields = st.builds(lambda base, over: {**base, **over}, st.sampled_from([_VALID, _VALID, _VALID, {}]), _adversarial)


def _body(fields: dict[str, str]) -> bytes:
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode("utf-8", "surrogatepass")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), fields=_fields)
def test_fuzz_http_bodies_never_5xx(fuzz_cluster: Cluster, path: str, fields: dict[str, str]) -> None:
    status, headers, raw = post(fuzz_cluster.http(0) + path, _body(fields), timeout=30)
    event(str(status))
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), (status, headers, raw[:200])
        err = json.loads(raw)["error"]
        assert err["message"] and err["type"], err
        assert len(raw) < 16384, len(raw)  # what errors echo is clipped


def test_router_still_serves_after_the_fuzz(fuzz_cluster: Cluster) -> None:
    status, _, raw = post(fuzz_cluster.http(0) + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert status == 200, raw
    assert all(p.alive() for p in fuzz_cluster.group.procs)
