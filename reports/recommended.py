"""The recommended config (`recommended.yaml`): the best trial's full engine config, ready to paste.

The `engine:` block is the exact resolved engine config the best trial ran (`kind`, `model`, and
every other field as `params`), so pasting it into an experiment config and running
`harness bench` reruns that configuration. Alongside: what it was tuned for and what it measured, why
it was chosen, how sure it is that it beats the runner-up, and for several objectives the Pareto front.
For TensorRT-LLM studies, `write_deployment` adds `trtllm-serve.yaml` (`--extra_llm_api_options`)
and `trtllm-serve.sh` running trtllm-serve with the same config.
"""
from __future__ import annotations

from pathlib import Path

from engine_adapters.trtllm_serve import deployment_files
from harness.store import write_text_atomic, write_yaml
from harness.summary import StudySummary
from reports.results import key_metrics, slo_margins


def recommended_config(summary: StudySummary) -> dict | None:
    """The recommended.yaml document for `summary.best`, or None when no trial met the SLOs."""
    best = summary.best
    if best is None:
        return None
    result = best.result
    params = dict(result["engine"]["config"])
    model = params.pop("model", None)
    simulated = bool(result.get("simulated"))
    note = (f"Recommended engine config from study '{summary.name}', trial {best.number} ({_values(summary)}), "
            "chosen among the trials that met every SLO. Paste `engine:` into an experiment config and run "
            "`harness bench` to reproduce.")
    if simulated:
        note += " SIMULATED engine: these numbers describe a service model, not hardware."
    confidence = summary.confidence
    doc = {
        "note": note,
        "simulated": simulated,
        "engine": {"kind": result["engine"]["kind"], "model": model, "params": params},
        "objective": {"expression": summary.objective, "direction": summary.direction, "metric": summary.metric,
                      "value": best.value},
        "choice": summary.choice,
        "confidence_vs_runner_up": None if confidence is None else {
            "runner_up_trial": confidence.runner_up, "probability": confidence.probability,
            "method": confidence.method},
        "measured": {**key_metrics(result), "counts": result["counts"]},
        "slo_margins": slo_margins(result),
        "workload": result["workload"],
        "fingerprint": result["fingerprint"],
        "trial": {"study": summary.name, "number": best.number, "dir": str(best.dir),
                  "started_at": result.get("started_at"), "finished_at": result.get("finished_at")},
    }
    if summary.multi_objective:
        doc["objectives"] = [{"expression": o.expression, "value": v} for o, v in zip(summary.objectives, best.values)]
        doc["pareto_front"] = [{"trial": t.number, "values": t.values, "params": t.params} for t in summary.front]
    return doc


def _values(summary: StudySummary) -> str:
    """'maximize goodput_req_s = 12.5, minimize ttft_ms.p95 = 210' for the best trial."""
    return ", ".join(f"{o.expression} = {v:.6g}" for o, v in zip(summary.objectives, summary.best.values))


def write_recommended(summary: StudySummary, path: Path | str) -> bool:
    """Write recommended.yaml atomically; write nothing and return False when there is no best trial."""
    doc = recommended_config(summary)
    if doc is None:
        return False
    write_yaml(Path(path), doc)
    return True


def write_deployment(summary: StudySummary, directory: Path | str) -> list[Path]:
    """Write the deployment files of `summary.best` into `directory` atomically (trtllm-serve's for
    TensorRT-LLM; none for other engines or without a best trial); return their paths."""
    best = summary.best
    if best is None:
        return []
    engine = best.result["engine"]
    header = (f"trtllm-serve with the recommended config of harness study '{summary.name}', trial {best.number} "
              f"({_values(summary)}).")
    paths = []
    for name, text in deployment_files(engine["kind"], engine["config"], header).items():
        path = Path(directory) / name
        write_text_atomic(path, text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        paths.append(path)
    return paths
