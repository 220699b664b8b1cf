"""HTML reports: a tuning study (`render_study_report`), one bench run (`render_run_report`) and a
capacity plan (`render_capacity_report`).

Each report is one self-contained HTML string: CSS inline, figures as SVG data URIs, no scripts
and no external resources. Jinja2 autoescaping is on, so every string that came from data (model
names, prompts, server errors, failure reasons) is escaped. Python builds plain view dicts;
the templates only lay them out.
"""
from __future__ import annotations

import json
import math
import shlex
import statistics
from collections import Counter
from pathlib import Path

import jinja2
import pandas as pd
import yaml
from markupsafe import Markup, escape

from engine_adapters.trtllm_serve import deployment_snippet
from harness import __version__
from harness.config import EngineSpec
from harness.metrics import COST_METRICS, METRICS, gpus_per_replica, metric_value, summarize
from harness.records import RequestRecord, read_records
from harness.store import TrialFiles
from harness.summary import StudySummary, TrialRow
from reports import figures
from reports.recommended import recommended_config
from reports.results import slo_margins

STATE_ORDER = ("complete", "failed", "infeasible", "interrupted", "running", "queued")
# Columns of the trial and comparison tables: (metric, statistic or None for scalars).
TABLE_METRICS = (("ttft_ms", "p95"), ("tpot_ms", "p95"), ("output_throughput_tok_s", None),
                 ("goodput_req_s", None), ("error_rate", None))
MAX_ERROR_ROWS = 10  # distinct request error messages listed; the rest are summed in one row
SIMULATED_BANNER = "SIMULATED ENGINE — numbers describe a service model, not hardware"


# number formatting (Jinja filters) ---------------------------------------------------------------

def format_number(x, digits: int = 3) -> str:
    """3 significant digits with thousands separators ('12,346', '12.3', '0.0123'); None -> 'n/a'."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= digits - 1:
        return f"{x:,.0f}"
    if magnitude < -3:
        return f"{x:.{digits - 1}e}"
    return f"{x:,.{digits - 1 - magnitude}f}"


def format_percent(fraction, signed: bool = False) -> str:
    """0.1234 -> '12.3%' (signed: '+12.3%'); None -> 'n/a'."""
    if fraction is None:
        return "n/a"
    text = format_number(abs(fraction) * 100 if signed else fraction * 100) + "%"
    return ("+" if fraction >= 0 else "−") + text if signed else text


def format_value(x, unit: str, with_unit: bool = True) -> str:
    """A metric value with its unit (or without, for columns whose header names it); fractions as percentages."""
    if unit == "fraction":
        return format_percent(x)
    if x is None:
        return "n/a"
    return f"{format_number(x)} {unit}" if with_unit else format_number(x)


def breakable(name: str) -> Markup:
    """An identifier that may wrap after its underscores (for narrow table headers); escaped."""
    return Markup("_<wbr>").join(escape(part) for part in str(name).split("_"))


def format_ci(bounds) -> str:
    """[lo, hi] with 'n/a' for a missing bound."""
    lo, hi = bounds
    return f"[{format_number(lo)}, {format_number(hi)}]"


def format_plain(x) -> str:
    """A config or fingerprint value as written: floats to 4 significant digits, None -> '—'."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, dict)):
        return json.dumps(x)
    return str(x)


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters.update(num=format_number, pct=format_percent, value=format_value, ci=format_ci, plain=format_plain,
                    breakable=breakable)
_ENV.globals.update(METRICS=METRICS, TABLE_METRICS=TABLE_METRICS, SIMULATED_BANNER=SIMULATED_BANNER,
                    version=__version__)


# views ---------------------------------------------------------------------------------------------

def flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> [(dotted key, leaf value)] in insertion order."""
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _table_metrics(result: dict | None) -> list:
    return [metric_value(result, m, s) if result else None for m, s in TABLE_METRICS]


#: The telemetry.csv columns (harness.telemetry.CSV_HEADER) the GPU timeline needs; process memory is drawn when present.
TIMELINE_COLUMNS = ("t_ns", "gpu", "memory_used_bytes", "util_pct")


def _telemetry_samples(path: Path | None, telemetry: dict) -> tuple[pd.DataFrame | None, str | None]:
    """The run's telemetry.csv samples, or None and why there is no GPU timeline."""
    if not telemetry.get("available"):
        return None, None  # the telemetry section already says why
    if path is None:
        return None, "no telemetry.csv with this result: no GPU timeline"
    try:
        samples = pd.read_csv(path)
    except FileNotFoundError:
        return None, f"{path} not found: no GPU timeline"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{path} cannot be read ({exc}): no GPU timeline"
    missing = [c for c in TIMELINE_COLUMNS if c not in samples.columns]
    if missing:
        return None, f"{path} lacks the column(s) {', '.join(missing)}: no GPU timeline"
    return samples, None


