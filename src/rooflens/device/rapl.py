"""The CPU packages' RAPL energy counters in the Linux powercap tree (``intel-rapl:N`` / ``amd-rapl:N``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rooflens.text import first_line

#: Root of the Linux powercap tree.
POWERCAP_ROOT = Path("/sys/class/powercap")

_RAPL_ZONE_RE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")
_PACKAGE_NAME_RE = re.compile(r"^package-(\d+)$")


@dataclass(frozen=True)
class RaplZone:
    """One CPU package's counter: ``energy_uj`` under ``path``, wrapping at ``max_range_uj``."""

    path: Path
    label: str  # the package number
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


def _candidates(entries: list[Path]) -> list[tuple[int, Path]]:
    """Top-level zones only (not ``intel-rapl:0:0`` subzones nor ``intel-rapl-mmio``), intel-rapl first."""
    found: list[tuple[str, int, Path]] = []
    for entry in entries:
        m = _RAPL_ZONE_RE.match(entry.name)
        if m:
            found.append((m.group(1), int(m.group(2)), entry))
    found.sort(key=lambda c: (c[0] != "intel-rapl", c[1]))
    return [(index, path) for _, index, path in found]


def _package_zone(path: Path, index: int, zone_name: str) -> RaplZone:
    """The zone at ``path``, read once; raises OSError / ValueError when it cannot be read."""
    max_range = int((path / "max_energy_range_uj").read_text().strip())
    m = _PACKAGE_NAME_RE.match(zone_name)
    zone = RaplZone(path=path, label=m.group(1) if m else str(index), max_range_uj=max_range)
    zone.read_uj()
    return zone


def discover_rapl(root: Path = POWERCAP_ROOT) -> tuple[list[RaplZone], str | None]:
    """The readable package zones under ``root`` (each package once), else ``([], why not)``."""
    prefix = f"no readable RAPL under {root}"
    try:
        entries = sorted(Path(root).iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return [], f"{prefix}: directory does not exist"
    except OSError as exc:
        return [], f"{prefix}: {first_line(exc)}"
    candidates = _candidates(entries)
    if not candidates:
        return [], f"{prefix}: no intel-rapl:N / amd-rapl:N zones"

    zones: list[RaplZone] = []
    seen_names: set[str] = set()
    problems: list[str] = []
    for index, path in candidates:
        try:
            zone_name = (path / "name").read_text().strip()
        except OSError as exc:
            problems.append(f"{path.name}/name: {first_line(exc)}")
            continue
        if not zone_name.startswith("package") or zone_name in seen_names:  # seen: intel-rapl and amd-rapl
            continue
        try:
            zone = _package_zone(path, index, zone_name)
        except PermissionError as exc:
            problems.append(f"{path.name}: {first_line(exc)} (energy_uj is root-only since Linux 5.10)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: {first_line(exc)}")
            continue
        if zone.max_range_uj <= 0:
            problems.append(f"{path.name}: max_energy_range_uj is {zone.max_range_uj}")
            continue
        seen_names.add(zone_name)
        zones.append(zone)
    if zones:
        return zones, None
    if problems:
        return [], f"{prefix}: " + "; ".join(problems)
    return [], f"{prefix}: no zone named package*"
