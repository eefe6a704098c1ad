"""float32 against bfloat16 layer steps of our CPU kernels, interleaved in one process at constant fan-in 64
(n = 4096 ... 262144, B = 128, 2 threads): ns per connection per dtype, their ratio and each dtype's fitted
width exponent. All eight layers are built first, then timed in alternating rounds (bench.interleaved), so
the drift of a shared machine falls on every width and dtype alike (separate `sparsetrain bench scaling`
runs minutes apart scatter more than the difference). Prints a table and writes
benchmarks/results/dtype_ab.json.

    .venv/bin/python benchmarks/dtype_ab.py [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse

from sparsetrain import bench

FAN_IN = 64
DTYPES = tuple(bench.DTYPES)  # float32, bfloat16


def main() -> None:
    args = bench.ab_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "dtype")
    widths = [1024, 4096] if args.quick else [4096, 16384, 65536, 262144]
    steps = {(n, name): bench.layer_step(bench.make_layer(n, nnz=FAN_IN * n, dtype=bench.DTYPES[name]), n,
                                         bench.DTYPES[name]) for n in widths for name in DTYPES}
    timing = bench.interleaved(steps, args.rounds, per_round=2)
    rows = []
    for n in widths:
        row = {"n": n, "nnz": FAN_IN * n}
        for name in DTYPES:
            t = timing[(n, name)]
            row.update({f"{name}_{k}": t[k] for k in ("median_s", "min_s", "max_s")})
            row[f"{name}_ns"] = t["median_s"] / (FAN_IN * n) * 1e9
        row["ratio"] = row["float32_median_s"] / row["bfloat16_median_s"]
        rows.append(row)
    exponents = {name: bench.fit_exponent([r["n"] for r in rows], [r[f"{name}_median_s"] for r in rows])
                 for name in DTYPES}
    bench.print_table(rows, [("n", "n", "d"), ("float32_ns", "float32 ns/conn", ".1f"),
                             ("bfloat16_ns", "bfloat16 ns/conn", ".1f"), ("ratio", "float32/bfloat16", ".2f")])
    for name, e in exponents.items():
        print(f"fitted exponent ({name}): time ~ n^{e:.2f}")
    bench.write_json("dtype_ab_quick" if args.quick else "dtype_ab",
                     {"benchmark": "dtype_ab", "batch": bench.BATCH, "fan_in": FAN_IN, "rounds": args.rounds,
                      "machine": bench.machine(), "rows": rows, "exponent": exponents}, args.out)


if __name__ == "__main__":
    main()
