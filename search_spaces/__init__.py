"""What the tuner may change, per engine: YAML spaces, their Optuna distributions and validity rules.

A space file:

    name: transformers-default
    engine: transformers          # or a list of kinds sharing these knobs
    params:
      max_batch_size: {type: int, low: 1, high: 32, log: true}
      dtype: {type: categorical, choices: [float32, bfloat16]}
    rules:
      - max_num_tokens >= max_batch_size
    warm_start:                  # measured first, before the sampler proposes anything
      - engine-heuristic         # the engine adapter's own sizing rule (trtllm-bench's for TensorRT-LLM)
      - {max_batch_size: 8}      # a known-good point; params left out are sampled
    memory_knobs: [max_batch_size]   # numeric knobs whose growth can only grow memory use
    rebuild:                     # knobs baked into a built engine (engines that build one)
      knobs: [max_batch_size]
      when: {backend: tensorrt}  # engine config values under which the engine is built and cached

Rules are arithmetic comparisons over param names, numbers and `gpus` (the machine's GPU count, at
least 1: a machine without GPUs still runs one-device configs, or drives a server that runs elsewhere);
a sampled point breaking a rule is infeasible and never launched.

Memory knobs define the out-of-memory region of a point that ran out of memory (`in_oom_region`):
every point at least as large in each memory knob, and equal in every other param, needs at least
as much memory, so the tuner does not launch it. Knobs that move memory both ways, or whose effect
depends on others (quantization, tensor parallelism), are not memory knobs: they must be equal.

Rebuild knobs say what a trial costs to start (`build_key`): an engine that is built from the
checkpoint and cached by its build knobs (TensorRT-LLM's TensorRT backend with its engine cache)
is built anew for a combination of rebuild-knob values not launched before, and only restarted
from the cache for one that was; the other knobs never need a build.

Imports neither the harness nor any engine.
"""
from __future__ import annotations

import ast
import itertools
import math
import operator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPACES_DIR = Path(__file__).parent
#: Rules over more combinations of categorical choices than this are not used to narrow a space (`for_gpus`).
_MAX_RULE_COMBINATIONS = 100_000


class SpaceError(ValueError):
    """A search space file is invalid; the message names the file and field."""


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RangeParam(_Param):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1

    def suggest(self, trial, name):
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def grid(self, name):
        return list(range(self.low, self.high + 1, self.step))

    def nearest(self, value):
        on_grid = self.low + round((value - self.low) / self.step) * self.step
        return int(min(max(on_grid, self.low), self.high - (self.high - self.low) % self.step))


class FloatParam(_RangeParam):
    type: Literal["float"]
    step: float | None = None

    def suggest(self, trial, name):
        """A value on the space; with a step, rounded as the grid is (Optuna returns low + k * step in binary floating
        point, e.g. 0.30000000000000004, which would otherwise reach the engine config and recommended.yaml)."""
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return value if self.step is None else round(value, 12)

    def grid(self, name):
        if self.step is None:
            raise ValueError(f"float param {name!r} needs a step for a grid search")
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def nearest(self, value):
        if self.step is not None:
            value = self.low + round((value - self.low) / self.step) * self.step
        return float(min(max(value, self.low), self.high))


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Union[str, int, float, bool]] = Field(min_length=1)

    def suggest(self, trial, name):
        return trial.suggest_categorical(name, self.choices)

    def grid(self, name):
        return list(self.choices)

    def nearest(self, value):
        """The choice equal to `value`, else (numbers) the closest numeric choice; None if there is none."""
        if value in self.choices:
            return value
        numeric = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return min(numeric, key=lambda c: abs(c - value)) if numeric and isinstance(value, (int, float)) else None


Param = Annotated[Union[IntParam, FloatParam, CategoricalParam], Field(discriminator="type")]

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}


