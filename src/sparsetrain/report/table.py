"""A markdown table comparing runs (one row per run)."""
from __future__ import annotations

from ..accounting import format_bytes
from .runs import Run


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def run_row(run: Run) -> dict[str, str]:
    """The table cells of one run; a run without summary.json (still running, or killed) is marked."""
    cfg, s = run.config, run.summary or {}
    method = cfg.get("method", {}).get("name", "?")
    evals = run.of_kind("eval")
    last_eval = evals[-1] if evals else {}
    totals = (s.get("account") or {}).get("totals", {})
    trains = [r for r in run.records if r.get("kind") in ("train", "init")]
    last = trains[-1] if trains else {}
    sparsity = totals.get("sparsity", last.get("sparsity"))
    active = totals.get("active", last.get("active_weights"))
    stored = None
    if totals:
        stored = totals.get("value_bytes", 0) + totals.get("index_bytes", 0)
    return {
        "run": run.label + ("" if run.summary else " (unfinished)"),
        "model": str(cfg.get("model", {}).get("name", "?")),
        "data": str(cfg.get("data", {}).get("name", "?")),
        "method": str(method),
        "sparsity %": _pct(sparsity),
        "active weights": "–" if active is None else f"{active:,}",
        "sparse-layer memory": "–" if stored is None else format_bytes(stored),
        "test acc %": _pct(s.get("test_accuracy", last_eval.get("accuracy"))),
        "best acc %": _pct(s.get("best_test_accuracy")),
        "steps": str(s.get("steps", last.get("step", "–"))),
        "updates": str(s.get("topology_updates", last.get("topology_updates", "–"))),
        "time s": "–" if "time_seconds" not in s else f"{s['time_seconds']:.1f}",
        "peak RSS": "–" if "peak_rss_bytes" not in s else format_bytes(s["peak_rss_bytes"]),
    }


def markdown_table(runs: list[Run]) -> str:
    """GitHub-flavoured markdown; numbers right-aligned. Sparsity and weights count all weight layers (sparse and dense)."""
    rows = [run_row(r) for r in runs]
    header = list(rows[0])
    align = ["---" if h in ("run", "model", "data", "method") else "---:" for h in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    lines.append("")
    lines.append("Sparsity, active weights and sparse-layer memory (values + indices) count the sparsified "
                 "layers only; peak RSS is the process's resident-memory peak (ru_maxrss).")
    return "\n".join(lines) + "\n"
