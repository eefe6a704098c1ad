"""DynaDiag's diagonal layer against an unstructured SparseLinear of the same active count and a dense
nn.Linear: forward + backward of one B = 128 batch (input, value and α gradients), interleaved in one
process on 2 threads; then the three kernel primitives alone (gather, scatter, correlate on the layer's
offsets; docs/kernels.md "Diagonal kernels") in GFMA/s. Prints both tables (median ms, spread, speed-up
over dense) and writes benchmarks/results/diagonal_bench.json.

    .venv/bin/python benchmarks/diagonal_bench.py [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from sparsetrain import bench
from sparsetrain.kernels import diagonal as kernels
from sparsetrain.nn import DiagonalLinear, SparseLinear

CASES = [(1024, 1024, 0.9), (4096, 4096, 0.9), (4096, 4096, 0.98), (3072, 768, 0.9), (768, 3072, 0.9),
         (16384, 16384, 0.98)]
QUICK = [(256, 256, 0.9)]


def _step(layer: nn.Module, n_in: int, n_out: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(bench.BATCH, n_in, generator=g).requires_grad_(True)
    gy = torch.randn(bench.BATCH, n_out, generator=g)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(gy)

    return step


def _primitives(offsets: torch.Tensor, n_out: int, n_in: int) -> dict[str, dict[str, float]]:
    """The three primitives of the layer's geometry alone, as the current backend serves them."""
    p, d = kernels.diagonal_count(n_out, n_in)
    g = torch.Generator().manual_seed(2)
    w, z, u = (torch.randn(shape, generator=g) for shape in ((offsets.numel(), d), (bench.BATCH, p), (bench.BATCH, d)))
    js = offsets.tolist()
    return {"gather": lambda: kernels.gather(z, offsets, js, w), "scatter": lambda: kernels.scatter(u, offsets, js, w, p),
            "correlate": lambda: kernels.correlate(z, u, offsets, js)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = bench.ab_arguments(parser, "layer")
    rows = []
    for n_out, n_in, sparsity in QUICK if args.quick else CASES:
        g = torch.Generator().manual_seed(0)
        diagonal = DiagonalLinear(n_in, n_out, sparsity=sparsity, bias=False, generator=g)
        diagonal.temperature.fill_(1.0)
        unstructured = SparseLinear(n_in, n_out, nnz=diagonal.nnz, bias=False, generator=g)
        layers = {"dense": nn.Linear(n_in, n_out, bias=False), "unstructured": unstructured, "diagonal": diagonal}
        timing = bench.interleaved({k: _step(layer, n_in, n_out) for k, layer in layers.items()}, args.rounds, 2)
        dense = timing["dense"]["median_s"]
        row = {"shape": f"{n_out}x{n_in}", "sparsity": 1 - diagonal.nnz / (n_out * n_in), "diagonals": diagonal.diagonals,
               "nnz": diagonal.nnz, "timing": timing}
        for key in layers:
            row[f"{key}_ms"] = 1e3 * timing[key]["median_s"]
            row[f"{key}_spread"] = (timing[key]["max_s"] - timing[key]["min_s"]) / timing[key]["median_s"]
            row[f"{key}_speedup"] = dense / timing[key]["median_s"]
        prims = bench.interleaved(_primitives(diagonal.layout.offsets, n_out, n_in), args.rounds, 3)
        for key, t in prims.items():
            row[f"{key}_ms"] = 1e3 * t["median_s"]
            row[f"{key}_gfma"] = bench.BATCH * diagonal.nnz / t["median_s"] / 1e9
        row["primitives"] = prims
        rows.append(row)
        print(f"{row['shape']} at {row['sparsity']:.2%}: dense {row['dense_ms']:.2f} ms, unstructured "
              f"{row['unstructured_ms']:.2f} ms, diagonal {row['diagonal_ms']:.2f} ms", flush=True)
    bench.print_table(rows, [("shape", "shape", "s"), ("sparsity", "sparsity", ".2%"), ("diagonals", "K", "d"),
                             ("dense_ms", "dense ms", ".2f"), ("unstructured_ms", "unstructured ms", ".2f"),
                             ("unstructured_speedup", "x dense", ".1f"), ("diagonal_ms", "diagonal ms", ".2f"),
                             ("diagonal_spread", "spread", ".0%"), ("diagonal_speedup", "x dense", ".1f")])
    print("\nkernel primitives alone (B·K·D multiply-adds each):")
    bench.print_table(rows, [("shape", "shape", "s"), ("diagonals", "K", "d")] + [
        (f"{key}_{unit}", f"{key} {label}", fmt) for key in ("gather", "scatter", "correlate")
        for unit, label, fmt in (("ms", "ms", ".2f"), ("gfma", "GFMA/s", ".1f"))])
    bench.write_json("diagonal_bench", {"machine": bench.machine(), "batch": bench.BATCH, "rounds": args.rounds,
                                        "rows": rows}, args.out)


if __name__ == "__main__":
    main()
