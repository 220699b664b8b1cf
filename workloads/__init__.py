"""Traffic generation: what requests look like and when they are sent. Imports no engine."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from workloads.arrival import ArrivalProcess, Closed
from workloads.dataset import DatasetWorkload
from workloads.request import RequestSpec, Tokenizer, TokenSpace
from workloads.shared_prefix import SharedPrefixWorkload
from workloads.synthetic import Seeds, SyntheticWorkload
from workloads.trace import TraceWorkload
from workloads.trtllm_dataset import TrtllmDatasetWorkload

# The union of workload kinds. Each has `arrival` (Closed, or open loop with `max_concurrency`),
# warmup/cooldown_requests, max_sequence_tokens(), longest_prompt_tokens(), generate(token_space) and, after
# generate, source_profile().
WorkloadConfig = Annotated[Union[SyntheticWorkload, SharedPrefixWorkload, TrtllmDatasetWorkload, TraceWorkload,
                                 DatasetWorkload], Field(discriminator="kind")]

CATALOG_DIR = Path(__file__).parent / "catalog"


def catalog_names() -> list[str]:
    """Names of the bundled workloads: `workload: NAME`, or `workload: {use: NAME, FIELD: VALUE, ...}` to replace
    some of its fields (harness.config.named_workload)."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


__all__ = ["ArrivalProcess", "Closed", "RequestSpec", "Seeds", "SyntheticWorkload", "TokenSpace", "Tokenizer",
           "WorkloadConfig", "CATALOG_DIR", "catalog_names"]
