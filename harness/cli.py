"""`harness` command line: tune, bench, report. Exit codes: 0 ok, 1 failure/SLO miss where asked, 2 bad input."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.config import ExperimentConfig, load_config
from harness.errors import ConfigError, HarnessError
from harness.store import RunDir, TrialFiles, read_json, write_json, write_text_atomic, write_yaml
from harness.summary import TUNE_COMMAND_ATTR
from harness.trial_process import ctrl_c_latch, run_trial_process
from harness.tuner import GRACE_HEARTBEATS, HEARTBEAT_S, TrialOutcome, Tuner

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Benchmark and autotune LLM inference engines.")
console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough for the trial table
    console.width = max(console.width, 140)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _default_run_dir(cfg: ExperimentConfig) -> Path:
    return Path("runs") / cfg.name


@app.command()
def tune(config: Path = typer.Argument(..., help="experiment config YAML"),
         run_dir: Optional[Path] = typer.Option(None, help="where the study lives (default runs/<name>)"),
         storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: SQLite in the run dir); "
                                               "postgresql://USER@HOST/DB lets workers on many machines share "
                                               "the study"),
         study: Optional[str] = typer.Option(None, help="study name in the storage (default: the config's name)"),
         gpus: Optional[str] = typer.Option(None, help="run trials side by side on these GPU ids, e.g. 0,1,2,3: each "
                                            "trial gets tp x pp free ones as CUDA_VISIBLE_DEVICES"),
         heartbeat_s: int = typer.Option(HEARTBEAT_S, min=1, help="seconds between heartbeats on a server database; a "
                                         f"trial silent for {GRACE_HEARTBEATS}x this is taken as lost and re-run"),
         trials: Optional[int] = typer.Option(None, help="override search.trials (the whole study's budget)")) -> None:
    """Search engine configs for the best objective under the SLOs; re-running resumes the study, and any
    number of workers sharing --storage (PostgreSQL) run one study together."""
    cfg = load_config(config)
    if trials is not None and cfg.search is not None:
        cfg.search.trials = trials
    rdir = RunDir(run_dir or _default_run_dir(cfg))
    tuner = Tuner(cfg, rdir, config_dir=config.parent, storage=storage, study=study,
                  gpus=gpus.split(",") if gpus is not None else None, heartbeat_s=heartbeat_s)
    command = ["harness", "tune", str(config), "--run-dir", str(rdir.path)] + \
        (["--storage", tuner.storage_label] if storage else []) + (["--study", study] if study else []) + \
        (["--gpus", gpus] if gpus is not None else []) + (["--trials", str(trials)] if trials is not None else [])
    tuner.study.set_user_attr(TUNE_COMMAND_ATTR, shlex.join(command))  # for the report's "Reproduce" section
    storage = storage and tuner.storage_url
    already = tuner.finished()
    console.print(f"[bold]harness tune[/] {cfg.name}: engine [cyan]{cfg.engine.kind}[/] model "
                  f"[cyan]{cfg.engine.model or '-'}[/], space {tuner.space.name}, objective "
                  f"{'; '.join(o.expression for o in cfg.search.objectives)}, "
                  f"{cfg.search.trials} trials{_extras(cfg)} -> {rdir.path}")
    if storage:
        console.print(f"study {tuner.study.study_name!r} in {tuner.storage_label}, shared with any other worker on it")
    if tuner.gpus:
        console.print(f"trials run side by side on GPUs {','.join(tuner.gpus)}")
    for note in tuner.space_notes:
        console.print(f"search space narrowed to what this machine can run: {note}")
    if tuner.warm_start_skipped:
        console.print(f"[yellow]warm start skipped[/]: {tuner.warm_start_skipped}")
    if already:
        console.print(f"resuming: {already} trial(s) already finished")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}", style="dim"),
                        console=console, transient=False)

    def on_start(number: int, params: dict) -> None:
        progress.update(task, description=f"trial {number}: {_params(params)}", status="starting")

    def on_log(line: str) -> None:
        progress.update(task, status=escape(line.split("] ", 1)[-1][:40]))

    def on_end(o: TrialOutcome) -> None:
        progress.update(task, completed=tuner.finished())
        repeat = f" (repeat of trial {o.repeat_of})" if o.repeat_of is not None else ""
        if o.state == "complete":
            values = " ".join(f"{obj.label}={_fmt(v)}" for obj, v in zip(cfg.search.objectives, o.values))
            progress.console.print(f"  trial {o.number}{repeat} [green]complete[/] {values} ({o.duration_s:.0f} s) "
                                   f"{_params(o.params)}")
        else:
            colour = "yellow" if o.state in ("infeasible", "pruned") else "red"
            progress.console.print(f"  trial {o.number}{repeat} [{colour}]{o.state}[/]: {escape(o.reason or '')}")

    with progress, ctrl_c_latch():
        task = progress.add_task("tuning", total=cfg.search.trials, completed=already, status="")
        try:
            tuner.run(on_start, on_end, on_log)
        except KeyboardInterrupt:
            progress.stop()
            console.print("[yellow]interrupted[/]: finished trials are saved; run the same command to resume")
            _write_outputs(rdir, storage, tuner.study.study_name)
            raise typer.Exit(130)
    _write_outputs(rdir, storage, tuner.study.study_name)


def _extras(cfg: ExperimentConfig) -> str:
    """The header's note on probes and repeat measurements, e.g. ' (+ up to 2 repeat runs of the best configs)'."""
    notes = []
    if cfg.search.probe:
        notes.append(f"each judged after a probe of its first {cfg.search.probe.requests} requests")
        in_flight = getattr(cfg.workload.arrival, "concurrency", None)
        if in_flight and cfg.search.probe.requests < 4 * in_flight:
            notes.append(f"[yellow]a probe of fewer than 4 x {in_flight} requests in flight is mostly ramp-up: "
                         "its numbers may rank configs wrongly[/]")
    if cfg.search.repeats:
        notes.append(f"+ up to {cfg.search.repeats.top * cfg.search.repeats.runs} repeat runs of the best configs, "
                     "not counted in the budget")
    return f" ({'; '.join(notes)})" if notes else ""


