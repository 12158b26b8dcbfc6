"""What every benchmark prints the same way: its rows, the aligned table, the legend."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a table: operations per second of the bus case and of its baseline."""

    case: str
    bus_rate: float
    baseline_rate: float
    baseline: str

    @property
    def ratio(self) -> float:
        return self.bus_rate / self.baseline_rate

    def cells(self) -> tuple[str, ...]:
        """case, bus, baseline, bus/base, bus us/op, base us/op, base."""
        return (self.case, rate_text(self.bus_rate), rate_text(self.baseline_rate),
                f"{self.ratio:.3f}", micros_text(self.bus_rate),
                micros_text(self.baseline_rate), self.baseline)


HEADER = ("case", "bus", "baseline", "bus/base", "bus us/op", "base us/op", "base")


def rate_text(value: float) -> str:
    return f"{value:,.0f}/s"


def micros_text(value: float) -> str:
    return f"{1e6 / value:,.1f}"


def format_table(header: Sequence[str], body: Sequence[Sequence[str]],
                 left: Sequence[int] = (0,)) -> list[str]:
    """Aligned columns (numbers to the right, `left` columns to the left), a rule under the
    header, trailing spaces trimmed."""
    table = [tuple(header), *(tuple(line) for line in body)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for n, line in enumerate(table):
        cells = [cell.ljust(width) if i in left else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(line, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths if width).rstrip())
    return lines


def legend(baselines: Mapping[str, str]) -> list[str]:
    return ["", "baselines (bus/base = bus rate / baseline rate; 1.0 would be free):",
            *(f"  {key}  {text}" for key, text in baselines.items())]
