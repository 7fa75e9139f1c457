"""The cells of an experiment (engine x workload x batch size) and their grouping by engine; no torch,
so `rooflens validate` counts cells without loading the measuring code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rooflens.config import EngineSpec, Experiment, Workload
from rooflens.results.record import CellSpec


@dataclass(frozen=True)
class Cell:
    engine: EngineSpec
    workload: Workload
    workload_index: int
    batch_size: int

    def spec(self) -> CellSpec:
        w = self.workload
        return CellSpec(
            engine=self.engine.name,
            engine_label=self.engine.display,
            engine_options=self.engine.options,
            workload=w.display,
            prompt_len=w.prompt_len,
            gen_len=w.gen_len,
            batch_size=self.batch_size,
            prompt_source=w.prompt,
        )


def expand_cells(exp: Experiment) -> list[Cell]:
    """All cells, the baseline engine's first (its greedy tokens are the quality reference)."""
    engines = sorted(exp.engines, key=lambda e: e.display != exp.baseline_label)
    return [
        Cell(engine, workload, wi, b)
        for engine in engines
        for wi, workload in enumerate(exp.workloads)
        for b in workload.batch_sizes
    ]


def cell_groups(cells: Sequence[Cell]) -> list[list[int]]:
    """Indices of ``cells`` by engine, in order: one group = one engine prepared once (cells are sorted by engine)."""
    groups: list[list[int]] = []
    for i, cell in enumerate(cells):
        if groups and cells[groups[-1][-1]].engine.display == cell.engine.display:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
