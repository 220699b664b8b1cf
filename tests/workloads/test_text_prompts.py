"""Token-id prompts written as text of exactly their length (workloads.text_prompts), with the builtin byte-level
tokenizer and two BPE tokenizers trained here, offline, on README.md (GPT-2 style byte-level pre-tokenizer;
sentencepiece style Metaspace)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

pytest.importorskip("transformers", reason="needs the transformers extra: pip install -e '.[transformers]'")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from engine_adapters.builtin_models import HFTokenizer, _byte_tokenizer  # noqa: E402
from workloads import WorkloadConfig  # noqa: E402
from workloads.text_prompts import MIN_SAFE_IDS, TextVocabulary  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def _bpe(pre_tokenizer, decoder, alphabet: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoder
    tokenizer.train_from_iterator(README.read_text().splitlines(), trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TOKENIZERS = {
    "byte-level builtin": _byte_tokenizer,
    "bpe byte-level": lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
                                   pre_tokenizers.ByteLevel.alphabet()),
    "bpe metaspace": lambda: _bpe(pre_tokenizers.Metaspace(), decoders.Metaspace(), []),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def hf(request) -> PreTrainedTokenizerFast:
    return TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def vocab(hf) -> TextVocabulary:
    return TextVocabulary(HFTokenizer(hf, str(id(hf))), len(hf), hf.all_special_ids)


def lengths(vocab: TextVocabulary, prompts) -> list[int]:
    return [len(ids) for ids in vocab.tokenizer.encode_batch([vocab.text(p) for p in prompts])]


def workload(**fields):
    return TypeAdapter(WorkloadConfig).validate_python(fields)


def mooncake(tmp_path: Path, rows: int = 40, block: int = 16):
    """A Mooncake trace whose requests share 1-3 leading blocks out of 4 groups, then go their own way."""
    rng = np.random.default_rng(5)
    lines = []
    for i in range(rows):
        shared = [g * 100 + k for g in [i % 4] for k in range(int(rng.integers(1, 4)))]
        own = [10_000 + i * 10 + k for k in range(int(rng.integers(0, 3)))]
        n = (len(shared) + len(own) - 1) * block + int(rng.integers(1, block + 1))
        lines.append(json.dumps({"timestamp": i * 10, "input_length": n, "output_length": 2,
                                 "hash_ids": shared + own}))
    path = tmp_path / "mooncake.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return workload(kind="trace", path=str(path), block_size=block)


def test_prompts_of_every_workload_kind_encode_to_exactly_their_length(vocab, tmp_path):
    space = vocab.token_space()
    synthetic = workload(kind="synthetic", requests=60, input_tokens={"dist": "uniform", "low": 1, "high": 2500},
                         output_tokens={"dist": "fixed", "value": 1}, arrival={"process": "poisson", "rate": 1})
    shared = workload(kind="shared_prefix", requests=30, groups=3, prefix_tokens={"dist": "fixed", "value": 300},
                      suffix_tokens={"dist": "uniform", "low": 1, "high": 50},
                      output_tokens={"dist": "fixed", "value": 1},
                      arrival={"process": "poisson", "rate": 1})
    prompts = [s.prompt_token_ids for w in (synthetic, shared, mooncake(tmp_path)) for s in w.generate(space)]
    assert all(set(p).isdisjoint(space.reserved_ids) for p in prompts)  # drawn from the text-safe ids only
    assert lengths(vocab, prompts) == [len(p) for p in prompts]
    texts = [vocab.text(p) for p in prompts]
    assert all(t == t.strip() and t.isascii() and t.isprintable() for t in texts)
    assert len(set(texts)) == len(set(prompts))  # distinct prompts stay distinct


def test_any_token_ids_specials_included_become_text_of_their_length(vocab):
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, vocab.vocab_size, size=int(n)).tolist() for n in rng.integers(1, 3000, size=40)]
    assert lengths(vocab, prompts) == [len(p) for p in prompts]


def test_shared_token_prefixes_are_byte_identical_text_prefixes(vocab, tmp_path):
    specs = list(mooncake(tmp_path).generate(vocab.token_space()))
    checked = 0
    for a in specs:
        for b in specs:
            common = next((k for k, (x, y) in enumerate(zip(a.prompt_token_ids, b.prompt_token_ids)) if x != y),
                          min(a.input_tokens, b.input_tokens))
            if a is not b and common >= 16:  # at least one hash block in common
                prefix = vocab.text(a.prompt_token_ids[:common])
                assert vocab.text(a.prompt_token_ids).startswith(prefix)
                assert vocab.text(b.prompt_token_ids).startswith(prefix)
                checked += 1
    assert checked > 40


def test_the_vocabulary_and_the_texts_are_deterministic(hf, vocab):
    again = TextVocabulary(vocab.tokenizer, len(hf), hf.all_special_ids)
    assert again.ids.tolist() == vocab.ids.tolist() and again.kind == vocab.kind
    ids = list(range(vocab.vocab_size)) * 2
    assert again.text(ids) == vocab.text(ids)


def test_which_tokens_are_text_safe(hf, vocab):
    if len(hf) == 260:  # the builtin byte tokenizer: printable ASCII less space and "<", which begins "<s>" etc.
        assert vocab.kind == "characters" and len(vocab.ids) == 93
        assert "<" not in vocab.text(range(260))
    else:
        assert vocab.kind == "words" and len(vocab.ids) > 200


class _WordTokenizer:
    """One token per word of WORDS, except that "zeta" merges with a different word next to it (either side)."""

    name = "merging words"
    WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lam", "mu", "nu",
             "xi", "omi", "pi", "rho", "sigma", "tau", "ups", "phi", "chi", "psi", "omega"] + ["\u00e9t\u00e9"]

    def decode(self, ids):
        return " ".join(self.WORDS[i] for i in ids)

    def encode_batch(self, texts):
        return [self._encode(text.split()) for text in texts]

    def _encode(self, words):
        ids = []
        for previous, word in zip([None] + words, words):
            if previous is None or previous == word or "zeta" not in (previous, word):
                ids.append(self.WORDS.index(word) if word in self.WORDS else -1)
        return ids


def test_tokens_that_merge_with_a_neighbour_are_left_out_and_too_few_safe_tokens_are_refused():
    tokenizer = _WordTokenizer()
    vocab = TextVocabulary(tokenizer, len(tokenizer.WORDS), special_ids=[0])
    safe = {tokenizer.WORDS[i] for i in vocab.ids}
    assert "zeta" not in safe and "alpha" not in safe  # merges with its neighbours (not with itself); special
    assert "\u00e9t\u00e9" not in safe  # not plain ASCII letters
    assert len(safe) >= MIN_SAFE_IDS
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, len(tokenizer.WORDS), size=50).tolist() for _ in range(20)]
    assert lengths(vocab, prompts) == [50] * 20

    with pytest.raises(ValueError, match="tokenizer merging words: fewer than 16 tokens .* endpoint: completions"):
        TextVocabulary(tokenizer, len(tokenizer.WORDS), special_ids=range(12))