def _params(params: dict) -> str:
    return " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())


def _write_outputs(rdir: RunDir, storage: str | None, study_name: str | None = None) -> None:
    from harness.summary import load_study
    from reports import render_study_report, write_recommended
    from reports.recommended import write_deployment

    summary = load_study(rdir, storage, study_name)
    write_text_atomic(rdir.report, render_study_report(summary))
    has_best = write_recommended(summary, rdir.recommended)
    if not has_best:
        rdir.recommended.unlink(missing_ok=True)
    deployment = write_deployment(summary, rdir.path)
    _print_summary(summary)
    console.print(f"report: {rdir.report}")
    if has_best:
        console.print(f"recommended config: {rdir.recommended}")
    for path in deployment:
        console.print(f"deployment: {path}")


def _print_summary(summary) -> None:
    params = list(dict.fromkeys(k for t in summary.trials for k in t.params))
    table = Table(title=f"{summary.name}: {len(summary.completed)} of {len(summary.trials)} trials completed")
    for col in ("#", "state", summary.metric, "ttft p95 ms", "tpot p95 ms", "out tok/s", "SLO", *params):
        table.add_column(col, overflow="fold")
    for t in summary.trials:
        d = t.result["distributions"] if t.result else {}
        s = t.result["scalars"] if t.result else {}
        star = "*" if summary.best is t else ""
        state = t.state + (" (OOM)" if t.out_of_memory else "") + \
            (f", repeat of {t.repeat_of}" if t.repeat_of is not None else "") + \
            (f", {t.engine_change}" if t.engine_change else "")
        table.add_row(f"{t.number}{star}", state, _fmt(t.value), _fmt(d.get("ttft_ms", {}).get("p95")),
                      _fmt(d.get("tpot_ms", {}).get("p95")), _fmt(s.get("output_throughput_tok_s")),
                      ("pass" if t.slo_pass else "miss") if t.result else "-",
                      *(escape(_fmt(t.params[p]) if isinstance(t.params.get(p), float) else str(t.params.get(p, "")))
                        for p in params))
    console.print(table)
    for t in summary.trials:
        if t.reason:
            console.print(f"  trial {t.number} {t.state}: {escape(t.reason)}", highlight=False)
    starts = summary.engine_starts()
    if starts:
        console.print("engine start (completed trials): " + "; ".join(
            f"{change} {len(s)}x, mean {sum(s) / len(s):.1f} s" for change, s in sorted(starts.items())))
    chosen = summary.best or summary.closest_miss
    if chosen is not None:
        label = "[bold green]recommended[/]" if summary.best else "[red]no trial met the SLOs[/]; closest miss"
        console.print(f"{label}: trial {chosen.number} ({escape(summary.choice)})", highlight=False)
    if summary.simulated:
        console.print("[yellow]SIMULATED engine: numbers describe a service model, not hardware[/]")


