"""Routing keys of parsed requests: the grouped layout (tenant or shared-prefix group) and the flat one."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from axon_router.knobs import Knobs, knob_docs
from axon_router.routing_key import CHAT, COMPLETIONS, RouteRequest, parse_grpc, parse_openai, prefix_key
from axon_router.settings import parse_router_settings, router_parser
from brunoise_api.v1 import inference_pb2
from sharder.keyspace import group_range, group_slice_key, slice_key
from sharder.prefix import prefix_hashes, render_chat, stable_chat_prefix

K = Knobs()
FLAT = dataclasses.replace(K, key_layout="flat")
PREAMBLE = "You are a careful assistant of the ACME platform. " * 11  # ~560 bytes shared by every tenant


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "omega", "kappa")) for _ in range(n))[:n]


def system_prompt(tenant: int) -> str:
    return PREAMBLE + words(random.Random(tenant), 1500)


def chat(
    messages: list[dict[str, str]], headers: dict[str, str] | None = None, knobs: Knobs = K, **body: str
) -> RouteRequest:
    raw = json.dumps({"model": "m", "messages": messages, **body}).encode()
    return parse_openai(CHAT, raw, headers or {}, knobs, 0.0)


def session_turns(tenant: int, first_user: str, turns: int) -> list[list[dict[str, str]]]:
    msgs = [{"role": "system", "content": system_prompt(tenant)}, {"role": "user", "content": first_user}]
    out = [list(msgs)]
    for t in range(1, turns):
        msgs += [{"role": "assistant", "content": f"reply {t}"}, {"role": "user", "content": f"follow-up {t}"}]
        out.append(list(msgs))
    return out


def test_a_tenants_sessions_share_a_group_and_each_session_keeps_its_key() -> None:
    a = session_turns(1, "how do I reset my password?", 4)
    b = session_turns(1, "what is the refund policy for annual plans?", 3)
    ka = [chat(m, {"x-session-id": "sa"}) for m in a]
    kb = [chat(m, {"x-session-id": "sb"}) for m in b]
    assert {r.slice_key for r in ka} == {ka[0].slice_key}  # stable over the session's turns
    assert {r.slice_key for r in kb} == {kb[0].slice_key}
    assert ka[0].slice_key != kb[0].slice_key
    assert ka[0].group == kb[0].group is not None and ka[0].group_source == "prefix"
    assert ka[0].slice_key >> 32 == ka[0].group and ka[0].slice_key & 0xFFFFFFFF == slice_key("sa") & 0xFFFFFFFF
    assert ka[0].key_source == "x-session-id"


def test_tenants_sharing_a_preamble_get_their_own_groups() -> None:
    groups = {chat(session_turns(t, "hello there", 1)[0], {"x-session-id": "s"}).group for t in range(8)}
    assert len(groups) == 8


def test_the_session_part_is_not_the_tenant() -> None:
    msgs = session_turns(2, "hi", 1)[0]
    r = chat(msgs, {"x-tenant-id": "acme", "x-user-id": "u7"}, session_id="s1")
    assert r.slice_key == group_slice_key("acme", "u7") and r.group_source == "x-tenant-id"
    assert group_range("acme").contains(r.slice_key)
    r = chat(msgs, {"x-tenant-id": "acme"}, session_id="s1", user="u1")
    assert r.slice_key == group_slice_key("acme", "s1") and r.key_source == "session_id"
    r = chat(msgs, {"x-tenant-id": "acme"}, user="u1")
    assert r.slice_key == group_slice_key("acme", "u1") and r.key_source == "user"


def test_keyless_requests_over_a_shared_document_share_a_group() -> None:
    doc = words(random.Random(7), 4000)
    keys = [
        parse_openai(COMPLETIONS, json.dumps({"model": "m", "prompt": doc + f"\nQ{i}: why?"}).encode(), {}, K, 0.0)
        for i in range(20)
    ]
    assert len({r.group for r in keys}) == 1 and keys[0].group is not None
    assert {r.key_source for r in keys} == {"prefix"}
    assert len({r.slice_key for r in keys}) == 20  # spread inside the group's range, so a hot group can split
    other = parse_openai(COMPLETIONS, json.dumps({"model": "m", "prompt": "x" * 4000}).encode(), {}, K, 0.0)
    assert other.group != keys[0].group


def test_a_short_chat_without_a_group_is_keyed_flat() -> None:
    r = chat([{"role": "user", "content": "hi"}], {"x-session-id": "s9"})
    assert r.group is None and r.slice_key == slice_key("s9")
    r = chat([{"role": "user", "content": "hi"}])
    assert r.key_source == "prefix" and r.group is None
    assert r.slice_key == prefix_key(render_chat([{"role": "user", "content": "hi"}]), K)[0]


def test_flat_layout_is_the_old_behaviour() -> None:
    msgs = session_turns(3, "hi", 1)[0]
    assert chat(msgs, {"x-session-id": "s1", "x-tenant-id": "t"}, FLAT).slice_key == slice_key("s1")
    assert chat(msgs, {"x-tenant-id": "t"}, FLAT, session_id="s2").slice_key == slice_key("t")
    assert chat(msgs, {}, FLAT, session_id="s2").slice_key == slice_key("s2")
    r = chat(msgs, {}, FLAT)
    assert r.key_source == "prefix" and r.group is None
    assert r.slice_key == prefix_key(render_chat(msgs), FLAT)[0]


def test_session_chunks_cover_the_first_user_message() -> None:
    turns = session_turns(4, "u" * 300, 3)
    r = chat(turns[2], {"x-session-id": "s"})
    assert r.session_chunks == len(stable_chat_prefix(turns[2]).encode()) // 64
    assert r.session_chunks > K.group_prefix_chunks
    assert render_chat(turns[2]).startswith(stable_chat_prefix(turns[0]))


def test_grpc_tenant_field_then_metadata() -> None:
    doc = system_prompt(5)
    req = inference_pb2.GenerateRequest(model="m", prompt=doc, routing_key="s1", tenant="acme")
    assert parse_grpc(req, None, K, 0.0).slice_key == group_slice_key("acme", "s1")
    req = inference_pb2.GenerateRequest(model="m", prompt=doc, routing_key="s1")
    r = parse_grpc(req, None, K, 0.0, metadata={"x-tenant-id": "beta"})
    assert r.slice_key == group_slice_key("beta", "s1") and r.group_source == "x-tenant-id"
    r = parse_grpc(req, None, K, 0.0)
    assert r.group_source == "prefix" and r.key_source == "grpc"
    assert parse_grpc(req, None, FLAT, 0.0).slice_key == slice_key("s1")


def test_layout_and_pick_knobs_parse_and_validate(capsys: pytest.CaptureFixture[str]) -> None:
    a = ["--assigner", "127.0.0.1:1"]
    _, k = parse_router_settings([*a, "--key-layout", "flat", "--sticky", "false", "--load-cap", "0"])
    assert (k.key_layout, k.sticky, k.load_cap) == ("flat", False, 0.0)
    assert parse_router_settings(a)[1].sticky is True
    for bad in (["--key-layout", "nested"], ["--load-cap", "0.5"], ["--group-prefix-chunks", "0"]):
        with pytest.raises(SystemExit):
            parse_router_settings([*a, *bad])
        assert bad[0][2:].replace("-", "_") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_router_settings([*a, "--sticky", "maybe"])


def test_a_short_completion_keeps_its_session_key_as_it_grows() -> None:
    """A completion's prompt grows turn by turn: below a full group prefix it has no group, so its key is stable."""
    turns = ["user: hi\n", "user: hi\nbot: hello\nuser: and then?\n" * 3, "x" * (64 * K.group_prefix_chunks + 10)]
    keys = [
        parse_openai(COMPLETIONS, json.dumps({"model": "m", "prompt": t}).encode(), {"x-session-id": "c1"}, K, 0.0)
        for t in turns
    ]
    assert keys[0].slice_key == keys[1].slice_key == slice_key("c1") and keys[1].group is None
    assert keys[2].group is not None and keys[2].slice_key == group_slice_key(prefix_hashes_bytes(turns[2]), "c1")


def prefix_hashes_bytes(text: str) -> bytes:
    return prefix_hashes(text)[K.group_prefix_chunks - 1].to_bytes(8, "big")


def test_every_knob_flag_carries_its_docstring() -> None:
    docs = knob_docs()
    assert set(docs) == set(Knobs.field_names())
    assert docs["load_cap"].startswith("Bounded-load cap") and "\n" not in docs["key_layout"]
    text = router_parser().format_help()
    assert "(default 1.25)" in text and "Bounded-load cap" in text