@dataclass(frozen=True)
class Rule:
    """A comparison such as `tp * pp <= gpus`, parsed once and evaluated safely (no eval)."""

    text: str
    tree: ast.Expression

    @property
    def names(self) -> set[str]:
        """The names the rule reads (params and `gpus`)."""
        return {node.id for node in ast.walk(self.tree) if isinstance(node, ast.Name)}

    @classmethod
    def parse(cls, text: str, names: set[str]) -> "Rule":
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"rule {text!r}: {exc.msg}") from None
        if not isinstance(tree.body, ast.Compare):
            raise ValueError(f"rule {text!r}: must be a comparison such as 'a * b <= gpus'")
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in names:
                raise ValueError(f"rule {text!r}: unknown name {node.id!r}; known: {', '.join(sorted(names))}")
            if not isinstance(node, (ast.Expression, ast.Compare, ast.BinOp, ast.Name, ast.Constant, ast.Load,
                                     *_OPS)):
                raise ValueError(f"rule {text!r}: only + - * / and comparisons are allowed")
        return cls(text, tree)

    def holds(self, values: dict[str, Any]) -> bool:
        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.Name):
                return values[node.id]
            if isinstance(node, ast.BinOp):
                return _OPS[type(node.op)](ev(node.left), ev(node.right))
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if not _OPS[type(op)](left, right):
                    return False
                left = right
            return True
        return bool(ev(self.tree))


class _Rebuild(BaseModel):
    model_config = ConfigDict(extra="forbid")
    knobs: list[str] = Field(min_length=1, description="params baked into a built engine")
    when: dict[str, Any] = Field(default_factory=dict, description="engine config values under which the engine "
                                                                    "is built (and cached); left out: always")


