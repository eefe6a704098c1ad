"""Per-kernel cost of our CPU kernels, in ns per active weight: SpMM (forward), the input gradient (SpMM on
the transposed CSR, values read through perm_t) and SDDMM (value gradient), on random layers whose gathered
operand sits in L2, L3 or DRAM. 2 threads, R = 128, float32; median of repetitions. Prints a table and
writes benchmarks/results/kernel_bench.json.

    .venv/bin/python benchmarks/kernel_bench.py [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse
import json
import pathlib

import torch

from sparsetrain import kernels, retain_freed_memory
from sparsetrain.bench import timed
from sparsetrain.kernels import cpp_ext
from sparsetrain.layout import CompressedLayout

# (n_out, n_in, fan-in): operand in L2; n = 16384 at 90 / 98 / 99.5 %; fan-in 64 beyond L3
CASES = [(16384, 1024, 64), (16384, 16384, 1638), (16384, 16384, 328), (16384, 16384, 82),
         (65536, 65536, 64), (262144, 262144, 64)]
QUICK = [(512, 256, 16), (1024, 1024, 64)]


def median_seconds(fn, repeats: int) -> float:
    return timed(fn, repeats)["median_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "kernel_bench.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    retain_freed_memory()  # as `sparsetrain train` does (sparsetrain/allocator.py)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'n_out':>7} {'n_in':>7} {'fan-in':>6} {'operand MiB':>11} {'block':>6} "
          f"{'sweep':>6} {'SpMM':>6} {'grad-in':>7} {'SDDMM':>6}   (ns per active weight)")
    for n_out, n_in, fan in QUICK if args.quick else CASES:
        layout = CompressedLayout.random((n_out, n_in), n_out * fan, generator=gen)
        values = torch.randn(layout.nnz, generator=gen)
        crow, col = layout.crow, layout.col
        transposed = layout.transposed()
        x_fm, gy_fm = torch.randn(n_in, 128, generator=gen), torch.randn(n_out, 128, generator=gen)
        per_weight = 1e9 / layout.nnz
        row = {
            "n_out": n_out, "n_in": n_in, "fan_in": fan, "nnz": layout.nnz,
            "operand_mib": n_in * 128 * 4 / 2**20, "column_block": cpp_ext.column_block(n_in, fan, 512),
            "sweep_columns": cpp_ext.sweep_columns(n_in, fan, 512),  # SpMM and SDDMM (the input gradient: none)
            "spmm_ns": per_weight * median_seconds(lambda: cpp_ext.spmm(crow, col, values, x_fm, n_in), args.repeats),
            "grad_input_ns": per_weight * median_seconds(
                lambda: kernels.spmm_transposed(crow, col, values, gy_fm, n_in, transposed), args.repeats),
            "sddmm_ns": per_weight * median_seconds(lambda: cpp_ext.sddmm(crow, col, gy_fm, x_fm), args.repeats),
        }
        rows.append(row)
        print(f"{n_out:>7} {n_in:>7} {fan:>6} {row['operand_mib']:>11.1f} {row['column_block']:>6} {row['sweep_columns']:>6} "
              f"{row['spmm_ns']:>6.2f} {row['grad_input_ns']:>7.2f} {row['sddmm_ns']:>6.2f}", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": 2, "batch": 128, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
