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


def cell_slices(indices: Sequence[int], cells: Sequence[Cell]) -> list[list[int]]:
    """``indices`` by workload and batch size (first-seen order), each slice in the given (engine) order: the
    cells measured side by side in interleaved rounds."""
    slices: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        slices.setdefault((cells[i].workload_index, cells[i].batch_size), []).append(i)
    return list(slices.values())


def last_cell_of_engines(indices: Sequence[int], cells: Sequence[Cell]) -> dict[str, int]:
    """Each engine's last cell among ``indices`` (by engine label): its engine can be freed after that cell."""
    return {cells[i].engine.display: i for i in indices}
