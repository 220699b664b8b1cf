"""What the harness costs on a GPU, on one continuous-batching config of the transformers engine.

- Throughput: all requests at once, `harness bench` (a closed loop of N streams, N = the requests) vs the
  engine's own batch API `generate_batch(inputs)` in a fresh process. Both: output tokens / (first request
  in -> last token out); the harness's window from its send times to the engine's token stamps, the
  engine's from its own request-creation times to its token stamps. Target: the harness within 2%.
  A third run makes the calls the harness's adapter makes (init_continuous_batching, warmup, start,
  add_request) without the harness, to tell the harness's cost from the engine's two entry points.
- TTFT: one request at a time, the engine handing each token over as it is made (`stream_outputs`).
  For every request, the first token's time as the harness client saw it arrive vs the engine's own
  stamp of it (what the harness reports). Target: the client adds at most 1 ms at p50.

The prompts are the harness's own synthetic workload (fixed seed), fed to both paths as token ids.
Usage (on a GPU machine, from the repo root): python3 benchmarks/gpu/overhead.py --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ENGINE = {"kind": "transformers", "model": "builtin:llama-1b",
          "params": {"dtype": "bfloat16", "device": "cuda", "max_batch_size": 128, "max_num_tokens": 4096,
                     "kv_cache_fraction": 0.5, "page_size": 256, "prefix_caching": False, "cuda_graph": True,
                     # set for both paths: generate_batch would size it from its batch, which the harness's engine
                     # never sees (10 pages of 256 tokens hold the longest prompt, 2048, plus 192 new tokens)
                     "max_blocks_per_request": 10}}


def experiment(name: str, requests: int, concurrency: int, output_tokens: int) -> dict:
    return {"name": name, "engine": ENGINE,
            "workload": {"kind": "synthetic", "requests": requests, "warmup_requests": 0,
                         "input_tokens": {"dist": "lognormal", "mean": 512, "std": 256, "min": 32, "max": 2048},
                         "output_tokens": {"dist": "fixed", "value": output_tokens},
                         "arrival": {"process": "closed", "concurrency": concurrency}, "seed": 0},
            "runner": {"request_timeout_s": 300, "preflight": True}}


def harness_bench(cfg: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "harness", "bench", str(path), "--out", str(out / "bench")], check=True)
    return json.loads((out / "bench" / "result.json").read_text())


def engine_batch(cfg: dict, api: str) -> dict:
    """The same prompts through the engine alone, in this process; figures from the engine's own timestamps.

    api "generate_batch": the batch API. api "manager": the calls the harness's adapter makes
    (init_continuous_batching, warmup, start, add_request per prompt), results read on this thread, no
    harness: where this differs from generate_batch, the engine, not the harness, makes the difference."""
    import torch
    import transformers

    from engine_adapters.builtin_models import resolve_model
    from harness.config import parse_config
    from workloads import TokenSpace

    exp = parse_config(cfg, "overhead")
    params = ENGINE["params"]
    path = resolve_model(ENGINE["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, params["dtype"]))
    model = model.to(params["device"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    space = TokenSpace(vocab_size=model.config.vocab_size, reserved_ids=frozenset(tokenizer.all_special_ids))
    specs = list(exp.workload.generate(space))
    inputs = [list(s.prompt_token_ids) for s in specs]
    max_new = specs[0].max_output_tokens
    fields = {f.name for f in dataclasses.fields(transformers.ContinuousBatchingConfig)}
    page_field = "page_size" if "page_size" in fields else "block_size"
    cb = transformers.ContinuousBatchingConfig(**{page_field: params["page_size"],
                                                  "max_batch_tokens": params["max_num_tokens"],
                                                  "max_requests_per_batch": params["max_batch_size"],
                                                  "max_memory_percent": params["kv_cache_fraction"],
                                                  "allow_block_sharing": params["prefix_caching"],
                                                  "use_cuda_graph": params["cuda_graph"],
                                                  "max_blocks_per_request": params["max_blocks_per_request"]})
    gen = transformers.GenerationConfig(do_sample=False, eos_token_id=-1, max_new_tokens=max_new)
    model.generate_batch(inputs=inputs[:2], generation_config=gen, continuous_batching_config=cb)  # warm-up
    if api == "generate_batch":
        outputs = list(model.generate_batch(inputs=inputs, generation_config=gen, continuous_batching_config=cb,
                                            record_timestamps=True).values())
    else:
        manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        manager.warmup()
        manager.start()
        for i, ids in enumerate(inputs):
            manager.add_request(ids, request_id=str(i), max_new_tokens=max_new, streaming=False,
                                record_timestamps=True)
        outputs = []
        while len(outputs) < len(inputs):
            out = manager.get_result(timeout=600)
            if out is None:
                raise RuntimeError("the engine stopped before returning every result")
            if out.is_finished():
                outputs.append(out)
        manager.stop(block=True)
    tokens = sum(len(o.generated_tokens) for o in outputs)
    window = max(o.timestamps[-1] for o in outputs) - min(o.created_time for o in outputs)
    return {"requests": len(outputs), "failed": sum(bool(o.error) for o in outputs), "output_tokens": tokens,
            "output_throughput_tok_s": tokens / window}


async def client_vs_engine_ttft(cfg: dict) -> dict:
    """One request at a time through the harness runner; per request, the first token's client arrival
    minus the engine's stamp of it, and the TTFT the harness reports (from the stamp)."""
    from engine_adapters import get_adapter
    from harness.config import parse_config
    from harness.metrics import compute
    from harness.runner import run

    exp = parse_config(cfg, "overhead")
    adapter = get_adapter(exp.engine.kind)
    added_ns: list[int] = []

    class Observed:
        """The engine, with the arrival time of each request's first token noted as the client sees it."""

        def __init__(self, engine):
            self.token_space, self._engine = engine.token_space, engine

        async def stream(self, request):
            first = True
            async for event in self._engine.stream(request):
                if first and event.n_tokens:
                    added_ns.append(time.perf_counter_ns() - event.t_ns)
                    first = False
                yield event

        def log_lines(self):
            return self._engine.log_lines()

    async with adapter.start(exp.engine.resolve()) as engine:
        specs = list(exp.workload.generate(engine.token_space))
        records, _ = await run(Observed(engine), specs, concurrency=1, request_timeout_s=300)
    ttft = compute(records)["distributions"]["ttft_ms"]
    added_ms = np.array(added_ns) / 1e6
    return {"requests": len(records), "failed": sum(not r.ok for r in records),
            "reported_ttft_p50_ms": ttft["p50"], "client_seen_ttft_p50_ms": ttft["p50"] + float(np.median(added_ms)),
            "added_p50_ms": float(np.median(added_ms)), "added_p99_ms": float(np.percentile(added_ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=512, help="requests of the throughput comparison")
    ap.add_argument("--ttft-requests", type=int, default=64, help="requests of the one-at-a-time TTFT comparison")
    ap.add_argument("--model", default=ENGINE["model"], help="e.g. builtin:tiny-llama with --device cpu to try it")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--engine-only", choices=["generate_batch", "manager"], help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    ENGINE["model"] = args.model
    ENGINE["params"].update(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32",
                            cuda_graph=args.device == "cuda")
    batch_cfg = experiment("overhead-throughput", args.requests, args.requests, 192)
    if args.engine_only:
        print(json.dumps(engine_batch(batch_cfg, args.engine_only)))
        return

    from harness.runner import run_event_loop

    t0 = time.time()
    h_batch = harness_bench(batch_cfg, args.out / "harness-throughput")

    def engine_alone(api: str) -> dict:  # a fresh process, as harness bench gets
        proc = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--engine-only", api, "--requests",
                               str(args.requests), "--model", args.model, "--device", args.device],
                              check=True, capture_output=True, text=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    e_batch, e_manager = engine_alone("generate_batch"), engine_alone("manager")
    ttft_cfg = experiment("overhead-ttft", args.ttft_requests, 1, 16)
    ttft_cfg["engine"] = {**ENGINE, "params": {**ENGINE["params"], "stream_outputs": True}}
    ttft = run_event_loop(client_vs_engine_ttft(ttft_cfg))
    h_tput = h_batch["scalars"]["output_throughput_tok_s"]
    summary = {
        "engine_config": ENGINE,
        "throughput": {"requests": args.requests, "harness_tok_s": h_tput,
                       "engine_generate_batch_tok_s": e_batch["output_throughput_tok_s"],
                       "harness_vs_engine": h_tput / e_batch["output_throughput_tok_s"],
                       "engine_manager_api_tok_s": e_manager["output_throughput_tok_s"],
                       "harness_vs_manager_api": h_tput / e_manager["output_throughput_tok_s"],
                       "harness_failed": h_batch["counts"]["failed"], "engine_failed": e_batch["failed"]},
        "ttft_one_at_a_time": ttft,
        "wall_s": time.time() - t0,
    }
    (args.out / "overhead.json").write_text(json.dumps(summary, indent=2))
    t = summary["throughput"]
    print(f"throughput, {args.requests} requests at once: harness {t['harness_tok_s']:.0f} tok/s vs generate_batch "
          f"{t['engine_generate_batch_tok_s']:.0f} tok/s -> {t['harness_vs_engine']:.3f} (target >= 0.98); the adapter's "
          f"engine calls without the harness: {t['engine_manager_api_tok_s']:.0f} tok/s -> {t['harness_vs_manager_api']:.3f}")
    print(f"TTFT one at a time ({ttft['requests']} requests): reported p50 {ttft['reported_ttft_p50_ms']:.2f} ms; "
          f"the client sees the first token {ttft['added_p50_ms']:.3f} ms (p50) / {ttft['added_p99_ms']:.3f} ms (p99) "
          f"after the engine stamps it (target <= 1 ms)")


if __name__ == "__main__":
    main()
