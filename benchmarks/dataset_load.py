"""Benchmark: how long does a 10,000-conversation ShareGPT dataset take to load and tokenize?

Writes (in a temporary folder, deterministically) a ShareGPT-format file of 10,000 conversations of
1-4 turns, prompts of 50-2,000 words (log-normal, median ~230), replies of 20-1,500 words; then times
the config check (every row read and checked) plus `DatasetWorkload.generate` over all of it with the
builtin:tiny-llama tokenizer (every prompt and first reply tokenized), first with a cold tokenization
cache, then with a warm one. Prints each
figure and its ratio to the 10 s target (<= 1.0 meets it). Tokenizer loading is not timed.

    python benchmarks/dataset_load.py [--conversations 10000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from engine_adapters.builtin_models import HFTokenizer, require_torch_transformers, resolve_model
from workloads import TokenSpace
from workloads.dataset import DatasetWorkload

TARGET_S = 10.0
MODEL = "builtin:tiny-llama"
_WORDS = ("the of and to in is that for it as with was on be by this are or at from have an but not what all "
          "were when we there can more if will one about which their would so time into only new some could "
          "model token latency batch cache memory server request engine throughput kernel tensor prompt reply "
          "python function error value config install version update deploy cluster node gpu query result").split()


def _text(rng: np.random.Generator, words: int) -> str:
    sentence = " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=words))
    return sentence[0].upper() + sentence[1:] + "."


def write_sharegpt(path: Path, conversations: int, seed: int = 0) -> None:
    """A ShareGPT JSON array of `conversations` generated conversations (same seed, same file)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(conversations):
        turns = []
        for _ in range(int(rng.integers(1, 5))):
            prompt_words, reply_words = np.clip(rng.lognormal(np.log([230, 200]), [0.9, 0.8]), [50, 20], [2000, 1500])
            turns.append({"from": "human", "value": _text(rng, int(prompt_words))})
            turns.append({"from": "gpt", "value": _text(rng, int(reply_words))})
        records.append({"id": f"conv-{i}", "conversations": turns})
    path.write_text(json.dumps(records))


def time_load(path: Path, tokenizer: HFTokenizer, vocab_size: int) -> tuple[float, float, int, int]:
    """Seconds to validate the workload (every row read and checked, as `harness tune` does before anything
    starts) and to generate every request of `path` (tokenizing), the request count and the prompt tokens."""
    start = time.perf_counter()
    workload = DatasetWorkload.model_validate(
        {"kind": "dataset", "path": str(path), "arrival": {"process": "closed", "concurrency": 8}})
    validated = time.perf_counter()
    requests = list(workload.generate(TokenSpace(vocab_size=vocab_size, tokenizer=tokenizer)))
    done = time.perf_counter()
    return validated - start, done - validated, len(requests), sum(r.input_tokens for r in requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _, transformers = require_torch_transformers()
    hf = transformers.AutoTokenizer.from_pretrained(resolve_model(MODEL))
    tokenizer = HFTokenizer(hf, MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sharegpt.json"
        write_sharegpt(data, args.conversations)
        print(f"{data.name}: {args.conversations} conversations, {data.stat().st_size / 1e6:.1f} MB", flush=True)
        for repeat in range(args.repeats):
            os.environ["HARNESS_CACHE"] = str(Path(tmp) / f"cache-{repeat}")  # a fresh, cold cache each repeat
            for label in ("cold cache", "warm cache"):
                validate_s, generate_s, n, tokens = time_load(data, tokenizer, len(hf))
                seconds = validate_s + generate_s
                print(f"run={repeat + 1} {label}: {n} requests, {tokens / 1e6:.1f} M prompt tokens in "
                      f"{seconds:6.2f} s (validate {validate_s:.2f} s + generate {generate_s:.2f} s)  "
                      f"target <= {TARGET_S:g} s  ratio {seconds / TARGET_S:5.2f}", flush=True)


if __name__ == "__main__":
    main()