@app.command()
def bench(config: Path = typer.Argument(..., help="experiment config YAML (its search section is ignored)"),
          out: Optional[Path] = typer.Option(None, help="output directory (default runs/<name>/bench)"),
          timeout_s: float = typer.Option(1800.0, help="kill the run after this many seconds"),
          fail_on_slo: bool = typer.Option(False, help="exit 1 when an SLO is missed")) -> None:
    """Measure one engine config on one workload (no search) and write result.json and report.html."""
    cfg = load_config(config)
    out_dir = out or _default_run_dir(cfg) / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (TrialFiles.RESULT, TrialFiles.FAILURE, TrialFiles.LOG):
        (out_dir / name).unlink(missing_ok=True)
    write_yaml(out_dir / TrialFiles.CONFIG, cfg.model_dump(mode="json", exclude={"search"}))
    title = f"benchmarking {cfg.name} on {cfg.engine.kind} (log: {out_dir / TrialFiles.LOG})"
    with console.status(title) as status:
        state, reason = run_trial_process(
            out_dir, timeout_s, lambda line: status.update(f"{title}: {escape(line.split('] ', 1)[-1])}"))
    if state != "complete":
        raise HarnessError(f"bench {state}: {reason}")
    result = read_json(out_dir / TrialFiles.RESULT)
    _write_run_report(out_dir, result)
    d, s = result["distributions"], result["scalars"]
    console.print(f"completed {result['counts']['completed']}, failed {result['counts']['failed']}; "
                  f"ttft p95 {_fmt(d['ttft_ms']['p95'])} ms, tpot p95 {_fmt(d['tpot_ms']['p95'])} ms, "
                  f"output {_fmt(s['output_throughput_tok_s'])} tok/s, goodput {_fmt(s['goodput_req_s'])} req/s, "
                  f"SLO {'pass' if result['slo_pass'] else 'MISS'}")
    if result["simulated"]:
        console.print("[yellow]SIMULATED engine: numbers describe a service model, not hardware[/]")
    trust = result["client_trust"]
    if trust["trusted"] is not True:
        label = "[red]client timing NOT TRUSTED[/]" if trust["trusted"] is False else "[yellow]client timing not assessed[/]"
        console.print(f"{label}: {escape('; '.join(trust['reasons']))}", highlight=False)
    console.print(f"report: {out_dir / 'report.html'}")
    if fail_on_slo and not result["slo_pass"]:
        raise typer.Exit(1)


def _write_run_report(out_dir: Path, result: dict) -> None:
    from harness.records import read_records
    from reports import render_run_report

    records = read_records(out_dir / TrialFiles.RECORDS)
    write_text_atomic(out_dir / "report.html", render_run_report(result, records, title=f"{result['name']}: bench",
                                                                 telemetry_csv=out_dir / TrialFiles.TELEMETRY))


