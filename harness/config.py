"""The experiment config file (DESIGN.md section 5): loading, validation and error messages.

Every field is validated and unknown keys are rejected; errors become `ConfigError`s naming the
file and the dotted path of the bad field (or the YAML line for syntax errors).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine_adapters import EngineConfig, adapter_kinds, get_adapter
from harness.errors import ConfigError
from harness.metrics import METRICS, OBJECTIVE_METRICS, STATISTICS, SloLimit
from workloads import CATALOG_DIR, WorkloadConfig, catalog_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSpec(_Strict):
    """Which engine, which model, and fixed engine params (the tuner overlays its knobs on these)."""

    kind: str
    model: str | None = None
    params: dict = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in adapter_kinds():
            raise ValueError(f"unknown engine kind {v!r}; known: {', '.join(adapter_kinds())}")
        return v

    @model_validator(mode="after")
    def _params_valid(self):
        try:
            self.resolve()
        except ValidationError as err:
            problems = "; ".join(f"params.{'.'.join(map(str, e['loc']))}: "
                                 f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
                                 for e in err.errors())
            raise ValueError(problems) from None
        return self

    def resolve(self, overrides: dict | None = None) -> EngineConfig:
        """The adapter's validated config: model + params + `overrides` (tuned knobs win)."""
        fields = {**self.params, **(overrides or {})}
        if self.model is not None:
            fields["model"] = self.model
        return get_adapter(self.kind).Config(**fields)


class RunnerSpec(_Strict):
    request_timeout_s: float = Field(300.0, gt=0)
    preflight: bool = True
    client_processes: int = Field(1, ge=1, description="client processes sharing the load (remote engines only)")


class ProbeSpec(_Strict):
    """Multi-fidelity: each trial is judged, while it goes on, on its run until its first `requests` were done."""

    requests: int = Field(ge=1, description="the probe is the run until the workload's first N requests (warm-up "
                                            "included) are done")
    keep_best_percent: float = Field(
        50.0, gt=0, le=100, description="a trial whose probe is not within the best this-many percent of the probes "
        "of completed trials that met every SLO is stopped (pruned); 50: the median")
    startup_trials: int = Field(4, ge=1, description="no trial is pruned until this many completed trials that met "
                                                     "every SLO have a probe")


class RepeatSpec(_Strict):
    """After the trial budget: measure the best configs again, to guard the recommendation against noise."""

    top: int = Field(ge=1, description="how many of the best configs that met every SLO are measured again")
    runs: int = Field(1, ge=1, description="extra measurements of each")


class SearchSpec(_Strict):
    space: str = Field(description="bundled space name or path to a space YAML")
    trials: int = Field(12, ge=1)
    objective: str | list[str] = Field(
        "maximize goodput_req_s", description="'maximize METRIC' / 'minimize METRIC.STAT', or a list of them "
        "(2+: multi-objective, the result is a Pareto front; the first is the primary objective)")
    trial_timeout_s: float = Field(900.0, gt=0, description="a trial running longer is killed and recorded as failed")
    sampler: Literal["tpe", "nsga2", "random", "grid"] = Field(
        "tpe", description="tpe (default, single or multi-objective), nsga2 (multi-objective genetic), or the "
                           "baselines random and grid (every point of the space once)")
    gpu_hour_cost: float | None = Field(
        None, gt=0, description="price of one GPU-hour in dollars, for the objective output_tok_per_dollar")
    seed: int = 0
    probe: ProbeSpec | None = Field(None, description="stop clearly worse trials after a short probe "
                                                      "(single objective only)")
    repeats: RepeatSpec | None = Field(None, description="extra measurements of the best configs after the budget "
                                                         "(not counted in `trials`)")

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str | list[str]) -> str | list[str]:
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("name at least one objective")
        for i, text in enumerate(texts):
            try:
                parse_objective(text)
            except ValueError as exc:
                raise ValueError(str(exc) if isinstance(v, str) else f"[{i}]: {exc}") from None
        targets = [text.split()[1] for text in texts]
        if len(set(targets)) < len(targets):
            raise ValueError(f"an objective is listed twice: {texts}")
        return v

    @model_validator(mode="after")
    def _probe_needs_one_objective(self):
        if self.probe is not None and len(self.objectives) > 1:
            raise ValueError("probe: pruning compares one objective; a multi-objective study measures every trial in "
                             "full (drop search.probe or list one objective)")
        return self

    @model_validator(mode="after")
    def _cost_is_priced(self):
        if self.gpu_hour_cost is None and any(o.metric == "output_tok_per_dollar" for o in self.objectives):
            raise ValueError("objective output_tok_per_dollar needs search.gpu_hour_cost (dollars per GPU-hour)")
        return self

    @property
    def objectives(self) -> list[Objective]:
        """The objectives in the order given; the first is the primary one."""
        return parse_objectives(self.objective)


