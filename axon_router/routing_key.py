"""Routing key, target hints, labels, priority and deadline of a request, parsed and validated once."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import xxhash

from axon_router.admission import Priority
from axon_router.errors import BadRequest, DeadlineExceeded
from axon_router.knobs import Knobs
from sharder.headers import DEADLINE_HEADER, SESSION_HEADERS, TARGET_HEADER, TENANT_HEADER
from sharder.keyspace import group_slice_key, key_parts, slice_key
from sharder.prefix import CHUNK_BYTES, ROOT_SEED, prefix_hashes, render_chat, stable_chat_prefix

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
TOKENIZE = "/tokenize"
DETOKENIZE = "/detokenize"
#: Every POST route the router forwards (the body goes to the pod unchanged; only routing fields are read).
ROUTED_PATHS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, TOKENIZE, DETOKENIZE)

#: The flat layout's key headers, in precedence order: the tenant was a session key there.
FLAT_KEY_HEADERS = (*SESSION_HEADERS, TENANT_HEADER)
#: Body fields of the session part, in precedence order, after the headers.
KEY_FIELDS = ("session_id", "user")

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_MAX_TOKENS_CAP = 1 << 24


class DeadlineExpired(DeadlineExceeded):
    """The request's deadline had passed when it arrived."""

    status = 408


@dataclasses.dataclass(slots=True)
class RouteRequest:
    """A validated request, ready for target lookup and picking."""

    path: str  # COMPLETIONS or CHAT on the runtime
    model: str
    body: bytes  # JSON forwarded to the runtime
    stream: bool
    slice_key: int
    key_source: str  # where the session part came from (a header, a body field, grpc) or "prefix"
    prefix_hashes: list[int]
    prompt_tokens: int
    max_tokens: int
    deadline: float  # time.monotonic() deadline
    priority: Priority = Priority.INTERACTIVE
    target: str | None = None
    request_id: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    traceparent: str | None = None
    tracestate: str | None = None
    group: int | None = None  # the group part (high 32 bits) of a grouped key; None: flat key
    group_source: str = "none"  # x-tenant-id, tenant (gRPC field), prefix or none
    session_chunks: int = 0  # leading chunks a pod must hold to hold this session's own cache
    tenant: str | None = None  # the tenant (x-tenant-id, the gRPC field or the API key's): whose quota it spends