@app.command()
def plan(config: Path = typer.Argument(..., help="experiment config YAML with an open-loop arrival rate"),
         out: Optional[Path] = typer.Option(None, help="plan directory (default runs/<name>/plan)"),
         rates: Optional[str] = typer.Option(None, help="sweep exactly these rates, req/s, e.g. 1,2,4,8 "
                                             "(default: automatic search for the knee)"),
         start_rate: Optional[float] = typer.Option(None, help="automatic search: first rate (default: the config's)"),
         growth: float = typer.Option(2.0, help="automatic search: rate multiplier until the first miss"),
         precision: float = typer.Option(0.05, help="automatic search: bisect until the gap between the highest "
                                         "pass and the lowest miss is at most this fraction of the pass"),
         max_points: int = typer.Option(20, help="automatic search: most sweep points"),
         saturation_ratio: float = typer.Option(0.9, help="a point achieving less than this fraction of the "
                                                "offered rate is saturated (counts as a miss)"),
         target_rate: Optional[float] = typer.Option(None, help="target load to size for (req/s)"),
         target_tok_s: Optional[float] = typer.Option(None, help="target load to size for (output tokens/s)"),
         headroom: float = typer.Option(0.2, help="run each replica at most at (1 - headroom) x its max rate"),
         gpu_hour_cost: Optional[float] = typer.Option(None, help="price of one GPU-hour (for cost estimates)"),
         gpus_per_replica: Optional[int] = typer.Option(None, help="GPUs per replica (default: tp x pp of the engine)"),
         timeout_s: float = typer.Option(1800.0, help="kill one point's run after this many seconds")) -> None:
    """Find the highest request rate one replica serves within the SLOs (rate sweep + confirmation run),
    then size replicas, GPUs and cost for a target load; writes plan.json and capacity.html. Exits 1 when no
    rate met the SLOs or the confirmation run missed them (NOT validated)."""
    import shlex

    from harness.plan import Planner, SweepSettings, Target, build_plan, write_plan
    from reports import render_capacity_report

    cfg = load_config(config)
    settings = SweepSettings(rates=_parse_rates(rates), start_rate=start_rate, growth=growth, precision=precision,
                             max_points=max_points, saturation_ratio=saturation_ratio)
    target = Target(req_s=target_rate, output_tok_s=target_tok_s, headroom=headroom, gpu_hour_cost=gpu_hour_cost,
                    gpus_per_replica=gpus_per_replica)
    target.check()
    plan_dir = out or _default_run_dir(cfg) / "plan"
    options = {"--out": out, "--rates": rates, "--start-rate": start_rate, "--growth": growth,
               "--precision": precision, "--max-points": max_points, "--saturation-ratio": saturation_ratio,
               "--target-rate": target_rate, "--target-tok-s": target_tok_s, "--headroom": headroom,
               "--gpu-hour-cost": gpu_hour_cost, "--gpus-per-replica": gpus_per_replica, "--timeout-s": timeout_s}
    if rates is not None:  # the automatic search's settings do not apply
        for key in ("--start-rate", "--growth", "--precision", "--max-points"):
            options.pop(key)
    args = ["harness", "plan", str(config)]
    for option, value in options.items():
        if value is not None:
            args += [option, str(value)]
    with console.status(f"planning {cfg.name}") as status:
        def on_start(rate: float, role: str) -> None:
            status.update(f"{'confirming' if role == 'confirm' else 'measuring'} {rate:g} req/s")

        def on_point(p: dict, reused: bool) -> None:
            verdict = "[green]pass[/]" if p["passed"] else "[red]failed[/]" if p["state"] == "failed" else "[red]miss[/]"
            why = f": {escape('; '.join(p['why'] + p['notes']))}" if p["why"] or p["notes"] else ""
            label = "confirmation" if p["role"] == "confirm" else "point"
            console.print(f"  {label} {p['rate']:g} req/s {verdict}{why}{' (reused)' if reused else ''}",
                          highlight=False)

        planner = Planner(cfg, plan_dir, settings, timeout_s, on_start, on_point,
                          lambda line: status.update(escape(line.split("] ", 1)[-1][:80])))
        console.print(f"[bold]harness plan[/] {cfg.name}: engine [cyan]{cfg.engine.kind}[/], sweeping "
                      f"{planner.field} -> {plan_dir}")
        try:
            with ctrl_c_latch():
                knee = planner.sweep()
                confirmation = planner.confirm(knee["rate"]) if knee["rate"] is not None else None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: completed points are saved; run the same command to resume")
            raise typer.Exit(130)
    result = build_plan(cfg, planner, knee, confirmation, target, shlex.join(args))
    path = write_plan(plan_dir, result)
    write_text_atomic(plan_dir / "capacity.html", render_capacity_report(result))
    _print_plan(result)
    console.print(f"plan: {path}\nreport: {plan_dir / 'capacity.html'}")
    if knee["rate"] is None or not result["validation"]["validated"]:
        raise typer.Exit(1)


