"""One measurement: start the engine from a config, run the workload, write the trial files.

Runs in its own process (`python -m harness.trial TRIAL_DIR`), so a crash, an OOM or a hang ends
only this trial. Contract with the parent: `config.yaml` is read; on success `records.jsonl`,
optionally `telemetry.csv`, and last `result.json` are written; on a handled failure
`failure.json` {kind: infeasible|preflight|error, reason} is written and the exit code is non-zero.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from engine_adapters import Hardware, get_adapter
from engine_adapters.server_launcher import TRIAL_DIR_ENV
from harness import __version__
from harness.calibrate import load_certificate, trust_verdict
from harness.clients import run_in_processes
from harness.config import ExperimentConfig, load_config
from harness.errors import HarnessError, PreflightError
from harness.fidelity import workload_fidelity
from harness.metrics import compute
from harness.records import RequestRecord, write_records
from harness.runner import preflight, run, run_event_loop
from harness.store import SCHEMA_VERSION, TrialFiles, write_json
from harness.telemetry import TelemetrySampler, driver_info, energy_per_output_token_j
from workloads import Closed


class Infeasible(HarnessError):
    """The adapter's check says this config cannot run on this hardware."""


def environment_fingerprint() -> dict:
    """Where the run happened; `cuda_visible_devices` is the GPU subset it was given (None: all)."""
    return {"harness_version": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(), "nvml": driver_info(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _log(msg: str) -> None:
    print(f"[harness {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


async def measure(cfg: ExperimentConfig, out_dir: Path) -> dict:
    """Run `cfg` once and write the trial files into `out_dir`; return the result dict."""
    adapter = get_adapter(cfg.engine.kind)
    engine_cfg = cfg.engine.resolve()
    reason = adapter.check(engine_cfg, Hardware.detect(), cfg.workload.max_sequence_tokens())
    if reason:
        raise Infeasible(reason)
    started_at = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    _log(f"starting {cfg.engine.kind} engine: {engine_cfg.model_dump()}")
    async with adapter.start(engine_cfg) as engine:
        engine_start_s = time.perf_counter() - t_start
        _log(f"engine ready in {engine_start_s:.2f} s")
        for line in engine.log_lines():
            _log(line)
        specs = list(cfg.workload.generate(engine.token_space))
        source = cfg.workload.source_profile()
        if source.skipped:
            _log(f"skipped {sum(source.skipped.values())} source row(s): " +
                 ", ".join(f"{n} {why}" for why, n in source.skipped.items()))
        if cfg.runner.preflight:
            await preflight(engine, specs[0], cfg.runner.request_timeout_s)
            _log("preflight request ok")
        arrival = cfg.workload.arrival
        done = 0

        def on_done(record: RequestRecord) -> None:
            nonlocal done
            done += 1
            if done % max(len(specs) // 10, 1) == 0 or done == len(specs):
                _log(f"{done}/{len(specs)} requests done")

        closed = isinstance(arrival, Closed)
        load = {"concurrency": arrival.concurrency if closed else None,
                "max_concurrency": None if closed else arrival.max_concurrency,
                "warmup": cfg.workload.warmup_requests, "cooldown": cfg.workload.cooldown_requests,
                "request_timeout_s": cfg.runner.request_timeout_s, "ramp_up_s": arrival.ramp_up_s if closed else 0.0}
        with TelemetrySampler() as telemetry:
            if cfg.runner.client_processes > 1:
                _log(f"sending from {cfg.runner.client_processes} client processes")
                records, t0_ns = await asyncio.to_thread(run_in_processes, cfg.engine.kind, engine_cfg.model_dump(),
                                                     specs, cfg.runner.client_processes, **load)
            else:
                records, t0_ns = await run(engine, specs, on_done=on_done, **load)
    metrics = compute(records, cfg.slo_limits())
    fidelity = workload_fidelity(source, specs, records)
    telemetry_summary = telemetry.summary()
    out_tokens = sum(r.output_tokens for r in records if r.phase == "measured" and r.ok)
    telemetry_summary["energy_per_output_token_j"] = energy_per_output_token_j(telemetry_summary, out_tokens)
    fingerprint = {**environment_fingerprint(), "engine": adapter.fingerprint(engine_cfg)}
    error_rate = metrics["scalars"]["error_rate"] or 0.0
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": "harness.run_result",
        "name": cfg.name,
        "simulated": bool(fingerprint["engine"].get("simulated")),
        "engine": {"kind": cfg.engine.kind, "config": engine_cfg.model_dump(mode="json")},
        "workload": cfg.workload.model_dump(mode="json"),
        "slo": cfg.slo, "max_error_rate": cfg.max_error_rate,
        "fingerprint": fingerprint,
        "started_at": started_at.isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "engine_start_s": engine_start_s,
        "t0_perf_counter_ns": t0_ns,  # record times are relative to this (CLOCK_MONOTONIC on Linux)
        **metrics,
        "slo_pass": all(c["pass"] for c in metrics["slo"]) and error_rate <= cfg.max_error_rate,
        "telemetry": telemetry_summary,
        "client_trust": trust_verdict(load_certificate(), remote=adapter.remote,
                                      concurrency=arrival.concurrency if closed else None,
                                      rate_req_s=None if closed else (fidelity["arrivals"]["intended"] or {}).get("rate_req_s"),
                                      schedule_lag_p99_ms=metrics["distributions"]["schedule_lag_ms"]["p99"]),
        "fidelity": fidelity,
    }
    write_records(out_dir / TrialFiles.RECORDS, records)
    telemetry.write_csv(out_dir / TrialFiles.TELEMETRY)
    write_json(out_dir / TrialFiles.RESULT, result)
    return result


def main(trial_dir: str) -> int:
    out = Path(trial_dir)
    os.environ[TRIAL_DIR_ENV] = str(out.resolve())  # where engines that launch a server write its log
    try:
        cfg = load_config(out / TrialFiles.CONFIG)
        result = run_event_loop(measure(cfg, out))
    except Infeasible as exc:
        kind, reason = "infeasible", str(exc)
    except PreflightError as exc:
        kind, reason = "preflight", str(exc)
    except BaseException as exc:  # record anything, including KeyboardInterrupt, before dying
        kind, reason = "error", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    else:
        c = result["counts"]
        _log(f"done: {c['completed']} completed, {c['failed']} failed, window {result['window']['duration_s']:.2f} s")
        return 0
    _log(f"trial failed ({kind}): {reason}")
    write_json(out / TrialFiles.FAILURE, {"kind": kind, "reason": reason})
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
