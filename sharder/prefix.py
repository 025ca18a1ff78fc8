"""Block-aligned, chained prefix hashes of prompt text, shared by routers (routing keys, hit estimates) and runtimes (cache summaries)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

import xxhash

#: Bytes of prompt text per token: the estimate used wherever a token count is needed from text before the
#: engine tokenizes it (roughly English under BPE tokenizers); the simulated engine's tokenizer is exactly this.
TEXT_BYTES_PER_TOKEN = 4

#: Tokens per KV-cache block: vLLM's default block_size (on CUDA), the block size assumed of a pod that reports
#: none, and the simulated engine's block size.
KV_BLOCK_TOKENS = 16

#: Bytes of UTF-8 prompt text per hashed chunk. The simulated engine uses ``TEXT_BYTES_PER_TOKEN`` bytes per token
#: and ``KV_BLOCK_TOKENS``-token KV blocks, so one chunk is exactly one of its KV blocks.
CHUNK_BYTES = 64

#: Seed of the first chunk's hash (the chain's root).
ROOT_SEED = 0x6272756E6F697365  # "brunoise"


class InvalidText(ValueError):
    """Text that is not valid Unicode (a lone surrogate, which JSON's ``\\ud800`` escapes allow): it has no UTF-8."""


def utf8(text: str) -> bytes:
    """The UTF-8 bytes of ``text``; InvalidText (naming the character and where) when it holds a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidText(
            f"the text holds a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}; send valid Unicode"
        ) from None


def prefix_hashes(text: str | bytes, chunk_bytes: int = CHUNK_BYTES, max_chunks: int | None = None) -> list[int]:
    """Chained xxh3_64 hashes of the full chunks of ``text``: hash i covers bytes [0, (i+1)*chunk_bytes).

    A trailing partial chunk is not hashed (as a paged KV cache stores only full blocks). InvalidText when
    ``text`` is not valid Unicode.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    data = utf8(text) if isinstance(text, str) else bytes(text)
    n = len(data) // chunk_bytes
    if max_chunks is not None:
        n = min(n, max_chunks)
    out: list[int] = []
    h = ROOT_SEED
    for i in range(n):
        h = xxhash.xxh3_64_intdigest(data[i * chunk_bytes : (i + 1) * chunk_bytes], seed=h)
        out.append(h)
    return out


def render_chat(messages: Iterable[Mapping[str, object]]) -> str:
    """The canonical text of a chat: what routers hash and what the simulated engine tokenizes.

    Each message renders as ``<|role|>\\ncontent\\n``; a trailing ``<|assistant|>\\n`` opens the reply.
    Content given as a list of OpenAI content parts keeps only the text parts.
    """
    parts: list[str] = []
    for m in messages:
        role = str(m.get("role", "user"))
        content = m.get("content", "")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        parts.append(f"<|{role}|>\n{content}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def stable_chat_prefix(messages: Iterable[Mapping[str, object]]) -> str:
    """The canonical text of a chat up to and including its first user message (the system message(s) and
    that message, as ``render_chat`` renders them, without the reply opener): the part every later turn of the
    session starts with, so its leading chunks hash the same on every turn. All messages when none is a user's."""
    head: list[Mapping[str, object]] = []
    for m in messages:
        head.append(m)
        if str(m.get("role", "user")) == "user":
            break
    return render_chat(head)[: -len("<|assistant|>\n")]


def matched_chunks(hashes: Sequence[int], held: Container[int]) -> int:
    """How many leading chunks of a request (its ``prefix_hashes``) a holder of ``held`` already has."""
    n = 0
    for h in hashes:
        if h not in held:
            break
        n += 1
    return n