@dataclass(frozen=True)
class Objective:
    """One objective: 'maximize goodput_req_s' -> direction, metric and statistic (None for scalars)."""

    expression: str
    direction: str  # maximize | minimize
    metric: str
    statistic: str | None

    @classmethod
    def parse(cls, expression: str) -> Objective:
        return cls(expression, *parse_objective(expression))

    @property
    def sign(self) -> int:
        """+1 to maximize, -1 to minimize: sign * value is larger when better."""
        return 1 if self.direction == "maximize" else -1

    @property
    def label(self) -> str:
        """'goodput_req_s' or 'ttft_ms p95'."""
        return f"{self.metric} {self.statistic}" if self.statistic else self.metric

    @property
    def unit(self) -> str:
        return OBJECTIVE_METRICS[self.metric].unit


def parse_objectives(objective: str | list[str]) -> list[Objective]:
    """`search.objective` as stored in a config (one expression or a list) -> its objectives, primary first."""
    return [Objective.parse(text) for text in ([objective] if isinstance(objective, str) else objective)]


def parse_objective(text: str) -> tuple[str, str, str | None]:
    """'maximize goodput_req_s' or 'minimize ttft_ms.p95' -> (direction, metric, statistic or None).

    The metric is a run metric (harness.metrics.METRICS) or a cost metric (COST_METRICS)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] not in ("maximize", "minimize"):
        raise ValueError(f"objective must be 'maximize METRIC' or 'minimize METRIC[.STAT]', got {text!r}")
    direction, target = parts
    metric, _, stat = target.partition(".")
    if metric not in OBJECTIVE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(OBJECTIVE_METRICS)}")
    if OBJECTIVE_METRICS[metric].kind == "distribution":
        if stat not in STATISTICS:
            raise ValueError(f"{metric} is a distribution: name a statistic, e.g. {metric}.p95 "
                             f"({', '.join(STATISTICS)})")
    elif stat:
        raise ValueError(f"{metric} is a single number; drop '.{stat}'")
    return direction, metric, stat or None


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    engine: EngineSpec
    workload: WorkloadConfig
    slo: dict[str, dict[str, float]] = Field(default_factory=dict)
    max_error_rate: float = Field(0.0, ge=0, le=1, description="a run failing more requests than this misses its SLO")
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    search: SearchSpec | None = None

    @field_validator("workload", mode="before")
    @classmethod
    def _catalog(cls, v, info: ValidationInfo):
        """`workload: NAME_OR_PATH` or `{use: NAME_OR_PATH, FIELD: VALUE, ...}`: a named workload, each FIELD given
        replacing that top-level field whole (see `named_workload`)."""
        config_dir = (info.context or {}).get("config_dir")
        if isinstance(v, str):
            return named_workload(v, config_dir)
        if isinstance(v, dict) and "use" in v:
            overrides = dict(v)
            use = overrides.pop("use")
            if not isinstance(use, str):
                raise ValueError(f"use: expected a bundled workload name or a workload YAML path, got {use!r}")
            if "kind" in overrides:
                raise ValueError("use: the named workload gives `kind`; give `use` or `kind`, not both")
            try:
                return {**named_workload(use, config_dir), **overrides}
            except ValueError as exc:
                raise ValueError(f"use: {exc}") from None
        return v

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: dict) -> dict:
        for metric, stats in v.items():
            if metric not in METRICS or METRICS[metric].kind != "distribution":
                known = [m for m, d in METRICS.items() if d.kind == "distribution"]
                raise ValueError(f"unknown SLO metric {metric!r}; known: {', '.join(known)}")
            for stat, limit in stats.items():
                if stat not in STATISTICS:
                    raise ValueError(f"{metric}: unknown statistic {stat!r}; known: {', '.join(STATISTICS)}")
                if limit <= 0:
                    raise ValueError(f"{metric}.{stat}: limit must be > 0")
        return v

    @model_validator(mode="after")
    def _client_processes_need_a_server(self):
        if self.runner.client_processes > 1 and not get_adapter(self.engine.kind).remote:
            raise ValueError(f"runner.client_processes > 1 needs an engine reached over the network (openai); "
                             f"the {self.engine.kind} engine runs inside the client process")
        return self

    @model_validator(mode="after")
    def _probe_fits_the_workload(self):
        probe = self.search and self.search.probe
        if probe is None:
            return self
        if probe.requests <= self.workload.warmup_requests:
            raise ValueError(f"search.probe.requests ({probe.requests}) must exceed workload.warmup_requests "
                             f"({self.workload.warmup_requests}): the probe measures the requests after the warm-up")
        total = getattr(self.workload, "requests", None)
        if total is not None and probe.requests >= total:
            raise ValueError(f"search.probe.requests ({probe.requests}) must be fewer than workload.requests ({total})")
        if self.runner.client_processes > 1:
            raise ValueError("search.probe needs runner.client_processes: 1 (the probe is taken in the client process)")
        return self

    def slo_limits(self) -> list[SloLimit]:
        return [SloLimit(m, s, float(lim)) for m, stats in self.slo.items() for s, lim in stats.items()]

    def fingerprint(self) -> str:
        """Hash of everything that defines the study except its budget, `search.trials` and `search.repeats`
        (resume must match it). An unset `search.probe` is left out, so studies made before it existed resume."""
        data = self.model_dump(mode="json")
        if data.get("search"):
            data["search"].pop("trials", None)
            data["search"].pop("repeats", None)
            if data["search"]["probe"] is None:
                del data["search"]["probe"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_yaml(path: Path) -> object:
    """Parse a YAML file; syntax errors become ConfigError with file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None


