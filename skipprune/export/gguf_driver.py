"""Runs llama.cpp's own converter (convert_hf_to_gguf.py of a llama.cpp tree) with three changes to how it reads
a vocabulary, so that a skipprune export converts whatever its tokenizer:

1. The DeciLM ("nemotron-nas") class handles the vocabulary as llama.cpp's Llama class does for the stock
   architecture of the same model (SentencePiece, Llama-2-style BPE with byte fallback, or byte-level BPE),
   instead of only Llama-2's and Llama-3's (its own code).
2. A byte-level BPE tokenizer whose pre-tokenizer is exactly GPT-2's (ByteLevel with GPT-2's split pattern,
   no prefix space) but whose vocabulary llama.cpp has never seen is given llama.cpp's "gpt-2"
   pre-tokenizer, instead of stopping at an unknown checksum. Any other unknown pre-tokenizer still stops.
3. Without a tokenizer.model file, the SentencePiece attempt fails as it does anyway (file not found) without
   first importing sentencepiece, so that package is only needed for SentencePiece models.

Run as a script, in a subprocess (the converter's imports and logging stay out of skipprune's process):
    python gguf_driver.py LLAMA_CPP_TREE EXPORT --outfile OUT --outtype f32
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def _pre_tokenizer(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    return json.loads(backend.to_str()).get("pre_tokenizer")


def patch_converter() -> None:
    import conversion.base as base
    from conversion.deci import DeciModel
    from conversion.llama import LlamaModel

    def set_vocab(self) -> None:
        self.__dict__.setdefault("origin_hf_arch", None)  # set by Llama's own constructor
        LlamaModel.set_vocab(self)

    DeciModel.set_vocab = set_vocab
    known = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            pre = _pre_tokenizer(tokenizer) or {}
            if {k: pre.get(k) for k in GPT2_PRE_TOKENIZER} == GPT2_PRE_TOKENIZER:
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sentencepiece = base.TextModel._create_vocab_sentencepiece

    def create_vocab_sentencepiece(self):
        if not (self.dir_model / "tokenizer.model").is_file():  # the converter's own answer, without importing
            raise FileNotFoundError(f"File not found: {self.dir_model / 'tokenizer.model'}")  # sentencepiece
        return sentencepiece(self)

    base.TextModel._create_vocab_sentencepiece = create_vocab_sentencepiece


def main() -> None:
    tree = Path(sys.argv[1])
    sys.path[:0] = [str(tree), str(tree / "gguf-py")]
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *sys.argv[2:]]
    patch_converter()
    runpy.run_path(str(tree / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main()
