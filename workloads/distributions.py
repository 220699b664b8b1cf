"""Token-length distributions, clipped to a valid range, sampled with a caller-given RNG."""
from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = Field(1, ge=1, description="lengths below this are clipped up to it")
    max: int | None = Field(None, ge=1, description="lengths above this are clipped down to it")

    @model_validator(mode="after")
    def _check_range(self):
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return `n` integer lengths, rounded and clipped to [min, max]."""
        raw = np.rint(self._raw(rng, n))
        return np.clip(raw, self.min, self.max if self.max is not None else None).astype(np.int64)

    def _raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def upper_bound(self) -> int | None:
        """Largest length this distribution can produce, or None when unbounded."""
        return self.max


class Fixed(_Dist):
    dist: Literal["fixed"]
    value: int = Field(ge=1)

    def _raw(self, rng, n):
        return np.full(n, self.value, dtype=float)

    def upper_bound(self):
        return self.value if self.max is None else min(self.value, self.max)


class Uniform(_Dist):
    dist: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _check_bounds(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def _raw(self, rng, n):
        return rng.integers(self.low, self.high + 1, size=n).astype(float)

    def upper_bound(self):
        return self.high if self.max is None else min(self.high, self.max)


class Normal(_Dist):
    dist: Literal["normal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)

    def _raw(self, rng, n):
        return rng.normal(self.mean, self.std, size=n)


class LogNormal(_Dist):
    """Parameterised by the mean and standard deviation of the lengths themselves (not of the log)."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    std: float = Field(gt=0)

    def _raw(self, rng, n):
        sigma2 = np.log1p((self.std / self.mean) ** 2)
        mu = np.log(self.mean) - sigma2 / 2
        return rng.lognormal(mu, np.sqrt(sigma2), size=n)


LengthDist = Annotated[Union[Fixed, Uniform, Normal, LogNormal], Field(discriminator="dist")]
