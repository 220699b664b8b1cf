"""Print the headline tables of a committed GPU results folder (Markdown), from its files alone.

Usage: python benchmarks/gpu/summarize.py benchmarks/gpu/results-2026-11-21
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.store import RunDir
from harness.summary import load_study


def _row(label: str, r: dict) -> str:
    s, d, t = r["scalars"], r["distributions"], r["telemetry"]
    gpu = t["gpus"][0] if t.get("available") else {}
    return (f"| {label} | {s['goodput_req_s']:.2f} | {s['output_throughput_tok_s']:.0f} | {d['ttft_ms']['p95']:.0f} | "
            f"{d['tpot_ms']['p95']:.1f} | {'pass' if r['slo_pass'] else 'MISS'} | "
            f"{gpu.get('process_memory_peak_mib') or 0:.0f} | {gpu.get('util_mean_pct') or 0:.0f} | "
            f"{gpu.get('power_mean_w') or 0:.0f} | {t.get('energy_per_output_token_j') or 0:.3f} |")


def main(folder: Path) -> None:
    study = load_study(RunDir(folder / "h100-study"))
    best = study.best
    defaults = json.loads((folder / "h100-defaults" / "result.json").read_text())
    knobs = " ".join(f"{k}={v}" for k, v in best.params.items())
    print(f"Study: {len(study.completed)} completed trials of {len(study.trials)}; recommended trial {best.number} "
          f"({knobs})\n")
    print("| config | goodput req/s | output tok/s | TTFT p95 ms | TPOT p95 ms | SLO | engine GPU memory MiB | "
          "GPU util % | power W | J per output token |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(_row(f"tuned (trial {best.number})", best.result))
    print(_row("engine defaults", defaults))
    print()
    print("| overhead run | harness tok/s | generate_batch tok/s | ratio (target >= 0.98) | adapter's calls, no harness: "
          "tok/s | TTFT added p50 / p99 ms (target <= 1) |")
    print("|---|---|---|---|---|---|")
    for name in ("h100-overhead", "h200-overhead", "h100-overhead-auto-graphs"):
        path = folder / name / "overhead.json"
        if path.exists():
            o = json.loads(path.read_text())
            t, f = o["throughput"], o["ttft_one_at_a_time"]
            manager = t.get("engine_manager_api_tok_s")
            print(f"| {name} | {t['harness_tok_s']:.0f} | {t['engine_generate_batch_tok_s']:.0f} | "
                  f"{t['harness_vs_engine']:.3f} | {f'{manager:.0f}' if manager else 'not run'} | "
                  f"{f['added_p50_ms']:.2f} / {f['added_p99_ms']:.2f} |")
    multi = folder / "h200x2-two-workers" / "trials"
    if multi.exists():
        print("\n| two-worker trial | GPU | started | finished | engine GPU memory MiB | GPU util % |")
        print("|---|---|---|---|---|---|")
        for trial in sorted(multi.iterdir(), key=lambda p: int(p.name)):
            r = json.loads((trial / "result.json").read_text())
            for g in r["telemetry"]["gpus"]:
                print(f"| {trial.name} | {g['index']} | {r['started_at'][11:19]} | {r['finished_at'][11:19]} | "
                      f"{g['process_memory_peak_mib']:.0f} | {g['util_mean_pct']:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
