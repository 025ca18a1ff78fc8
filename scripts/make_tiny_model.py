"""Build a tiny random-weight Llama model with a locally trained tokenizer as a HF model dir (run with .venv-vllm's python)."""

from __future__ import annotations

import argparse
import json
import pathlib
import random

#: The chat template renders exactly like ``sharder.prefix.render_chat`` (``<|role|>\ncontent\n`` per message,
#: then ``<|assistant|>\n``), so the text routers hash is the text the engine tokenizes.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|pad|>"]

_ONSETS = [
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "ch",
    "sh",
    "th",
    "st",
    "br",
    "pl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ee"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ck"]


def corpus(seed: int, n_lines: int = 4000) -> list[str]:
    """Deterministic pseudo-English text (plus chat markup, digits and punctuation) to train the tokenizer on."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))
        for _ in range(3000)
    ]
    words += ["the", "a", "of", "and", "to", "in", "is", "you", "that", "it", "user", "system", "assistant", "session"]
    lines: list[str] = []
    for i in range(n_lines):
        n = rng.randint(4, 24)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        sentence = sentence.capitalize() + rng.choice([".", "?", "!", ",", ";", ":"])
        if i % 7 == 0:
            sentence = f"<|{rng.choice(['user', 'assistant', 'system'])}|>\n{sentence}\n"
        if i % 11 == 0:
            sentence += f" {rng.randint(0, 100000)} #{i} (x={rng.random():.3f})"
        lines.append(sentence)
    return lines


def build_tokenizer(seed: int, vocab_size: int) -> object:
    """A byte-level BPE tokenizer (every string encodes) trained on ``corpus(seed)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json to OUTDIR."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("outdir", type=pathlib.Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument(
        "--heads", type=int, default=4, help="hidden/heads must be a head size vLLM's CPU backend supports (32..128)"
    )
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-position-embeddings", type=int, default=4096)
    args = ap.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out: pathlib.Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)

    raw = build_tokenizer(args.seed, args.vocab_size)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, pad_token="<|pad|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = args.max_position_embeddings
    tokenizer.save_pretrained(str(out))
    vocab = len(tokenizer)

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",  # what vLLM's CPU backend runs; saved as such, so no dtype cast at load
    )
    model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)

    # Keep the template in tokenizer_config.json too (newer transformers write chat_template.jinja instead).
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    tc["add_bos_token"] = False
    tc["add_eos_token"] = False
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    print(
        json.dumps({"model_dir": str(out), "vocab_size": vocab, "params": sum(p.numel() for p in model.parameters())})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
