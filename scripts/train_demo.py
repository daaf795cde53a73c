"""Train the bundled demo model: a small Llama on Tiny Shakespeare (seeded, CPU, ~20 minutes on 2 cores).

    python scripts/train_demo.py [--steps 900] [--out skipprune/data/demo-model]

The text is split once, at a line boundary: the first 90 % trains the tokenizer and the model, the last 10 %
(skipprune/data/heldout.txt) is never seen in training and serves perplexity measurements.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
EOS = "<|endoftext|>"


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    cut = text.index("\n\n", int(len(text) * train_fraction)) + 2
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE.parent / "skipprune" / "data" / "demo-model")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    text = (HERE / "tinyshakespeare.txt").read_text(encoding="utf-8")
    train_text, heldout = split_text(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out.parent / "heldout.txt").write_text(heldout, encoding="utf-8")

    tokenizer = train_tokenizer(train_text, vocab_size=2048)
    ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    print(f"train tokens: {len(ids):,}; held-out characters: {len(heldout):,}")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=12,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    print(f"parameters: {model.num_parameters():,}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([ids[s : s + args.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)

    model.eval()
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
