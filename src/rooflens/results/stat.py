"""One engine statistic as a record stores it (engines produce them, records and reports read them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EngineStat(BaseModel):
    """One engine statistic (acceptance rate, exit layer, bits per step, ...)."""

    model_config = ConfigDict(extra="forbid")

    value: float | int | str | list[float] | list[int]
    unit: str = ""
    description: str = ""