class _SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    engine: str | list[str] = Field(description="the engine kind(s) whose knobs these are")
    description: str = ""
    params: dict[str, Param] = Field(min_length=1)
    rules: list[str] = Field(default_factory=list)
    warm_start: list[Union[Literal["engine-heuristic"], dict[str, Any]]] = Field(default_factory=list)
    memory_knobs: list[str] = Field(default_factory=list, description="numeric params whose growth can only grow "
                                    "memory use (see the module docstring)")
    rebuild: _Rebuild | None = None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    engines: tuple[str, ...]
    params: dict[str, Any]
    rules: tuple[Rule, ...]
    source: str
    warm_start: tuple[str | dict[str, Any], ...] = ()
    memory_knobs: tuple[str, ...] = ()
    rebuild_knobs: tuple[str, ...] = ()
    rebuild_when: tuple[tuple[str, Any], ...] = ()

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every param on an Optuna trial (ask interface); returns {name: value}."""
        return {name: p.suggest(trial, name) for name, p in self.params.items()}

    def grid(self) -> dict[str, list]:
        """Every value of every param, for a grid search; raises ValueError for a float param without a step."""
        return {name: p.grid(name) for name, p in self.params.items()}

    def snap(self, point: dict[str, Any]) -> dict[str, Any]:
        """`point` moved onto the space: each known param to its nearest allowed value (clipped to the
        range, onto the step grid, or the closest numeric choice); unknown params are dropped."""
        snapped = {name: self.params[name].nearest(v) for name, v in point.items() if name in self.params}
        return {name: v for name, v in snapped.items() if v is not None}

    def broken_rule(self, values: dict[str, Any], gpus: int) -> str | None:
        """The first rule `values` break (its text), or None when all hold."""
        env = {**values, "gpus": gpus}
        return next((r.text for r in self.rules if not r.holds(env)), None)

    def for_gpus(self, gpus: int) -> tuple["SearchSpace", list[str]]:
        """The space as a machine with `gpus` GPUs can run it, and a note per narrowed param.

        A categorical choice is dropped when no combination of choices of the rule's params holds with it, for
        each rule over categorical params only (e.g. `tensor_parallel_size * pipeline_parallel_size <= gpus`
        on one GPU keeps tp 1 and pp 1): the sampler never proposes what could not launch here, which matters
        because TPE samples each param on its own and cannot learn a joint limit from rejected points. Rules
        over ranges are left to the check before launch. Raises SpaceError when a param has no choice left."""
        params = dict(self.params)
        changed = True
        while changed:  # a param narrowed by one rule may narrow another through a second rule
            changed = False
            for rule in self.rules:
                names = sorted(rule.names - {"gpus"})
                if not names or not all(isinstance(params.get(n), CategoricalParam) for n in names) or \
                        math.prod(len(params[n].choices) for n in names) > _MAX_RULE_COMBINATIONS:
                    continue
                kept = {n: set() for n in names}
                for combo in itertools.product(*(params[n].choices for n in names)):
                    if rule.holds({**dict(zip(names, combo)), "gpus": gpus}):
                        for n, v in zip(names, combo):
                            kept[n].add(v)
                for n in names:
                    choices = [c for c in params[n].choices if c in kept[n]]
                    if not choices:
                        raise SpaceError(f"{self.source}: no value of {n} satisfies the rule {rule.text!r} with "
                                         f"gpus = {gpus}")
                    if len(choices) < len(params[n].choices):
                        params[n] = CategoricalParam(type="categorical", choices=choices)
                        changed = True
        notes = [f"{n}: {', '.join(map(str, p.choices))} of {', '.join(map(str, self.params[n].choices))} "
                 f"(the others break a rule with {gpus} GPU{'s' if gpus != 1 else ''})"
                 for n, p in params.items() if p is not self.params[n]]
        return replace(self, params=params), notes

    def in_oom_region(self, point: dict[str, Any], oom_point: dict[str, Any]) -> bool:
        """Whether `point` needs at least the memory of `oom_point`, a point that ran out of memory: the same
        params, each memory knob at least as large, every other param equal. With no memory knobs declared,
        only `oom_point` itself."""
        if point.keys() != oom_point.keys():
            return False
        return all(point[k] >= oom_point[k] if k in self.memory_knobs else point[k] == oom_point[k] for k in point)

    def build_key(self, point: dict[str, Any], engine_config: dict[str, Any]) -> tuple | None:
        """The rebuild knobs' values of `point`, whose engine config (tuned knobs overlaid) is `engine_config`:
        equal keys share a built engine. None when that engine builds nothing: no rebuild knobs, or `when` does not
        hold (a field it names is missing or differs)."""
        missing = object()
        if not self.rebuild_knobs or any(engine_config.get(k, missing) != v for k, v in self.rebuild_when):
            return None
        return tuple((k, point.get(k)) for k in self.rebuild_knobs)


def bundled_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str, base_dir: Path | None = None) -> SearchSpace:
    """Load a bundled space by name, or a YAML file by path (relative to `base_dir` if given)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SpaceError(f"unknown search space {name_or_path!r}; bundled: {', '.join(bundled_spaces())}")
    elif base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: invalid YAML: {exc}") from None
    try:
        spec = _SpaceFile.model_validate(data)
    except ValidationError as err:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise SpaceError(f"{path}: invalid search space\n  " + "\n  ".join(lines)) from None
    names = set(spec.params) | {"gpus"}
    try:
        rules = tuple(Rule.parse(r, names) for r in spec.rules)
    except ValueError as exc:
        raise SpaceError(f"{path}: rules: {exc}") from None
    unknown = sorted({k for p in spec.warm_start if isinstance(p, dict) for k in p} - set(spec.params))
    if unknown:
        raise SpaceError(f"{path}: warm_start: unknown params {', '.join(unknown)}; known: {', '.join(spec.params)}")
    for name in spec.memory_knobs:
        param = spec.params.get(name)
        if param is None:
            raise SpaceError(f"{path}: memory_knobs: {name!r} is not a param; known: {', '.join(spec.params)}")
        if isinstance(param, CategoricalParam) and not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) for c in param.choices):
            raise SpaceError(f"{path}: memory_knobs: {name!r} has non-numeric choices; a memory knob is a number")
    unknown = sorted(set(spec.rebuild.knobs if spec.rebuild else ()) - set(spec.params))
    if unknown:
        raise SpaceError(f"{path}: rebuild.knobs: unknown params {', '.join(unknown)}; known: {', '.join(spec.params)}")
    engines = (spec.engine,) if isinstance(spec.engine, str) else tuple(spec.engine)
    return SearchSpace(spec.name, engines, dict(spec.params), rules, str(path), tuple(spec.warm_start),
                       tuple(spec.memory_knobs), tuple(spec.rebuild.knobs) if spec.rebuild else (),
                       tuple(spec.rebuild.when.items()) if spec.rebuild else ())