def _run_view(result: dict, records: list[RequestRecord] | None, records_note: str | None,
              telemetry_csv: Path | None) -> dict:
    """What the run-detail sections show for one result (and its records and telemetry samples, when readable)."""
    errors = Counter(r.error for r in records or [] if r.phase == "measured" and r.error).most_common()
    telemetry = result.get("telemetry") or {"available": False, "reason": "no telemetry in this result"}
    samples, telemetry_note = _telemetry_samples(telemetry_csv, telemetry)
    return {
        "result": result,
        "margins": slo_margins(result),
        "distributions": [(m, result["distributions"].get(m.name) or summarize([]))
                          for m in METRICS.values() if m.kind == "distribution"],
        "scalars": [(m, result["scalars"].get(m.name)) for m in METRICS.values() if m.kind == "scalar"],
        "errors": errors[:MAX_ERROR_ROWS],
        "errors_other": (len(errors) - MAX_ERROR_ROWS, sum(n for _, n in errors[MAX_ERROR_ROWS:])),
        "records_note": records_note,
        "figures": {
            "ttft": figures.distribution(records, "ttft_ms") if records else None,
            "itl": figures.distribution(records, "itl_ms") if records else None,
            "timeline": figures.ttft_timeline(records) if records else None,
            "ttft_vs_input": figures.ttft_vs_input(records) if records else None,
            "arrivals": figures.arrival_rate(records) if records else None,
            "gpu": figures.gpu_timeline(samples, telemetry.get("gpus") or []) if samples is not None else None,
        },
        "fidelity": result.get("fidelity"),
        "prefix_reuse": result.get("prefix_reuse"),
        "telemetry": telemetry,
        "telemetry_note": telemetry_note,
        "client_trust": result.get("client_trust") or {"trusted": None, "reasons": ["not assessed in this result"]},
        "fingerprint": flatten(result.get("fingerprint") or {}),
        "engine_config": flatten(result["engine"]["config"]),
        "workload": flatten(result.get("workload") or {}),
    }


def _trial_records(trial: TrialRow) -> tuple[list[RequestRecord] | None, str | None]:
    """The trial's records, or None and why they cannot be shown."""
    path = trial.dir / TrialFiles.RECORDS
    try:
        return read_records(path), None
    except FileNotFoundError:
        return None, f"{path} not found: no per-request figures"
    except (ValueError, TypeError) as exc:
        return None, f"{path} cannot be read ({exc}): no per-request figures"


def _comparison(summary: StudySummary) -> dict:
    """The best trial against the runner-up (next best SLO-passing trial on the primary objective) and the
    median completed trial, on the primary objective."""
    best, runner_up = summary.best, summary.runner_up
    unit = summary.objectives[0].unit
    valued = [t for t in summary.completed if t.value is not None]

    def delta(value):
        return (best.value - value) / abs(value) if value else None

    def versus(other: float, who: str, number: int | None = None) -> str:
        """'12.3% higher than the runner-up's (trial 4, 9.29 req/s)': the sentence under the recommendation."""
        shown = format_value(other, unit) if number is None else f"trial {number}, {format_value(other, unit)}"
        if best.value == other:
            return f"equal to {who} ({shown})"
        d = delta(other)
        amount = f"{format_percent(abs(d))} " if d is not None else ""
        return f"{amount}{'higher' if best.value > other else 'lower'} than {who} ({shown})"

    rows = [{"label": f"chosen: trial {best.number}", "value": best.value, "delta": None,
             "metrics": _table_metrics(best.result)}]
    if runner_up:
        rows.append({"label": f"runner-up: trial {runner_up.number}", "value": runner_up.value,
                     "delta": delta(runner_up.value), "metrics": _table_metrics(runner_up.result)})
    median_metrics = []
    for column in zip(*(_table_metrics(t.result) for t in valued)):
        present = [v for v in column if v is not None]
        median_metrics.append(statistics.median(present) if present else None)
    median = statistics.median(t.value for t in valued)
    rows.append({"label": f"median of {len(valued)} completed trials", "value": median, "delta": delta(median),
                 "metrics": median_metrics})
    return {"rows": rows, "runner_up": runner_up,
            "vs_runner_up": versus(runner_up.value, "the runner-up's", runner_up.number) if runner_up else None,
            "vs_median": versus(median, "the median completed trial's"),
            "n_completed": len(summary.completed)}


def _pareto(summary: StudySummary, param_names: list[str]) -> dict | None:
    """The Pareto section of a multi-objective study: the front's rows (primary objective best first) and figure."""
    if not summary.multi_objective:
        return None
    primary = summary.objectives[0]
    front = sorted(summary.front, key=lambda t: (-primary.sign * t.value, t.number))
    return {"rows": [{"trial": t, "params": [t.params.get(p) for p in param_names], "chosen": t is summary.best}
                     for t in front],
            "figure": figures.pareto(summary)}


