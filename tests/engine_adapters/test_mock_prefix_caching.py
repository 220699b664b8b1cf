"""The mock engine's SIMULATED prefix caching: block-granular reuse, pinning, LRU eviction, and `simulate`."""
import random

import pytest

from engine_adapters.mock import MockConfig, ServiceModel, simulate

PREFILL_MS = 0.02  # per prompt token
STEP_MS = 2.0


def config(**kw) -> MockConfig:
    return MockConfig(**{"step_ms": STEP_MS, "decode_ms_per_seq": 0.0, "prefill_ms_per_token": PREFILL_MS,
                         "max_num_tokens": 8192, **kw})


def tokens(n: int, seed: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randrange(1, 1000) for _ in range(n))


def ttft_ms(cfg: MockConfig, requests) -> list[float]:
    return [(first - arrival) * 1e3 for (first, _), (arrival, _, _) in zip(simulate(cfg, requests), requests)]


def test_a_repeated_prefix_skips_the_prefill_of_its_cached_full_blocks():
    """Prompts of 1000 shared + 50 own tokens, one at a time: with 32-token blocks a repeat finds the 1000 // 32 = 31
    full blocks of the shared part (992 tokens; the 32nd block holds tokens of the first prompt's own suffix)."""
    prefix = tokens(1000, 0)
    requests = [(i * 1.0, prefix + tokens(50, 100 + i), 2) for i in range(4)]
    cold_ms = STEP_MS + PREFILL_MS * 1050
    off = ttft_ms(config(), requests)
    assert off == pytest.approx([cold_ms] * 4)
    on = ttft_ms(config(prefix_caching=True, kv_block_tokens=32), requests)
    assert on == pytest.approx([cold_ms] + [STEP_MS + PREFILL_MS * (1050 - 992)] * 3)
    on_16 = ttft_ms(config(prefix_caching=True, kv_block_tokens=16), requests)  # 1000 // 16 = 62 blocks = 992 too
    assert on_16 == pytest.approx(on)
    on_48 = ttft_ms(config(prefix_caching=True, kv_block_tokens=48), requests)  # 1000 // 48 = 20 blocks = 960
    assert on_48[1:] == pytest.approx([STEP_MS + PREFILL_MS * (1050 - 960)] * 3)


def test_an_identical_prompt_still_prefills_its_last_token():
    prompt = tokens(64, 1)  # exactly 2 blocks: the repeat may reuse only the first, to compute the last token
    model = ServiceModel(config(prefix_caching=True, kv_block_tokens=32))
    for i in range(2):
        model.add(str(i), prompt, 1)
        while not model.idle:
            model.step()
    assert model.reused_tokens == 32


def test_text_prompts_and_caching_off_never_reuse():
    prompt = tokens(200, 2)
    for cfg, prompts in ((config(), [prompt, prompt]), (config(prefix_caching=True), [200, 200])):
        model = ServiceModel(cfg)
        for i, p in enumerate(prompts):
            model.add(str(i), p, 1)
            while not model.idle:
                model.step()
        assert model.reused_tokens == 0


def run_one(model: ServiceModel, rid: str, prompt, out: int = 1) -> int:
    """Serve one request alone; the prompt tokens it found cached."""
    before = model.reused_tokens
    assert model.add(rid, prompt, out) is None
    while not model.idle:
        model.step()
    return model.reused_tokens - before


def test_eviction_is_least_recently_used_and_only_when_the_pool_is_full():
    """A pool of 100 tokens, blocks of 10; each request is a 40-token prompt + 10 output tokens (50 to admit, less
    its cached blocks) and leaves its prompt's 4 blocks cached."""
    model = ServiceModel(config(prefix_caching=True, kv_block_tokens=10, kv_pool_tokens=100, kv_cache_fraction=1.0))
    a, b, c = tokens(40, 10), tokens(40, 11), tokens(40, 12)
    assert run_one(model, "a1", a, 10) == 0
    assert run_one(model, "a2", a, 10) == 30  # 3 of its 4 blocks: the last token is computed
    assert model.cache.tokens == 40
    assert run_one(model, "b1", b, 10) == 0  # 40 cached + 50 needed fit in 100: no eviction
    assert model.cache.tokens == 80
    # c needs 50 with 20 free: 3 blocks of the least recently used prompt (a) go, its tail first
    assert run_one(model, "c1", c, 10) == 0
    assert model.cache.tokens == 10 + 40 + 40
    # b needs 20 beyond its 3 cached blocks with 10 free: a's last block (the least recently used) goes
    assert run_one(model, "b2", b, 10) == 30
    assert model.cache.tokens == 40 + 40
    assert run_one(model, "a3", a, 10) == 0  # a is gone entirely


def test_a_prefix_is_evicted_from_its_tail():
    """Evicting one block of a cached 4-block prefix drops its last block: a later request still finds the first 3."""
    model = ServiceModel(config(prefix_caching=True, kv_block_tokens=10, kv_pool_tokens=100, kv_cache_fraction=1.0))
    a = tokens(50, 20)
    assert run_one(model, "a1", a[:40], 1) == 0  # caches 4 blocks of a
    assert run_one(model, "x", tokens(69, 21), 1) == 0  # needs 70 of the 60 free: evicts one block of a
    assert model.cache.tokens == 30 + 60
    assert run_one(model, "a2", a, 1) == 30  # the first 3 blocks are still there


def test_pinned_blocks_are_never_evicted_and_the_pool_is_never_overcommitted():
    """Random shared-prefix traffic through a small pool: at every step, the tokens held by running requests plus the
    cached blocks fit in the pool; in the end every block is idle and nothing is held. (Evicting a pinned block would
    fail when its request ends and unpins it.)"""
    cfg = config(prefix_caching=True, kv_block_tokens=8, kv_pool_tokens=600, kv_cache_fraction=1.0, max_batch_size=6,
                 max_num_tokens=256)
    rng = random.Random(5)
    prefixes = [tokens(rng.randrange(16, 120), 30 + g) for g in range(5)]
    model = ServiceModel(cfg)
    n = 0
    for _ in range(400):
        for _ in range(rng.randrange(0, 3)):
            prompt = prefixes[rng.randrange(5)] + tokens(rng.randrange(1, 40), 1000 + n)
            assert model.add(str(n), prompt, rng.randrange(1, 30)) is None
            n += 1
        model.step()
        assert 0 <= model.kv_used and model.kv_used + model.cache.tokens <= cfg.kv_capacity_tokens()
    while not model.idle:
        model.step()
    assert model.kv_used == 0 and model.cache.idle_tokens() == model.cache.tokens > 0
    assert model.reused_tokens > 0


def test_simulate_with_lengths_matches_simulate_with_token_ids_when_caching_is_off():
    rng = random.Random(3)
    prefix = tokens(300, 40)
    with_ids = [(i * 0.003, prefix + tokens(rng.randrange(1, 50), 50 + i), rng.randrange(1, 20)) for i in range(60)]
    with_lengths = [(t, len(p), o) for t, p, o in with_ids]
    cfg = config(max_batch_size=4, max_num_tokens=512)
    assert simulate(cfg, with_ids) == simulate(cfg, with_lengths)
    cached = simulate(config(max_batch_size=4, max_num_tokens=512, prefix_caching=True), with_ids)
    assert max(f for f, _ in cached) < max(f for f, _ in simulate(cfg, with_ids))  # and reuse makes it faster