def _parse_rates(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--rates: expected comma-separated numbers (req/s) like 1,2,4,8, got {text!r}") from None


def _print_plan(plan: dict) -> None:
    table = Table(title=f"{plan['name']}: rate sweep ({plan['rate_field']})")
    metrics = list(dict.fromkeys(m for p in plan["points"] if p["state"] == "complete" for m in p["latency"]))
    for col in ("offered req/s", "run", "requests", "achieved req/s", *(f"{m} p50/p95/p99" for m in metrics),
                "out tok/s", "verdict"):
        table.add_column(col, justify="left" if col in ("run", "verdict") else "right")
    for p in sorted(plan["points"], key=lambda p: (p["role"] != "sweep", p["rate"])):
        if p["state"] != "complete":
            table.add_row(f"{p['rate']:g}", p["dir"], *["-"] * (3 + len(metrics)), "[red]failed[/]")
            continue
        table.add_row(f"{p['rate']:g}", p["dir"], str(p["counts"]["measured"]), _fmt(p["achieved_req_s"]),
                      *("/".join(_fmt(p["latency"][m][s]) for s in ("p50", "p95", "p99")) if m in p["latency"] else "-"
                        for m in metrics),
                      _fmt(p["output_throughput_tok_s"], 4), "[green]pass[/]" if p["passed"] else "[red]miss[/]")
    console.print(table)
    knee, validation, sizing = plan["max_rate"], plan["validation"], plan["sizing"]
    if knee["rate"] is None:
        console.print("[red]no rate met the SLOs[/]: nothing to size")
    else:
        where = (f"knee in [{knee['rate']:g}, {knee['first_miss']:g}) req/s" if knee["first_miss"] is not None
                 else "every rate passed: a lower bound")
        console.print(f"[bold]max rate at SLO: {knee['rate']:g} req/s per replica[/] ({where})")
        colour = "green" if validation["validated"] else "red"
        reason = f": {escape(validation['reason'])}" if validation["reason"] else ""
        console.print(f"confirmation at {validation['rate']:g} req/s (seed {validation['seed']}): "
                      f"[{colour}]{validation['verdict']}[/]{reason}", highlight=False)
    if sizing:
        cost = (f", ${sizing['cost_per_hour']:,.2f}/hour, ${_fmt(sizing['cost_per_million_output_tokens'])} per "
                f"million output tokens" if sizing["cost_per_hour"] is not None else "")
        console.print(f"sizing for {_fmt(sizing['target_req_s'])} req/s with {sizing['headroom']:.0%} headroom: "
                      f"[bold]{sizing['replicas']} replicas x {sizing['gpus_per_replica']} GPU = "
                      f"{sizing['gpus']} GPUs[/]"
                      f"{cost} (each replica at {_fmt(sizing['operating_rate_req_s'])} req/s, "
                      f"{sizing['operating_utilization']:.0%} of its max)", highlight=False)
    if plan["simulated"]:
        console.print("[yellow]SIMULATED engine: numbers describe a service model, not hardware[/]")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory written by tune or bench"),
           storage: Optional[str] = typer.Option(None, help="Optuna storage URL if not the run dir's SQLite"),
           study: Optional[str] = typer.Option(None, help="study name, where the storage holds several")) -> None:
    """(Re)write report.html (and recommended.yaml for a study) from a run directory."""
    rdir = RunDir(run_dir)
    if (run_dir / TrialFiles.RESULT).exists():
        _write_run_report(run_dir, read_json(run_dir / TrialFiles.RESULT))
        console.print(f"report: {run_dir / 'report.html'}")
    elif rdir.study_db.exists() or storage:
        _write_outputs(rdir, storage, study)
    else:
        raise ConfigError(f"{run_dir}: no study.db and no result.json: not a run directory")


