"""Models the harness can name without a hub: `builtin:NAME`, built offline on first use and cached.

`resolve_model` turns a model string into a local Hugging Face model directory. `builtin:tiny-llama`
is a small Llama with seeded random weights and a byte-level tokenizer: its outputs are noise, but
its shapes and kernels are those of a real Llama, so it exercises a real engine end to end on CPU.
Any other string is a local directory holding `config.json`.

The cache lives in `$HARNESS_CACHE/models` (default `~/.cache/harness/models`). torch, transformers
and tokenizers are imported only when a model is built.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

BUILTIN_PREFIX = "builtin:"
INSTALL_HINT = "pip install -e '.[transformers]'"

#: Special tokens of the builtin byte-level tokenizer, in id order (ids 0..3); the 256 bytes follow.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")

#: name -> (cache directory name; bump its version whenever the recipe changes, LlamaConfig kwargs).
#: A recipe without `vocab_size` gets the byte tokenizer's; one with a larger vocabulary accepts ids that no
#: text encodes to, which token-id workloads (all synthetic and trace ones) use. `dtype` is that of the saved weights.
_BUILTINS: dict[str, tuple[str, dict]] = {
    "tiny-llama": ("tiny-llama-v1", dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=4096)),
    # Llama-3.2-1B's shapes (1.24B parameters, tied embeddings, 128k vocabulary), random weights: for GPU runs.
    "llama-1b": ("llama-1b-v1", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                     num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                     max_position_embeddings=8192, vocab_size=128256, tie_word_embeddings=True,
                                     rope_theta=500000.0, dtype="bfloat16")),
}
_SEED = 0


def builtin_names() -> list[str]:
    return sorted(BUILTIN_PREFIX + name for name in _BUILTINS)


def cache_dir() -> Path:
    """`$HARNESS_CACHE`, or `~/.cache/harness` when unset."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


def require_torch_transformers() -> tuple[ModuleType, ModuleType]:
    """Import torch and transformers, or raise ImportError naming the install command."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"the transformers engine needs torch and transformers ({e}); "
                          f"install them with: {INSTALL_HINT}") from e
    return torch, transformers


def model_config(model: str) -> dict:
    """The model's architecture (config.json keys) without building anything: cheap, for feasibility checks.

    Raises like `resolve_model` for unknown builtins and missing directories.
    """
    if model.startswith(BUILTIN_PREFIX):
        _, arch = _builtin(model)
        return {"vocab_size": len(SPECIAL_TOKENS) + 256, **arch}
    return json.loads((_local_dir(model) / "config.json").read_text())


def resolve_model(model: str) -> Path:
    """Local directory of `model`, building a builtin model into the cache on first use.

    Raises ValueError for an unknown `builtin:` name and FileNotFoundError for a local directory that
    is missing or has no config.json. Concurrent first uses are safe: each builds in a temporary
    directory and renames it into place; a loser of the race discards its copy and uses the winner's.
    """
    if not model.startswith(BUILTIN_PREFIX):
        return _local_dir(model)
    dir_name, arch = _builtin(model)
    final = cache_dir() / "models" / dir_name
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dir_name}.", dir=final.parent))
    try:
        _build_llama(tmp, arch)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _builtin(model: str) -> tuple[str, dict]:
    name = model[len(BUILTIN_PREFIX):]
    if name not in _BUILTINS:
        raise ValueError(f"unknown builtin model {model!r}; known: {', '.join(builtin_names())}")
    return _BUILTINS[name]


def _local_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"model directory {str(path)!r} {what}: give a local Hugging Face model "
                                f"directory or one of {', '.join(builtin_names())}")
    return path


def _byte_tokenizer():
    """Byte-level BPE over the 256 byte symbols, no merges, plus SPECIAL_TOKENS: every text encodes offline."""
    require_torch_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def _build_llama(dest: Path, arch: dict) -> None:
    """Save a seeded random-weight Llama with `arch` and the byte tokenizer into `dest`."""
    torch, transformers = require_torch_transformers()
    tokenizer = _byte_tokenizer()
    config = transformers.LlamaConfig(**{"vocab_size": len(tokenizer), **arch}, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    dtype = getattr(torch, arch.get("dtype", "float32"))
    # Initialised on a GPU where there is one (a 1B model takes 80 s on 16 CPU cores): seeded either way, but the
    # random values differ between the two, which changes nothing a benchmark measures (EOS is disabled).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):  # seeded, the caller's RNG untouched
        torch.manual_seed(_SEED)
        with torch.device(device):
            model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


class HFTokenizer:
    """A Hugging Face tokenizer as a `workloads.Tokenizer`; `name` identifies the model it was loaded
    for (a builtin's recipe version, or the directory's absolute path) and its vocabulary size."""

    def __init__(self, tokenizer, model: str):
        self._tokenizer = tokenizer
        source = _builtin(model)[0] if model.startswith(BUILTIN_PREFIX) else str(Path(model).expanduser().resolve())
        self.name = f"{source}|{len(tokenizer)}"

    def encode_batch(self, texts):
        backend = getattr(self._tokenizer, "backend_tokenizer", None)  # fast tokenizers: the Rust one, no offsets
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        return self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids):
        return self._tokenizer.decode(list(ids))