def _cost_note(summary: StudySummary) -> str | None:
    """How the cost objectives counted GPUs (and that a CPU or simulated run counts as 1), when one is used."""
    if not any(o.metric in COST_METRICS for o in summary.objectives):
        return None
    counts = Counter(gpus_per_replica(t.result["engine"]["config"]) for t in summary.completed)
    shown = ", ".join(f"{n} GPU{'s' if n > 1 else ''} ({k} trial{'s' if k > 1 else ''})"
                      for n, k in sorted(counts.items()))
    price = (summary.config.get("search") or {}).get("gpu_hour_cost")
    return (f"Cost objectives count the GPUs of each trial's engine config as tensor x pipeline parallelism; a config "
            f"that names no parallelism (an engine on CPU, the simulated engine, a remote server) counts as 1 GPU, "
            f"so on a CPU machine 'per GPU-hour' means per hour of the whole machine. Counted: {shown or 'none'}."
            + (f" Price: {format_number(price)} $ per GPU-hour." if price is not None else ""))


def engine_defaults(config: dict, knobs: list[str]) -> dict | None:
    """Each tuned knob's value in the engine's default config: the adapter's config with the experiment's fixed
    params and none of `knobs` set (None: the engine decides at run time). None when that config cannot be built."""
    engine = config.get("engine") or {}
    fixed = {k: v for k, v in (engine.get("params") or {}).items() if k not in knobs}
    try:
        resolved = EngineSpec(kind=engine.get("kind"), model=engine.get("model"), params=fixed).resolve()
    except ValueError:  # pydantic's ValidationError included
        return None
    values = resolved.model_dump(mode="json")
    return {k: values.get(k) for k in knobs}


def _same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _gain_over_defaults(summary: StudySummary, knobs: list[str]) -> dict | None:
    """The recommendation against the study's trial of the engine's defaults (`engine_defaults`), when one ran;
    else what to do to measure it. Never estimated. None without a recommendation."""
    best = summary.best
    if best is None or not knobs:
        return None
    defaults = engine_defaults(summary.config, knobs)
    if defaults is None:
        return {"point": None, "trial": None, "others": [], "changes": [], "engine_decides": []}
    runs = [t for t in summary.trials if t.params and all(_same_value(t.params.get(k), v) for k, v in defaults.items())]
    trial = next((t for t in runs if t.state == "complete" and t.values), runs[0] if runs else None)
    changes = []
    if trial is not None and trial.values and trial is not best:
        for objective, chosen, base in zip(summary.objectives, best.values, trial.values):
            changes.append({"objective": objective, "chosen": chosen, "defaults": base,
                            "relative": (chosen - base) / abs(base) if base else None,
                            "better": objective.sign * (chosen - base) > 0, "equal": chosen == base})
    return {"point": ", ".join(f"{k}={format_plain(v) if v is not None else '(engine decides)'}"
                               for k, v in defaults.items()),
            "trial": trial, "others": [t.number for t in runs if t is not trial], "changes": changes,
            "engine_decides": [k for k, v in defaults.items() if v is None]}


def _reproduce(summary: StudySummary) -> dict:
    """The `harness tune` command that ran the study (recorded since the CLI stores it; older studies get a
    template with CONFIG.yaml standing for the config), how to re-render the report, and the stored config."""
    run_dir = str(summary.run_dir) if summary.run_dir is not None else "RUN_DIR"
    return {"command": summary.command or shlex.join(["harness", "tune", "CONFIG.yaml", "--run-dir", run_dir]),
            "recorded": summary.command is not None,
            "report_command": shlex.join(["harness", "report", run_dir]),
            "config_yaml": yaml.safe_dump(summary.config, sort_keys=False)}


def _trial_rows(summary: StudySummary, param_names: list[str], chosen: TrialRow | None) -> list[dict]:
    return [{"trial": t, "params": [t.params.get(p) for p in param_names], "metrics": _table_metrics(t.result),
             "chosen": t is chosen} for t in sorted(summary.trials, key=lambda t: t.number)]


