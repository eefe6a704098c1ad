"""Reports over run folders: PNG plots and a markdown comparison table."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .plots import plot_curves, plot_density, plot_turnover
from .runs import Run, label_runs, load_run
from .table import markdown_table


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """Write curves.png, density.png, turnover.png and table.md for the runs; returns the written paths.

    ``out`` defaults to RUN_DIR/report for a single run and ./report for several.
    """
    runs = [load_run(p) for p in run_dirs]
    label_runs(runs)
    out = Path(out) if out is not None else (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_curves(runs, out / "curves.png"), plot_density(runs, out / "density.png"),
               plot_turnover(runs, out / "turnover.png")]
    table = out / "table.md"
    table.write_text(markdown_table(runs))
    written.append(table)
    return written


__all__ = ["write_report", "load_run", "Run", "markdown_table", "plot_curves", "plot_density", "plot_turnover"]
