"""Tiny random checkpoints of every supported family, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
EXTRA = {
    "llama": dict(tie_word_embeddings=True),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=3),
    "qwen3": dict(head_dim=8),
    "phi3": dict(pad_token_id=0),
    "gemma2": dict(head_dim=8, sliding_window=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "gemma3_text": dict(head_dim=8, sliding_window=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "olmo2": dict(),
}
FAMILY_NAMES = sorted(EXTRA)


def make_model(folder: Path, family: str, dtype=torch.float32, seed: int = 0, **overrides) -> Path:
    """Save a random tiny `family` model (safetensors) into folder; norms get random weights too."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **{**COMMON, **EXTRA[family], **overrides})
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # default-initialised norms are all ones/zeros: randomise so bugs show
                p.copy_(torch.randn_like(p) * 0.1 + (0 if family.startswith("gemma") else 1))
    model.save_pretrained(folder)
    return Path(folder)


def make_byte_fallback_tokenizer(folder: Path, text: str, merges: int = 200):
    """A Llama-2-style tokenizer (BPE with byte fallback: <unk> <s> </s>, the 256 byte tokens, then merges
    learnt from `text`), the kind llama.cpp's converter accepts for a non-Llama-3 vocabulary."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizer
    learner.train_from_iterator(
        text.splitlines(), trainers.BpeTrainer(vocab_size=merges, special_tokens=specials, show_progress=False)
    )
    learnt = json.loads(learner.to_str())["model"]
    pieces = [w for w, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]) if w not in specials]
    vocab = {w: i for i, w in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + pieces)}
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizer
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_byte_level_tokenizer(folder: Path, text: str, vocab_size: int = 600, add_prefix_space: bool = False):
    """A GPT-2-style tokenizer: byte-level BPE (the 256 byte symbols, then merges learnt from `text`) with GPT-2's
    pre-tokenizer, the kind SmolLM, GPT-2 and many fine-tunes use; llama.cpp has never seen its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(text.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def anatomy_of(name: str):
    """The Family skipprune learns from transformers for a tiny `name` model (see skipprune.families)."""
    from skipprune.families import family_of

    return family_of(AutoConfig.for_model(name, **{**COMMON, **EXTRA.get(name, {})}).to_dict())


def inputs(vocab=128, tokens=20):
    """A batch of two rows of token ids, the second left-padded, and its attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    return ids, mask