@app.command()
def calibrate(output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                   help="certificate file (default ~/.cache/harness/calibration.json)"),
              client_processes: int = typer.Option(1, min=1, help="client processes sharing the load")) -> None:
    """Measure this machine's client timing error against the mock server at rising load and certify
    the highest concurrency and request rate at which it stays within its error budget."""
    from harness import calibrate as cal

    table = Table(title="client timing error vs the mock server's own send times (ms)")
    for col in ("load", "requests", "failed", "TTFT err p50", "TTFT err p99", "ITL err p50", "ITL err p99",
                "E2E err p50", "E2E err p99", "sched lag p99", "within budget"):
        table.add_column(col, justify="right")

    def on_level(row: dict) -> None:
        e = {k: row[k] for k in ("ttft_error_ms", "itl_error_ms", "e2e_error_ms", "schedule_lag_ms")}
        table.add_row(row["label"], str(row["requests"]), str(row["failed"]),
                      *(_fmt(e[k][p]) for k in ("ttft_error_ms", "itl_error_ms", "e2e_error_ms") for p in ("p50", "p99")),
                      _fmt(e["schedule_lag_ms"]["p99"]), "yes" if row["within_budget"] else "[red]no[/]")
        console.print(f"  {row['label']}: TTFT error p99 {_fmt(e['ttft_error_ms']['p99'])} ms", highlight=False)

    certificate = cal.calibrate(client_processes=client_processes, on_level=on_level)
    console.print(table)
    b = certificate["budget"]
    console.print(f"budget: TTFT error p50 <= {b['ttft_p50_ms']} ms, p99 <= {b['ttft_p99_ms']} ms, schedule lag p99 "
                  f"<= {b['schedule_lag_p99_ms']} ms, no failures")
    console.print(f"certified: {certificate['certified_concurrency']} concurrent streams, "
                  f"{certificate['certified_rate_req_s']} req/s open loop")
    path = output or cal.default_certificate_path()
    write_json(path, certificate)
    console.print(f"certificate: {path}")


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a bench or trial directory (result.json), or a study run dir"),
           format: str = typer.Option(..., "--format", help="vllm | trtllm-bench"),
           origin: str = typer.Option("harness", help="harness: latency from the scheduled time (open loop); "
                                      "sent: from the send time, as vLLM and trtllm-bench measure"),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="file to write (default: stdout)")) -> None:
    """Write a run's metrics in the field names of vLLM `bench serve` or trtllm-bench `--report_json`."""
    import json

    from harness.export import to_trtllm_bench, to_vllm
    from harness.records import read_records

    writers = {"vllm": to_vllm, "trtllm-bench": to_trtllm_bench}
    if format not in writers or origin not in ("harness", "sent"):
        raise ConfigError(f"--format must be one of {', '.join(writers)} and --origin harness or sent")
    run = _result_dir(run_dir)
    doc = writers[format](read_json(run / TrialFiles.RESULT), read_records(run / TrialFiles.RECORDS), origin=origin)
    text = json.dumps(doc, indent=2) + "\n"
    if output:
        write_text_atomic(output, text)
        console.print(f"wrote {output} (from {run})")
    else:
        sys.stdout.write(text)


def _result_dir(run_dir: Path) -> Path:
    """`run_dir` itself when it holds a result.json, else the recommended trial of the study in it."""
    if (run_dir / TrialFiles.RESULT).exists():
        return run_dir
    rdir = RunDir(run_dir)
    if not rdir.study_db.exists():
        raise ConfigError(f"{run_dir}: no result.json and no study.db: not a run directory")
    from harness.summary import load_study

    summary = load_study(rdir)
    if summary.best is None:
        raise ConfigError(f"{run_dir}: no trial met the SLOs, so there is no recommended trial to export; "
                          "pass a trial directory (runs/<name>/trials/<n>)")
    return summary.best.dir


