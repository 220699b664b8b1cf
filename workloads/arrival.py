"""Arrival processes: when each request is sent.

Open-loop processes return send offsets (seconds from the start of the run) that do not depend
on how fast the engine answers; the closed-loop process returns None offsets and a concurrency.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Arrival(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def offsets(self, rng: np.random.Generator, n: int) -> np.ndarray | None:
        """Send offsets in seconds for `n` requests (non-decreasing, first at 0), or None for closed loop."""
        raise NotImplementedError


class _OpenLoop(_Arrival):
    rate: float = Field(gt=0, description="mean requests per second")
    max_concurrency: int | None = Field(
        None, ge=1, description="client-side cap on requests in flight; waiting counts as queue_ms")

    def offsets(self, rng, n):
        gaps = self._gaps(rng, n - 1)
        return np.concatenate([[0.0], np.cumsum(gaps)])

    def _gaps(self, rng, n):
        raise NotImplementedError


class Poisson(_OpenLoop):
    process: Literal["poisson"]

    def _gaps(self, rng, n):
        return rng.exponential(1.0 / self.rate, size=n)


class Gamma(_OpenLoop):
    """Gamma inter-arrival gaps with the given mean rate; `cv` > 1 is burstier than Poisson (cv = 1)."""

    process: Literal["gamma"]
    cv: float = Field(gt=0, description="coefficient of variation of the gaps")

    def _gaps(self, rng, n):
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, (1.0 / self.rate) / shape, size=n)


class Constant(_OpenLoop):
    process: Literal["constant"]

    def _gaps(self, rng, n):
        return np.full(n, 1.0 / self.rate)


class Closed(_Arrival):
    """A fixed number of clients, each sending its next request when the previous one ends."""

    process: Literal["closed"]
    concurrency: int = Field(ge=1)
    ramp_up_s: float = Field(0.0, ge=0, description="clients start evenly spread over this time (0: all at once)")

    def offsets(self, rng, n):
        return None


ArrivalProcess = Annotated[Union[Poisson, Gamma, Constant, Closed], Field(discriminator="process")]
