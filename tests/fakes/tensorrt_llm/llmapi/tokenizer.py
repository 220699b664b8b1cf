"""Mirrors tensorrt_llm/llmapi/tokenizer.py TransformersTokenizer (`.tokenizer` is the HF tokenizer).

The fake's HF tokenizer is byte level: ids 0..3 are <unk> <s> </s> <pad>, then the 256 bytes.
"""
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")


class ByteTokenizer:
    """The subset of a Hugging Face PreTrainedTokenizer the LLM API and the harness use."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 3
    all_special_ids = [0, 1, 2, 3]

    def __len__(self) -> int:
        return len(SPECIALS) + 256

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([self.bos_token_id] if add_special_tokens else []) + [len(SPECIALS) + b for b in text.encode()]

    def __call__(self, texts, add_special_tokens: bool = True):
        many = not isinstance(texts, str)
        ids = [self.encode(t, add_special_tokens) for t in (texts if many else [texts])]
        return {"input_ids": ids if many else ids[0]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i - len(SPECIALS) for i in ids if i >= len(SPECIALS)).decode(errors="replace")


class TransformersTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens)
