"""One engine statistic as a record stores it (engines produce them, records and reports read them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EngineStat(BaseModel):
    """One engine statistic (acceptance rate, exit layer, bits per step, ...)."""

    model_config = ConfigDict(extra="forbid")

    value: float | int | str | list[float] | list[int]
    unit: str = ""
    description: str = ""


class Deviation(BaseModel):
    """One way a run departs from the reference setup of its technique's paper."""

    model_config = ConfigDict(extra="forbid")

    setting: str  # the option or component
    here: str  # what this run does
    reference: str  # what the paper's reference setup does
    effect: str = ""  # what the difference does to the results, where known


class Fidelity(BaseModel):
    """How a technique engine's run relates to its paper: the reference setup and each deviation from it. With no
    deviation the run is a reproduction of the setup (the model, data and hardware aside); with any, it is an
    adaptation, and its numbers are not the paper's."""

    model_config = ConfigDict(extra="forbid")

    technique: str
    reference: str
    deviations: list[Deviation] = []

    @property
    def reproduces(self) -> bool:
        return not self.deviations
