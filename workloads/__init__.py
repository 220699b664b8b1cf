"""Traffic generation: what requests look like and when they are sent. Imports no engine."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from workloads.arrival import ArrivalProcess, Closed
from workloads.request import RequestSpec, TokenSpace
from workloads.synthetic import Seeds, SyntheticWorkload
from workloads.trtllm_dataset import TrtllmDatasetWorkload

# The union of workload kinds; later kinds (dataset, trace) join it here.
WorkloadConfig = Annotated[Union[SyntheticWorkload, TrtllmDatasetWorkload], Field(discriminator="kind")]

CATALOG_DIR = Path(__file__).parent / "catalog"


def catalog_names() -> list[str]:
    """Names of the bundled workloads (usable as `workload: {use: NAME}`)."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


__all__ = ["ArrivalProcess", "Closed", "RequestSpec", "Seeds", "SyntheticWorkload", "TokenSpace",
           "WorkloadConfig", "CATALOG_DIR", "catalog_names"]
