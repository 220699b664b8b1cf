"""One measurement: start the engine from a config, run the workload, write the trial files.

Runs in its own process (`python -m harness.trial TRIAL_DIR [--probe-requests N]`), so a crash, an
OOM or a hang ends only this trial. Contract with the parent: `config.yaml` is read; on success
`records.jsonl`, optionally `telemetry.csv`, and last `result.json` are written; on a handled failure
`failure.json` {kind: infeasible|preflight|error, reason} is written and the exit code is non-zero.
With `--probe-requests N`, the run up to the moment T its first N requests were all done is written
to `probe.jsonl` (PROBE_RECORDS) while the run goes on: the records of every request that ended by T,
not only the first N (those finish in batches alongside later ones, and leaving the later ones out
would understate the throughput of configs that run many requests at once). It is written when the
first request ending after T is done, so that those ending at T are in. The tuner judges the trial
on it and may stop it.
"""
from __future__ import annotations

import argparse
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
from harness.prefix_reuse import prefix_reuse
from harness.records import RequestRecord, write_records
from harness.runner import preflight, run, run_event_loop
from harness.store import SCHEMA_VERSION, TrialFiles, write_json
from harness.telemetry import TelemetrySampler, driver_info, energy_per_output_token_j
from workloads import Closed


#: The probe's records in a trial directory (see the module docstring).
PROBE_RECORDS = "probe.jsonl"


class Infeasible(HarnessError):
    """The adapter's check says this config cannot run on this hardware."""


def environment_fingerprint() -> dict:
    """Where the run happened; `cuda_visible_devices` is the GPU subset it was given (None: all)."""
    return {"harness_version": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(), "nvml": driver_info(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _log(msg: str) -> None:
    print(f"[harness {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


async def measure(cfg: ExperimentConfig, out_dir: Path, probe_requests: int | None = None) -> dict:
    """Run `cfg` once and write the trial files into `out_dir`; return the result dict. With `probe_requests`,
    also write the probe records (see the module docstring)."""
    adapter = get_adapter(cfg.engine.kind)
    engine_cfg = cfg.engine.resolve()
    reason = adapter.check(engine_cfg, Hardware.detect(), cfg.workload.max_sequence_tokens(),
                           max_input_tokens=cfg.workload.longest_prompt_tokens())
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
        probe = _Probe(out_dir / PROBE_RECORDS, specs, probe_requests) if probe_requests else None

        def on_done(record: RequestRecord) -> None:
            nonlocal done
            done += 1
            if done % max(len(specs) // 10, 1) == 0 or done == len(specs):
                _log(f"{done}/{len(specs)} requests done")
            if probe:
                probe.done(record)

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
    if probe:
        probe.write()  # when no request ended after the first ones, it is written now
        if probe.writing:
            await probe.writing
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
    reuse = prefix_reuse(specs, records, sent_before=specs[:1] if cfg.runner.preflight else ())
    if reuse is not None:  # only workloads whose requests share prefixes
        result["prefix_reuse"] = reuse
    write_records(out_dir / TrialFiles.RECORDS, records)
    telemetry.write_csv(out_dir / TrialFiles.TELEMETRY)
    write_json(out_dir / TrialFiles.RESULT, result)
    return result


class _Probe:
    """Collects the records of requests as they end, and writes the probe (see the module docstring) to `path` on
    a worker thread (`writing`), so the client's event loop is not held up. A workload of no more specs than
    `requests`: no probe (logged)."""

    def __init__(self, path: Path, specs: list, requests: int):
        self.path, self.first, self.ended = path, {s.id for s in specs[:requests]}, []
        self.t_ns: int | None = None  # when the first `requests` were all done
        self.writing: asyncio.Future | None = None
        self.skipped = requests >= len(specs)
        if self.skipped:
            _log(f"no probe: the workload has {len(specs)} requests, not more than the probe's {requests}")

    def done(self, record: RequestRecord) -> None:
        if self.skipped or self.writing is not None:
            return
        self.ended.append(record)
        if self.t_ns is None:
            self.first.discard(record.id)
            if not self.first:
                self.t_ns = max(r.end_ns or 0 for r in self.ended)
        elif (record.end_ns or 0) > self.t_ns:
            self.write()

    def write(self) -> None:
        """Write the probe now (a no-op before the first requests are all done, or once written)."""
        if self.t_ns is None or self.writing is not None:
            return
        probe = [r for r in self.ended if (r.end_ns or 0) <= self.t_ns]
        _log(f"probe: {len(probe)} requests had ended when the first ones were all done")
        self.writing = asyncio.get_running_loop().run_in_executor(None, write_records, self.path, probe)


def main(trial_dir: str, probe_requests: int | None = None) -> int:
    out = Path(trial_dir)
    os.environ[TRIAL_DIR_ENV] = str(out.resolve())  # where engines that launch a server write its log
    try:
        cfg = load_config(out / TrialFiles.CONFIG)
        result = run_event_loop(measure(cfg, out, probe_requests))
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
    parser = argparse.ArgumentParser(prog="python -m harness.trial", description=__doc__.splitlines()[0])
    parser.add_argument("trial_dir")
    parser.add_argument("--probe-requests", type=int, help="write the first N requests' records to " + PROBE_RECORDS)
    args = parser.parse_args()
    sys.exit(main(args.trial_dir, args.probe_requests))