def render_study_report(summary: StudySummary) -> str:
    """The study report: recommendation (or closest miss), trials, figures, the chosen trial in detail."""
    chosen = summary.best or summary.closest_miss
    param_names = list(dict.fromkeys(p for t in summary.trials for p in t.params))
    states = Counter(t.state for t in summary.trials)
    primary = summary.objectives[0]
    chosen_view = None
    if chosen is not None:
        records, note = _trial_records(chosen)
        chosen_view = _run_view(chosen.result, records, note, chosen.dir / TrialFiles.TELEMETRY)
    recommended = recommended_config(summary)
    best_engine = summary.best.result["engine"] if summary.best else None
    context = {
        "title": f"Tuning study: {summary.name}",
        "simulated": summary.simulated,
        "summary": summary,
        "objective_label": primary.label,
        "objective_unit": primary.unit,
        "objectives": summary.objectives,
        "confidence": summary.confidence,
        "pareto": _pareto(summary, param_names),
        "cost_note": _cost_note(summary),
        "states": [(s, states[s]) for s in STATE_ORDER if states[s]]
        + [(s, n) for s, n in states.items() if s not in STATE_ORDER],
        "setup": _study_setup(summary),
        "slo_text": slo_text(summary.config),
        "param_names": param_names,
        "trials": _trial_rows(summary, param_names, chosen),
        "chosen": chosen,
        "chosen_view": chosen_view,
        "comparison": _comparison(summary) if summary.best else None,
        "misses": [m for m in slo_margins(chosen.result) if not m["pass"]] if chosen and not summary.best else [],
        "recommended_yaml": yaml.safe_dump({"engine": recommended["engine"]}, sort_keys=False) if recommended else None,
        "llm_snippet": deployment_snippet(best_engine["kind"], best_engine["config"]) if best_engine else None,
        "history_figure": figures.objective_history(summary),
        "tradeoff_figure": figures.tradeoff(summary),
        "gain": _gain_over_defaults(summary, param_names),
        "importance": summary.importance,
        "importance_figure": figures.param_importance(summary.importance) if summary.importance else None,
        "effects_figure": figures.knob_effects(summary, param_names),
        "reproduce": _reproduce(summary),
    }
    return _ENV.get_template("study.html.j2").render(context)


def slo_text(config: dict) -> str:
    """'ttft_ms p95 ≤ 2,000 ms; …; error rate ≤ 0%' from an experiment config dict."""
    limits = [f"{m} {s} ≤ {format_value(v, METRICS[m].unit)}" for m, stats in (config.get("slo") or {}).items()
              for s, v in stats.items()]
    return "; ".join(limits + [f"error rate ≤ {format_percent(config.get('max_error_rate', 0.0))}"])


def _study_setup(summary: StudySummary) -> list[tuple[str, object]]:
    """The header's key/value rows: engine, space, objective, SLOs, workload."""
    config = summary.config
    engine = config.get("engine") or {}
    search = config.get("search") or {}
    rows = [("engine", engine.get("kind")), ("model", engine.get("model")), ("search space", summary.space),
            ("objectives" if summary.multi_objective else "objective",
             "; ".join(o.expression for o in summary.objectives)),
            ("sampler", search.get("sampler", "tpe")), ("trial budget", search.get("trials")),
            ("SLOs", slo_text(config))]
    return rows + [(f"workload.{k}", v) for k, v in flatten(config.get("workload") or {})]


def render_run_report(result: dict, records: list[RequestRecord], title: str,
                      telemetry_csv: Path | None = None) -> str:
    """The bench report of one run: verdict, SLO checks, config, figures, metrics, environment; `telemetry_csv`
    (the run's telemetry.csv) adds the GPU timeline."""
    context = {
        "title": title,
        "simulated": bool(result.get("simulated")),
        "run": _run_view(result, records, None if records else "no request records: no per-request figures",
                         telemetry_csv),
    }
    return _ENV.get_template("run.html.j2").render(context)


def format_dollars(x) -> str:
    """20 -> '$20.00', 0.0123 -> '$0.0123' (3 significant digits below a dollar); None -> 'n/a'."""
    if x is None:
        return "n/a"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${format_number(x)}"


_ENV.filters["dollars"] = format_dollars


def render_capacity_report(plan: dict) -> str:
    """The capacity report of `harness plan` from its plan.json dict: max rate at SLO and its confirmation,
    sizing, latency and throughput against the offered rate, every point, config, environment, command."""
    points = sorted(plan["points"], key=lambda p: (p["role"] != "sweep", p["rate"]))
    counts = [p["counts"]["measured"] for p in points if p["state"] == "complete"]
    context = {
        "title": f"Capacity plan: {plan['name']}",
        "simulated": plan["simulated"],
        "plan": plan,
        "plan_dir": plan["dir"],
        "points": points,
        "request_counts": (min(counts), max(counts)) if counts else None,
        "latency_metrics": list(dict.fromkeys(m for p in points if p["state"] == "complete" for m in p["latency"])),
        "slo_text": slo_text(plan["config"]),
        "engine_config": flatten(plan["engine"]["config"]),
        "workload": flatten(plan["config"]["workload"]),
        "fingerprint": flatten(plan.get("fingerprint") or {}),
        "figures": {"latency": figures.latency_vs_load(plan), "throughput": figures.throughput_vs_load(plan)},
    }
    return _ENV.get_template("capacity.html.j2").render(context)
