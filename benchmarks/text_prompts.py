"""Benchmark: token-id prompts written as text of exactly their length (workloads.text_prompts), as the `openai`
engine sends them to a chat endpoint.

For the builtin byte-level tokenizer and a byte-level BPE tokenizer trained here, offline, on the Python standard
library's sources (deterministic): how many of the first 50 Azure code-trace prompts re-encode to their recorded
length when their random ids are decoded as they are (what chat used to send) and when written with the text-safe
vocabulary; how long finding that vocabulary takes; how long writing `--prompts` prompts of `--tokens` tokens
takes (target 10 s for 10,000 x 2,000), and whether a sample of them re-encodes exactly. Tokenizer loading and
training are not timed.

    python benchmarks/text_prompts.py [--prompts 10000] [--tokens 2000] [--vocab 32000]
"""
from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import numpy as np

from engine_adapters.builtin_models import HFTokenizer, require_torch_transformers, resolve_model
from workloads import TokenSpace
from workloads.text_prompts import TextVocabulary
from workloads.trace import TraceWorkload

TARGET_S = 10.0
SAMPLE = 200


def trained_bpe(vocab_size: int):
    """A GPT-2 style byte-level BPE tokenizer trained on the standard library's .py files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer.train_from_iterator((f.read_text(errors="ignore") for f in files), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def measure(name: str, hf, prompts: int, tokens: int) -> None:
    tokenizer = HFTokenizer(hf, name)
    start = time.perf_counter()
    vocab = TextVocabulary(tokenizer, len(hf), {*hf.all_special_ids, *hf.added_tokens_decoder})
    build_s = time.perf_counter() - start

    trace = TraceWorkload(kind="trace", path="builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv", requests=50)
    every_id = TokenSpace(vocab_size=len(hf), reserved_ids=frozenset(hf.all_special_ids))  # as chat used to draw
    decoded = [s.prompt_token_ids for s in trace.generate(every_id)]
    plain = tokenizer.encode_batch([tokenizer.decode(ids) for ids in decoded])
    written = [s.prompt_token_ids for s in trace.generate(vocab.token_space())]
    exact = tokenizer.encode_batch([vocab.text(ids) for ids in written])
    off = [len(e) - len(ids) for e, ids in zip(plain, decoded)]

    rng = np.random.default_rng(0)
    batch = [row.tolist() for row in vocab.ids[rng.integers(0, len(vocab.ids), size=(prompts, tokens))]]
    start = time.perf_counter()
    texts = [vocab.text(ids) for ids in batch]
    write_s = time.perf_counter() - start
    sample = tokenizer.encode_batch(texts[:SAMPLE])
    print(f"{name}: {vocab.describe()}, found in {build_s:.2f} s")
    print(f"  first 50 Azure code-trace prompts at their recorded length: decoded as drawn "
          f"{sum(d == 0 for d in off)}/50 (off by {min(off):+d} to {max(off):+d} tokens); written with the "
          f"text-safe vocabulary {sum(len(e) == len(ids) for e, ids in zip(exact, written))}/50")
    print(f"  {prompts:,} prompts of {tokens:,} tokens written in {write_s:.2f} s "
          f"({write_s / TARGET_S:.2f} of the {TARGET_S:g} s target); "
          f"{sum(len(e) == tokens for e in sample)}/{SAMPLE} sampled re-encode to exactly {tokens:,} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=2_000)
    parser.add_argument("--vocab", type=int, default=32_000, help="vocabulary size of the trained BPE tokenizer")
    args = parser.parse_args()
    _, transformers = require_torch_transformers()
    measure("builtin:tiny-llama", transformers.AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-llama")),
            args.prompts, args.tokens)
    bpe = trained_bpe(args.vocab)
    measure(f"byte-level BPE ({len(bpe):,} tokens, trained on the stdlib)", bpe, args.prompts, args.tokens)


if __name__ == "__main__":
    main()
