"""Prompt text that the engine's tokenizer turns back into exactly the intended number of tokens.

An engine that takes prompts only as text (an OpenAI-compatible chat endpoint) has its server tokenize them
again, so a token-id prompt (synthetic, shared-prefix and trace workloads make them) must become text of
exactly its length. Decoding arbitrary ids does not give that: byte tokens decode to U+FFFD, neighbouring
tokens merge or split.

`TextVocabulary` finds a tokenizer's text-safe tokens and writes prompts with them alone. A text-safe token
is one plain word (ASCII letters; words are joined with one space) or, in byte- and character-level
vocabularies, which have no such words, one printable ASCII character other than space (joined with
nothing), such that any sequence of them, written so, encodes to exactly one token per word or character,
and cannot spell a special or added token (which tokenizers match in text as a whole: "<s>" is one token).
Tokenizers that split text at spaces before merging (byte-level BPE, Metaspace, WordPiece) cannot merge two
words, which is why words are safe; it is checked all the same: each candidate twice in a row (so also as the
first word of a text, where some tokenizers spell a word differently), then every candidate in seeded random
sequences; a failing sequence drops its neighbours that do not stay two tokens (the whole sequence where none
is found), until a round passes (at most `_ROUNDS`). Words are preferred; a tokenizer without `MIN_SAFE_IDS`
of either kind is refused.

The text of a prompt is its tokens' words joined, so it is fast to make (no encoding per prompt), never
starts or ends with a space (chat templates that trim the message see it unchanged), and the text of a
token prefix is a prefix of the text: requests sharing a token prefix (shared_prefix groups, Mooncake hash
ids) share a byte-identical text prefix, which server prefix caches need. A token outside the safe set is
replaced by a safe one (`safe[id % n]`, id by id), so every token-id prompt gets text of its exact length;
`token_space()` reserves the unsafe ids, so random prompts drawn from it need no replacement.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np

from workloads.request import Tokenizer, TokenSpace

#: Fewest text-safe tokens a tokenizer must have for prompts to be written as text.
MIN_SAFE_IDS = 16
_ROUNDS = 8          # random-sequence rounds at most
_SEQUENCE = 64       # tokens per checked sequence
_WORDS = re.compile(r"([A-Za-z]+) \1")   # a token decoded twice in a row: "the the" (leading space stripped)
_CHARS = re.compile(r"([!-~])\1")        # "aa"

_cache: dict[str, TextVocabulary] = {}


def text_vocabulary(tokenizer: Tokenizer, vocab_size: int, special_ids: Iterable[int]) -> TextVocabulary:
    """The TextVocabulary of `tokenizer`, built once per process and tokenizer name."""
    if tokenizer.name not in _cache:
        _cache[tokenizer.name] = TextVocabulary(tokenizer, vocab_size, special_ids)
    return _cache[tokenizer.name]


class TextVocabulary:
    """A tokenizer's text-safe tokens (see the module docstring): `ids` (sorted), `kind` ("words" or
    "characters"); `text(ids)` writes a prompt. `special_ids`: the special and added tokens (those the tokenizer
    matches in text as a whole). Raises ValueError when the tokenizer has too few."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, special_ids: Iterable[int]):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        special = set(special_ids)
        spelled = {text for i in special if (text := tokenizer.decode([i]))}
        doubled = {i: tokenizer.decode([i, i]) for i in range(vocab_size) if i not in special}
        for kind, pattern, separator in (("words", _WORDS, " "), ("characters", _CHARS, "")):
            matches = {i: m.group(1) for i, text in doubled.items()
                       if (m := pattern.fullmatch(text.strip())) and not _may_spell(m.group(1), spelled, separator)}
            pieces = _checked(tokenizer, matches, separator)
            if len(pieces) >= MIN_SAFE_IDS:
                break
        else:
            raise ValueError(f"tokenizer {tokenizer.name}: fewer than {MIN_SAFE_IDS} tokens are a plain word or "
                             "character that encodes back to one token, so prompts cannot be written as text of an "
                             "exact token count; send token ids instead (OpenAI engine: endpoint: completions)")
        self.kind, self.separator = kind, separator
        self.ids = np.array(sorted(pieces), dtype=np.int64)
        safe = self.ids.tolist()
        self._piece_of = [pieces[i] if i in pieces else pieces[safe[i % len(safe)]] for i in range(vocab_size)]

    def text(self, ids: Sequence[int]) -> str:
        """Text that `tokenizer` encodes to exactly len(ids) tokens: ids outside the safe set replaced, id by id."""
        pieces = self._piece_of
        return self.separator.join([pieces[i] for i in ids])

    def token_space(self) -> TokenSpace:
        """A TokenSpace whose random prompts use only the text-safe ids."""
        return TokenSpace(vocab_size=self.vocab_size, tokenizer=self.tokenizer,
                          reserved_ids=frozenset(range(self.vocab_size)).difference(self.ids.tolist()))

    def describe(self) -> str:
        return f"{len(self.ids):,} text-safe {self.kind} of the {self.vocab_size:,}-token vocabulary"


def _may_spell(piece: str, specials: set[str], separator: str) -> bool:
    """Whether text written with `piece` could hold one of the `specials`' texts: a character that begins one, or a
    word holding one made of letters (text of words holds no other characters)."""
    if separator:
        return any(text.isascii() and text.isalpha() and text in piece for text in specials)
    return any(text.startswith(piece) for text in specials)


def _checked(tokenizer: Tokenizer, pieces: dict[int, str], separator: str) -> dict[int, str]:
    """The candidates `pieces` (id -> text) that pass both checks of the module docstring."""
    ids = list(pieces)
    counts = _counts(tokenizer, [separator.join([pieces[i]] * 2) for i in ids])
    good = {i: pieces[i] for i, n in zip(ids, counts) if n == 2}
    rng = np.random.default_rng(0)
    for _ in range(_ROUNDS):
        order = rng.permutation(list(good)).tolist()
        sequences = [order[k:k + _SEQUENCE] for k in range(0, len(order), _SEQUENCE)]
        counts = _counts(tokenizer, [separator.join([good[i] for i in seq]) for seq in sequences])
        failed = [seq for seq, n in zip(sequences, counts) if n != len(seq)]
        if not failed:
            return good
        pairs = [(a, b) for seq in failed for a, b in pairwise(seq)]
        counts = _counts(tokenizer, [good[a] + separator + good[b] for a, b in pairs])
        culprits = {i for (a, b), n in zip(pairs, counts) if n != 2 for i in (a, b)}
        for seq in failed:
            if culprits.isdisjoint(seq):
                culprits.update(seq)
        for i in culprits:
            del good[i]
    return {}


def _counts(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer.encode_batch(texts)] if texts else []
