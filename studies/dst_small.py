"""Small dynamic-sparse-training study on embedded real data (MNIST-1D and scikit-learn digits).

Dense vs Static, SET, RigL, GSE (uniform and GraBo samplers), MLP 512-512, ER densities, sparsity 90/95/98 %,
3 seeds; every run is a normal `sparsetrain.train` run. Results append to a JSONL file (re-running skips
finished runs), and ``--table`` prints the mean ± std markdown table for docs/results.md.

    python studies/dst_small.py --workers 2          # run everything (about 20-30 min on 2 cores)
    python studies/dst_small.py --table              # print the table
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing as mp
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).with_name("results") / "dst_small.jsonl"
DATASETS = {"mnist1d": 60.0, "digits": 60.0}  # dataset -> epochs
SPARSITIES = (0.9, 0.95, 0.98)
SEEDS = (0, 1, 2)
# one update schedule for every dynamic method, so only the growth criterion differs
SCHEDULE = {"alpha": 0.3, "delta_t": 100, "t_end": 0.75}
METHODS = {
    "static": ("static", {}),
    "set": ("set", SCHEDULE),
    "rigl": ("rigl", SCHEDULE),
    "gse-uniform": ("gse", {**SCHEDULE, "sampler": "uniform"}),
    "gse-grabo": ("gse", {**SCHEDULE, "sampler": "grabo"}),
}


def config(dataset: str, variant: str, sparsity: float | None, seed: int) -> dict:
    method, hp = ("dense", {}) if variant == "dense" else METHODS[variant]
    cfg = {
        "name": f"{dataset}-{variant}-{sparsity}-{seed}", "seed": seed, "device": "cpu",
        "data": {"name": dataset, "batch_size": 64},
        "model": {"name": "mlp", "options": {"hidden": [512, 512]}},
        "method": {"name": method},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 2.0},
        "train": {"epochs": DATASETS[dataset], "eval_every_epochs": 0.0, "log_every": 1000, "progress": False},
    }
    if method != "dense":
        cfg["sparse"] = {"sparsity": sparsity, "distribution": "er"}
        cfg["method"][method] = dict(hp)
    return cfg


def jobs() -> list[tuple[str, str, float | None, int]]:
    out = []
    for dataset, seed in itertools.product(DATASETS, SEEDS):
        out.append((dataset, "dense", None, seed))
        out += [(dataset, v, s, seed) for v in METHODS for s in SPARSITIES]
    return out


def run(job: tuple[str, str, float | None, int]) -> dict:
    import torch

    from sparsetrain.train import train

    torch.set_num_threads(1)
    dataset, variant, sparsity, seed = job
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        summary = train(config(dataset, variant, sparsity, seed), Path(tmp) / "run", progress=False)
    return {"dataset": dataset, "variant": variant, "sparsity": sparsity, "seed": seed,
            "test_accuracy": summary["test_accuracy"], "seconds": summary["time_seconds"]}


def table(rows: list[dict]) -> str:
    lines = []
    for dataset in DATASETS:
        dense = [r["test_accuracy"] for r in rows if r["dataset"] == dataset and r["variant"] == "dense"]
        lines.append(f"\n**{dataset}** (dense: {_fmt(dense)})\n")
        lines.append("| method | " + " | ".join(f"{s:.0%} sparse" for s in SPARSITIES) + " |")
        lines.append("|---|" + "---:|" * len(SPARSITIES))
        for variant in METHODS:
            cells = [_fmt([r["test_accuracy"] for r in rows if r["dataset"] == dataset and r["variant"] == variant
                           and r["sparsity"] == s]) for s in SPARSITIES]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the markdown table and exit")
    args = parser.parse_args()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    if args.table:
        print(table(rows))
        return
    done = {(r["dataset"], r["variant"], r["sparsity"], r["seed"]) for r in rows}
    todo = [j for j in jobs() if j not in done]
    RESULTS.parent.mkdir(exist_ok=True)
    print(f"{len(todo)} runs to do ({len(done)} done)")
    with mp.get_context("spawn").Pool(args.workers) as pool, RESULTS.open("a") as out:
        for i, row in enumerate(pool.imap_unordered(run, todo), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"[{i}/{len(todo)}] {row['dataset']} {row['variant']} {row['sparsity']} seed {row['seed']}: "
                  f"{row['test_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