def named_workload(name_or_path: str, config_dir: Path | None = None) -> dict:
    """The fields of a bundled workload (a name without suffix, workloads/catalog/NAME.yaml) or of a workload
    YAML file (a path; a relative one is from `config_dir`, the experiment config's folder, as for
    `search.space`). Paths inside it (a dataset's `path`) stay relative to the working directory."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in catalog_names():
            raise ValueError(f"unknown bundled workload {name_or_path!r}; known: {', '.join(catalog_names())} "
                             "(or a path to a workload YAML file)")
        path = CATALOG_DIR / f"{name_or_path}.yaml"
    elif config_dir is not None and not path.is_absolute():
        path = config_dir / path
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict) or "use" in data:
        raise ValueError(f"{path}: expected a workload (a mapping with `kind` and its fields), got "
                         f"{'`use`' if isinstance(data, dict) else type(data).__name__}")
    return data


def load_config(path: Path | str) -> ExperimentConfig:
    """Read and validate an experiment config file."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_config(data, str(path), config_dir=path.parent)


def parse_config(data: dict, source: str, config_dir: Path | None = None) -> ExperimentConfig:
    """Validate a config; a workload file it names is found from `config_dir` (None: the working directory)."""
    try:
        return ExperimentConfig.model_validate(data, context={"config_dir": config_dir})
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None
