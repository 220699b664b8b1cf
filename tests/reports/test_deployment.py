"""TensorRT-LLM studies: the report's `LLM(...)` snippet (escaped) and the trtllm-serve deployment files."""
from __future__ import annotations

import os

import pytest
import yaml

from engine_adapters.trtllm_args import TrtllmKnobs, llm_api_options
from engine_adapters.trtllm_serve import SERVE_SCRIPT, SERVE_YAML, TrtllmServeConfig
from harness.objectives import objective_value
from harness.store import write_json
from harness.summary import TrialRow
from reports import render_study_report
from reports.recommended import write_deployment
from tests.engine_adapters.conftest import fake_trtllm  # noqa: F401  (the fake tensorrt_llm, as a fixture)
from tests.reports.test_reports import (
    OBJECTIVE,
    XSS,
    make_records,
    make_result,
    make_summary,
)

KNOBS = {"max_batch_size": 48, "max_num_tokens": 3072, "kv_cache_fraction": 0.8}


@pytest.fixture
def summary(tmp_path):
    """One completed trtllm_serve trial, its model name a script tag."""
    config = TrtllmServeConfig(model=XSS, **KNOBS).model_dump(mode="json")
    result = make_result(make_records(), config, simulated=False)
    result["engine"]["kind"] = "trtllm_serve"
    trial_dir = tmp_path / "trials" / "0"
    write_json(trial_dir / "result.json", result)
    return make_summary([TrialRow(0, "complete", KNOBS, [objective_value(result, OBJECTIVE)], None, 3.0, trial_dir,
                                  result)])


def test_study_report_shows_the_llm_snippet_escaped(summary):
    html = render_study_report(summary)
    assert "from tensorrt_llm import LLM" in html and "llm = LLM(" in html
    assert "max_batch_size=48," in html and "KvCacheConfig(free_gpu_memory_fraction=0.8" in html
    assert "model=&#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in html
    assert XSS not in html


def test_no_snippet_for_other_engines(summary):
    summary.best.result["engine"]["kind"] = "mock"
    assert "llm = LLM(" not in render_study_report(summary)


def test_deployment_files_hold_the_recommended_knobs(summary, tmp_path):
    paths = write_deployment(summary, tmp_path)
    assert [p.name for p in paths] == [SERVE_YAML, SERVE_SCRIPT]
    assert yaml.safe_load((tmp_path / SERVE_YAML).read_text()) == llm_api_options(TrtllmKnobs(model=XSS, **KNOBS))
    script = (tmp_path / SERVE_SCRIPT).read_text()
    assert os.access(tmp_path / SERVE_SCRIPT, os.X_OK) and "--max_batch_size 48 " in script
    assert "study 'demo', trial 0" in script


def test_no_deployment_files_without_a_best_trial(summary, tmp_path):
    summary.best = None
    assert write_deployment(summary, tmp_path) == []
    assert not (tmp_path / SERVE_YAML).exists()


@pytest.mark.usefixtures("fake_trtllm")
def test_tensorrt_deployment_carries_what_the_trial_measured(summary, tmp_path):
    """trtllm-serve's own scheduler_config turns on dynamic batch-size tuning and ours replaces it whole, so the
    TensorRT-backend YAML carries the same tuning, and the CUDA graph cache, that the measured LLM(...) got."""
    import tensorrt_llm

    from engine_adapters.trtllm_args import DYNAMIC_BATCH, llm_kwargs

    summary.best.result["engine"]["config"]["backend"] = "tensorrt"
    write_deployment(summary, tmp_path)
    options = yaml.safe_load((tmp_path / SERVE_YAML).read_text())
    assert options["scheduler_config"]["dynamic_batch_config"] == DYNAMIC_BATCH
    assert options["extended_runtime_perf_knob_config"] == {"cuda_graph_mode": True, "cuda_graph_cache_size": 1000}
    measured = llm_kwargs(TrtllmKnobs(model=XSS, backend="tensorrt", **KNOBS), tensorrt_llm)
    assert tensorrt_llm.llmapi.TrtLlmArgs(model=XSS, **options) == tensorrt_llm.llmapi.TrtLlmArgs(**measured)