def _check_key(value: str, name: str, knobs: Knobs) -> str:
    if not value or len(value.encode("utf-8", "surrogatepass")) > knobs.max_key_bytes:
        raise BadRequest(
            f"{name} must be 1..{knobs.max_key_bytes} bytes",
            param=name,
            code="invalid_header" if name.startswith("x-") else None,
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadRequest(f"{name} must be valid UTF-8 without control characters", param=name)
    return value


def _parse_labels(headers: Mapping[str, str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    raw = headers.get("x-brunoise-labels")
    if raw is not None:
        for part in raw.split(","):
            k, sep, v = part.strip().partition("=")
            if not sep or not _LABEL_RE.match(k) or not _LABEL_RE.match(v):
                raise BadRequest(
                    "x-brunoise-labels must be comma-separated key=value pairs of [A-Za-z0-9._/-]",
                    param="x-brunoise-labels",
                    code="invalid_header",
                )
            labels[k] = v
    region = headers.get("x-brunoise-region")
    if region is not None:
        region = region.strip()
        if not _LABEL_RE.match(region):
            raise BadRequest(
                "x-brunoise-region must be 1..63 characters of [A-Za-z0-9._/-]",
                param="x-brunoise-region",
                code="invalid_header",
            )
        labels["region"] = region
    return labels


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for k, v in labels.items():
        if not _LABEL_RE.match(k) or not _LABEL_RE.match(v):
            raise BadRequest(
                f"label {k!r}={v!r}: keys and values must be 1..63 characters of [A-Za-z0-9._/-]", param="labels"
            )
    return dict(labels)


def parse_priority(value: str | None) -> Priority:
    if value is None:
        return Priority.INTERACTIVE
    v = value.strip().lower()
    if v in ("interactive", "", "default", "high"):
        return Priority.INTERACTIVE
    if v in ("batch", "low"):
        return Priority.BATCH
    raise BadRequest("x-priority must be 'interactive' or 'batch'", param="x-priority", code="invalid_header")


def deadline_from(headers: Mapping[str, str], knobs: Knobs, now: float) -> float:
    """Monotonic deadline from x-brunoise-timeout-ms (relative) or x-brunoise-deadline-ms (absolute unix ms)."""
    budget = knobs.default_timeout_s
    raw = headers.get("x-brunoise-timeout-ms")
    if raw is not None:
        try:
            ms = int(raw.strip())
        except ValueError:
            raise BadRequest(
                "x-brunoise-timeout-ms must be a positive integer (milliseconds)",
                param="x-brunoise-timeout-ms",
                code="invalid_header",
            ) from None
        if ms <= 0:
            raise DeadlineExpired(
                f"x-brunoise-timeout-ms is {ms}: the deadline has already passed",
                param="x-brunoise-timeout-ms",
                code="deadline_exceeded",
            )
        budget = min(budget, ms / 1000.0)
    raw = headers.get(DEADLINE_HEADER)
    if raw is not None:
        try:
            unix_ms = int(raw.strip())
        except ValueError:
            raise BadRequest(
                f"{DEADLINE_HEADER} must be an absolute unix time in milliseconds",
                param=DEADLINE_HEADER,
                code="invalid_header",
            ) from None
        left = unix_ms / 1000.0 - time.time()
        if left <= 0:
            raise DeadlineExpired(
                f"{DEADLINE_HEADER} is {-left:.3f}s in the past",
                param=DEADLINE_HEADER,
                code="deadline_exceeded",
            )
        budget = min(budget, left)
    return now + budget


def prefix_key(text: str, knobs: Knobs, hashes: list[int] | None = None) -> tuple[int, list[int]]:
    """(SliceKey, chain hashes) of a prompt: the SliceKey is the chain hash of its first ``routing_prefix_chunks``
    full chunks, so requests sharing that prefix share a key (the whole text when shorter than one chunk).
    ``hashes``: the text's chain hashes when already computed."""
    if hashes is None:
        hashes = prefix_hashes(text, max_chunks=knobs.max_prefix_chunks)
    k = min(knobs.routing_prefix_chunks, len(hashes))
    if k > 0:
        return hashes[k - 1], hashes
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"), seed=ROOT_SEED), hashes


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingKey:
    """A request's SliceKey and where its parts came from."""

    slice_key: int
    source: str  # the session part's source, or "prefix"
    group: int | None  # the group part (grouped layout), None for a flat key
    group_source: str  # x-tenant-id, tenant, prefix or none
    session_chunks: int  # leading chunks of the prompt that are this session's own (see ``routing_key``)


def routing_key(
    knobs: Knobs,
    hashes: list[int],
    text: str,
    stable_bytes: int | None,
    session: tuple[str, str] | None,
    tenant: tuple[str, str] | None,
) -> RoutingKey:
    """The SliceKey of a request (pure). ``hashes``: the prompt's chain hashes; ``stable_bytes``: the length of
    its part every turn of a session repeats (for chat the system message(s) plus the first user message; None
    for a completion); ``session`` / ``tenant``: (source, value) when given.

    grouped layout: group = the tenant, else the chain hash of the first ``group_prefix_chunks`` chunks of the
    stable part (for chat, all of its full chunks when shorter; a shorter completion has none), else none; the key is ``group_slice_key(group, session)``
    with the session part from the session id, or from the whole prompt text when there is none.
    flat layout: the session id (or the tenant) hashed whole. Either way, with no id and no group: ``prefix_key``.

    ``session_chunks``: a pod holding this many leading chunks holds the session's own cache, not just a shared
    prefix (for chat, the stable part's full chunks; for a completion, one past the group prefix)."""
    n = len(hashes)
    if stable_bytes is None:
        session_chunks = min(n, knobs.group_prefix_chunks + 1)
        # a completion's later turns are longer prompts: only a full group prefix is the same on every turn
        stable = n if n >= knobs.group_prefix_chunks else 0
    else:
        session_chunks = stable = min(n, stable_bytes // CHUNK_BYTES)
    if knobs.key_layout == "flat":
        # the old precedence: session headers (or the gRPC field), then the tenant, then body fields
        app = session if session is not None and session[0] not in KEY_FIELDS else (tenant or session)
        if app is not None:
            return RoutingKey(slice_key(app[1]), app[0], None, "none", session_chunks)
        k, _ = prefix_key(text, knobs, hashes)
        return RoutingKey(k, "prefix", None, "none", session_chunks)
    group: str | bytes | None = None
    gsource = "none"
    if tenant is not None:
        gsource, group = tenant
    elif stable > 0:
        gsource, group = "prefix", hashes[min(stable, knobs.group_prefix_chunks) - 1].to_bytes(8, "big")
    if group is None:
        if session is not None:
            return RoutingKey(slice_key(session[1]), session[0], None, gsource, session_chunks)
        k, _ = prefix_key(text, knobs, hashes)
        return RoutingKey(k, "prefix", None, gsource, session_chunks)
    if session is not None:
        key = group_slice_key(group, session[1])
        source = session[0]
    else:
        key = group_slice_key(group, text)  # the whole prompt: a group's keyless requests spread over its range
        source = "prefix"
    return RoutingKey(key, source, key_parts(key)[0], gsource, session_chunks)


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"{name} must be an integer, got {type(v).__name__}", param=name)
    if v < 1 or v > _MAX_TOKENS_CAP:
        raise BadRequest(f"{name} must be between 1 and {_MAX_TOKENS_CAP}, got {v}", param=name)
    return v


def _token_ids_text(v: object) -> str | None:
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return " ".join(map(str, v))
    return None


def _other_prompt_text(path: str, body: Mapping[str, Any]) -> str:
    """The prefix text of an embeddings, responses, tokenize or detokenize request (shape checked loosely: the pod
    answers what it cannot serve)."""
    if path == DETOKENIZE:
        text = _token_ids_text(body.get("tokens"))
        if text is None:
            raise BadRequest("tokens is required: a non-empty list of token ids", param="tokens")
        return text
    if path == TOKENIZE and body.get("messages") is not None:
        return prompt_text(CHAT, body)
    if path == TOKENIZE:
        return prompt_text(COMPLETIONS, body)
    name = "input"
    v = body.get(name)
    if path == RESPONSES:
        instructions = body.get("instructions")
        head = [{"role": "system", "content": instructions}] if isinstance(instructions, str) else []
        if isinstance(v, str):
            return render_chat([*head, {"role": "user", "content": v}])
        if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
            return render_chat([*head, *(m for m in v if "role" in m)])
        raise BadRequest("input is required: a string or a non-empty list of input items", param=name)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v:
        if isinstance(v[0], str):
            return v[0]
        text = _token_ids_text(v) or _token_ids_text(v[0])
        if text is not None:
            return text
    raise BadRequest("input is required: a string, a list of strings or of token ids", param=name)


def prompt_text(path: str, body: Mapping[str, Any]) -> str:
    """The text a request's prefix is hashed from (checks the prompt / messages shape)."""
    if path not in (CHAT, COMPLETIONS):
        return _other_prompt_text(path, body)
    if path == CHAT:
        msgs = body.get("messages")
        if msgs is None:
            raise BadRequest("messages is required: a non-empty list of {role, content} objects", param="messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages must be a non-empty list of {role, content} objects", param="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be an object with role and content", param=f"messages[{i}]")
            role = m.get("role")
            if not isinstance(role, str) or not role:
                raise BadRequest(f"messages[{i}].role must be a non-empty string", param=f"messages[{i}].role")
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise BadRequest(
                    f"messages[{i}].content must be a string or a list of content parts", param=f"messages[{i}].content"
                )
        return render_chat(msgs)
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("prompt is required: a string (or a list of strings)", param="prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return str(prompt[0])
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return " ".join(map(str, prompt))
    raise BadRequest("prompt must be a string, a non-empty list of strings or a list of token ids", param="prompt")


def stable_bytes(path: str, body: Mapping[str, Any]) -> int | None:
    """UTF-8 length of the part of a checked chat's prompt every turn repeats (``stable_chat_prefix``); None
    for a completion."""
    if path != CHAT:
        return None
    return len(stable_chat_prefix(body["messages"]).encode("utf-8"))


def parse_openai(path: str, raw: bytes, headers: Mapping[str, str], knobs: Knobs, now: float) -> RouteRequest:
    """Parse and validate an OpenAI completions / chat completions request; BadRequest says what to fix."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "model is required: a non-empty string naming a served model (see GET /v1/models)", param="model"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", param="stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    max_tokens = _int_field(body, "max_tokens")
    if path == CHAT:
        mct = _int_field(body, "max_completion_tokens")
        max_tokens = mct if mct is not None else max_tokens
    elif path == RESPONSES:
        max_tokens = _int_field(body, "max_output_tokens")
    elif path not in (CHAT, COMPLETIONS):
        max_tokens = 1  # nothing is generated
    ptext = prompt_text(path, body)

    # routing key: the tenant (group), then the session: headers, then body fields; else the prompt prefix
    tenant: tuple[str, str] | None = None
    tv = headers.get(TENANT_HEADER)
    if tv is not None:
        tenant = (TENANT_HEADER, _check_key(tv.strip(), TENANT_HEADER, knobs))
    session: tuple[str, str] | None = None
    for h in SESSION_HEADERS:
        v = headers.get(h)
        if v is not None:
            session = (h, _check_key(v.strip(), h, knobs))
            break
    if session is None:
        for f in KEY_FIELDS:
            v = body.get(f)
            if v is None:
                continue
            if not isinstance(v, str):
                raise BadRequest(f"{f} must be a string", param=f)
            if v:
                session = (f, _check_key(v, f, knobs))
                break
    hashes = prefix_hashes(ptext, max_chunks=knobs.max_prefix_chunks)
    rk = routing_key(knobs, hashes, ptext, stable_bytes(path, body), session, tenant)

    rid = headers.get("x-request-id")
    if rid is not None:
        rid = _check_key(rid.strip(), "x-request-id", knobs)
    else:
        brid = body.get("request_id")
        if brid is not None:
            if not isinstance(brid, str):
                raise BadRequest("request_id must be a string", param="request_id")
            rid = _check_key(brid, "request_id", knobs)
    target = headers.get(TARGET_HEADER)
    if target is not None:
        target = _check_key(target.strip(), TARGET_HEADER, knobs)
    tp = headers.get("traceparent")
    return RouteRequest(
        path=path,
        model=model,
        body=raw,
        stream=stream,
        slice_key=rk.slice_key,
        key_source=rk.source,
        prefix_hashes=hashes,
        prompt_tokens=int(len(ptext) / knobs.bytes_per_token) + 1,
        max_tokens=max_tokens if max_tokens is not None else knobs.default_max_tokens,
        deadline=deadline_from(headers, knobs, now),
        priority=parse_priority(headers.get("x-priority")),
        target=target,
        request_id=rid,
        labels=_parse_labels(headers),
        traceparent=tp if tp and len(tp) < 256 else None,
        tracestate=headers.get("tracestate"),
        group=rk.group,
        group_source=rk.group_source,
        session_chunks=rk.session_chunks,
        tenant=tenant[1] if tenant is not None else None,
    )


def parse_grpc(
    req: Any,
    time_remaining_s: float | None,
    knobs: Knobs,
    now: float,
    traceparent: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> RouteRequest:
    """Parse a ``brunoise.v1.GenerateRequest`` into a RouteRequest forwarded as a streaming OpenAI request.
    The tenant is the request's ``tenant`` field, else the ``x-tenant-id`` metadata."""
    if not req.model:
        raise BadRequest("model is required: name a served model", param="model")
    which = req.WhichOneof("input")
    body: dict[str, Any] = {"model": req.model, "stream": True, "stream_options": {"include_usage": True}}
    if which == "prompt":
        path = COMPLETIONS
        body["prompt"] = req.prompt
    elif which == "messages":
        path = CHAT
        msgs = [{"role": m.role, "content": m.content} for m in req.messages.messages]
        body["messages"] = msgs
    else:
        raise BadRequest("one of prompt or messages is required", param="input")
    ptext = prompt_text(path, body)
    sp = req.sampling
    max_tokens: int | None = None
    if req.HasField("sampling"):
        if sp.max_tokens < 0 or sp.max_tokens > _MAX_TOKENS_CAP:
            raise BadRequest(
                f"sampling.max_tokens must be between 1 and {_MAX_TOKENS_CAP}, got {sp.max_tokens}",
                param="sampling.max_tokens",
            )
        if sp.max_tokens:
            max_tokens = int(sp.max_tokens)
            body["max_tokens"] = max_tokens
        if sp.temperature < 0:
            raise BadRequest("sampling.temperature must be >= 0", param="sampling.temperature")
        if not 0 <= sp.top_p <= 1:
            raise BadRequest("sampling.top_p must be in [0, 1]", param="sampling.top_p")
        body["temperature"] = sp.temperature
        if sp.top_p:
            body["top_p"] = sp.top_p
        if sp.stop:
            body["stop"] = list(sp.stop)
        if sp.seed:
            body["seed"] = int(sp.seed) & 0x7FFFFFFFFFFFFFFF
        if sp.ignore_eos:
            body["ignore_eos"] = True
    session = ("grpc", _check_key(req.routing_key, "routing_key", knobs)) if req.routing_key else None
    tenant: tuple[str, str] | None = None
    if req.tenant:
        tenant = ("tenant", _check_key(req.tenant, "tenant", knobs))
    elif metadata is not None and metadata.get(TENANT_HEADER) is not None:
        tenant = (TENANT_HEADER, _check_key(metadata[TENANT_HEADER].strip(), TENANT_HEADER, knobs))
    hashes = prefix_hashes(ptext, max_chunks=knobs.max_prefix_chunks)
    rk = routing_key(knobs, hashes, ptext, stable_bytes(path, body), session, tenant)
    budget = knobs.default_timeout_s
    if time_remaining_s is not None:
        if time_remaining_s <= 0:
            raise DeadlineExpired("the gRPC deadline had passed when the request arrived", code="deadline_exceeded")
        budget = min(budget, time_remaining_s)
    if req.deadline_ms:
        budget = min(budget, req.deadline_ms / 1000.0)
    rid = _check_key(req.request_id, "request_id", knobs) if req.request_id else None
    if req.target:
        _check_key(req.target, "target", knobs)
    if req.priority not in (0, 1, 2):
        raise BadRequest(f"priority {req.priority} is not a known Priority", param="priority")
    return RouteRequest(
        path=path,
        model=req.model,
        body=json.dumps(body).encode(),
        stream=True,
        slice_key=rk.slice_key,
        key_source=rk.source,
        prefix_hashes=hashes,
        prompt_tokens=int(len(ptext) / knobs.bytes_per_token) + 1,
        max_tokens=max_tokens if max_tokens is not None else knobs.default_max_tokens,
        deadline=now + budget,
        priority=Priority.BATCH if req.priority == 2 else Priority.INTERACTIVE,
        target=req.target or None,
        request_id=rid,
        labels=check_labels(dict(req.labels)),
        traceparent=traceparent,
        group=rk.group,
        group_source=rk.group_source,
        session_chunks=rk.session_chunks,
        tenant=tenant[1] if tenant is not None else None,
    )
