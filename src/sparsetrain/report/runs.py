"""Read a finished (or running) run folder: config.yaml, metrics.jsonl, summary.json."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..train.metrics import read_jsonl


@dataclass
class Run:
    """One run folder's outputs. ``records`` are the metrics.jsonl lines in order."""

    path: Path
    config: dict
    records: list[dict]
    summary: dict | None = None
    label: str = ""
    extra: dict = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]


def load_run(path: str | Path) -> Run:
    """Load a run folder; it must at least hold metrics.jsonl."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run folder {str(path)!r} does not exist")
    if not (path / "metrics.jsonl").is_file():
        raise ConfigError(f"run folder {str(path)!r} has no metrics.jsonl (is it a sparsetrain run folder?)")
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return Run(path=path, config=config or {}, records=read_jsonl(path / "metrics.jsonl"), summary=summary)


def label_runs(runs: list[Run]) -> None:
    """Legend labels: the folder names, made unique by their parent when two folders share a name."""
    names = [r.path.name for r in runs]
    for run in runs:
        clash = names.count(run.path.name) > 1
        run.label = f"{run.path.parent.name}/{run.path.name}" if clash else run.path.name