@app.command()
def compare(baseline: Path = typer.Argument(..., help="baseline: a bench or trial directory, or a study run dir "
                                            "(its recommended trial)"),
            current: Path = typer.Argument(..., help="the run to check, as BASELINE"),
            thresholds: Optional[Path] = typer.Option(None, help="YAML: alpha, gate {metric[.stat]: threshold}, "
                                                      "show {...} (default: see README)"),
            junit: Optional[Path] = typer.Option(None, help="write JUnit XML here (one test case per metric)"),
            html: Optional[Path] = typer.Option(None, help="write the HTML diff report here"),
            allow_fingerprint_mismatch: bool = typer.Option(
                False, help="compare runs measured on a different GPU, driver, engine version or model (warns)")) -> None:
    """Per metric: change from BASELINE to CURRENT, 95% CI, significance and verdict. Exit 1 when a gated
    metric regressed significantly and beyond its threshold; 2 on bad input, differing fingerprints or when no
    gated metric could be tested."""
    from harness import compare as cmp
    from reports.compare import change_text, junit_xml, render_compare_report
    from reports.html import format_value

    limits = cmp.load_thresholds(thresholds)
    runs = []
    for path in (baseline, current):
        if not path.is_dir():
            raise ConfigError(f"{path}: not a directory (pass a bench or trial directory, or a study run dir)")
        runs.append(cmp.load_run(_result_dir(path)))
    mismatch = [d for d in cmp.fingerprint_differences(*runs) if d.identity]
    if mismatch and not allow_fingerprint_mismatch:
        raise ConfigError("the runs were measured on different setups, so their numbers are not comparable:\n" +
                          "\n".join(f"  {d.identity}: {d.key} {d.baseline!r} -> {d.current!r}" for d in mismatch) +
                          "\npass --allow-fingerprint-mismatch to compare them anyway")
    result = cmp.compare(*runs, limits)
    colours = {"regressed": "red", "improved": "green", "unchanged": "default", "inconclusive": "yellow"}
    table = Table(title=f"{escape(runs[0].label)} -> {escape(runs[1].label)}")
    for col in ("metric", "baseline", "current", "change", "95% CI", "p (Holm)", "threshold", "verdict"):
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for m in result.metrics:
        table.add_row(m.key + (" (steady)" if m.steady_state else "") + ("" if m.gated else " (shown)"),
                      format_value(m.baseline, m.unit),
                      format_value(m.current, m.unit), change_text(m, m.change),
                      f"[{change_text(m, m.ci[0])}, {change_text(m, m.ci[1])}]" if m.change is not None else "",
                      _fmt(m.p_adjusted, 2), change_text(m, m.threshold, signed=False),
                      f"[{colours[m.verdict]}]{m.verdict}[/]")
    console.print(table)
    untested: dict[str, list[str]] = {}
    for m in result.metrics:
        if m.change is None:
            untested.setdefault(m.reason, []).append(m.key)
    for reason, keys in untested.items():
        console.print(f"[yellow]not tested[/] ({', '.join(keys)}): {escape(reason)}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if junit:
        write_text_atomic(junit, junit_xml(result))
        console.print(f"junit: {junit}")
    if html:
        write_text_atomic(html, render_compare_report(result))
        console.print(f"report: {html}")
    if result.regressed:
        console.print("[red]REGRESSION[/]: " + ", ".join(f"{m.key} {change_text(m, m.change)}" for m in result.regressed))
        raise typer.Exit(1)
    gated = [m for m in result.metrics if m.gated]
    if gated and all(m.change is None for m in gated):  # a gate that tested nothing must not pass
        raise ConfigError("no gated metric could be tested: " + "; ".join(dict.fromkeys(m.reason for m in gated)))
    console.print(f"no gated metric regressed significantly beyond its threshold (family-wise alpha {result.alpha:g})")


def main() -> None:
    """Console entry point: usage errors exit 2 (click), HarnessErrors exit with their own code."""
    try:
        app()
    except HarnessError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
