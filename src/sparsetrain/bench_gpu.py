"""GPU benchmark (``sparsetrain bench gpu``): our Triton kernels against dense cuBLAS and torch's CUDA CSR.

For each case (n x n layer, B = 128) and dtype (float32, bfloat16) it times the three operations of a
layer step, each as its three implementations compute it:

- forward: Triton CSR SpMM on the feature-major input | ``csr @ x_fm`` (cuSPARSE) | ``x @ W.t()`` (cuBLAS);
- input gradient: the values gathered into transposed order, then the Triton SpMM on the transposed CSR |
  the same gather, then ``csr_t @ gy_fm`` | ``gy @ W``;
- value gradient: Triton SDDMM at the active coordinates | ``torch.sparse.sampled_addmm`` | ``gy.t() @ x``
  (the dense weight gradient).

Times are medians of CUDA-event timings over repetitions (min and max kept in the JSON). Dense runs only
where an n x n weight fits comfortably (n <= 32768); an implementation that rejects a dtype is recorded
with its error instead of a time. Each sparse result is checked against torch's CSR path in float64 (max
relative error), so a run on a new GPU doubles as a correctness check of the kernels there.

``--device cpu`` runs the same code on CPU tensors, Triton under its interpreter (``TRITON_INTERPRET=1``
must be set before start-up): a smoke test of this benchmark, not a measurement.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

from .bench import BATCH, print_table
from .errors import ConfigError
from .layout import CompressedLayout

FULL_CASES = [(4096, 0.90), (4096, 0.98), (16384, 0.90), (16384, 0.98), (16384, 0.995),
              (4096, 64), (16384, 64), (65536, 64), (262144, 64)]  # int second field: fan-in (width scaling)
QUICK_CASES = [(64, 0.9), (96, 8)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DENSE_MAX_N = 32768
OPERATIONS = ("forward", "grad_input", "grad_values")
IMPLEMENTATIONS = ("triton", "torch_csr", "dense")
RUN_ERRORS = (RuntimeError, NotImplementedError, TypeError)  # how torch rejects a dtype / device combination


def _device_timer(device: torch.device) -> Callable[[Callable[[], object], int], dict[str, float]]:
    """timer(fn, reps) -> median/min/max seconds: CUDA events on a GPU, wall clock on CPU."""
    def timer(fn: Callable[[], object], reps: int) -> dict[str, float]:
        fn()  # warm-up: compiles the Triton kernel for this shape class, loads cuBLAS / cuSPARSE
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                begin = time.perf_counter()
                fn()
                times.append(time.perf_counter() - begin)
        return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    return timer


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((got.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def _case_operations(n: int, nnz: int, dtype: torch.dtype, device: torch.device, seed: int
                     ) -> tuple[dict[str, dict[str, Callable[[], torch.Tensor]]], dict[str, Callable[[], torch.Tensor]]]:
    """The callables {operation: {implementation: fn}} of one case (dense omitted when too large), and
    each operation's float64 reference (torch's CSR path on the values and operands the kernels see)."""
    from .kernels import triton_ops

    gen = torch.Generator().manual_seed(seed)
    layout = CompressedLayout.random((n, n), nnz, generator=gen)
    ccol, row_t, perm_t = (t.to(device) for t in layout.transposed())
    crow, col = layout.crow.to(device), layout.col.to(device)
    values = torch.randn(nnz, generator=gen).to(device, dtype)
    x_fm = torch.randn(n, BATCH, generator=gen).to(device, dtype)
    gy_fm = torch.randn(n, BATCH, generator=gen).to(device, dtype)
    x, gy = x_fm.t().contiguous(), gy_fm.t().contiguous()
    crow_l, col_l, ccol_l, row_t_l = crow.long(), col.long(), ccol.long(), row_t.long()

    def csr(v: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(crow_l, col_l, v, (n, n))

    def csr_t(v: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(ccol_l, row_t_l, v.index_select(0, perm_t), (n, n))

    w = csr(values)
    ops: dict[str, dict[str, Callable[[], torch.Tensor]]] = {
        "forward": {
            "triton": lambda: triton_ops.spmm(crow, col, values, x_fm, n),
            "torch_csr": lambda: w @ x_fm,
        },
        "grad_input": {
            "triton": lambda: triton_ops.spmm(ccol, row_t, values.index_select(0, perm_t), gy_fm, n),
            "torch_csr": lambda: csr_t(values) @ gy_fm,
        },
        "grad_values": {
            "triton": lambda: triton_ops.sddmm(crow, col, gy_fm, x_fm),
            "torch_csr": lambda: torch.sparse.sampled_addmm(w, gy_fm, x, beta=0.0).values(),
        },
    }
    if n <= DENSE_MAX_N:
        weight = _dense_weight(crow, col, values, n)
        ops["forward"]["dense"] = lambda: x @ weight.t()
        ops["grad_input"]["dense"] = lambda: gy @ weight
        ops["grad_values"]["dense"] = lambda: gy.t() @ x
    v64, x64, gy64 = values.double(), x_fm.double(), gy_fm.double()
    reference = {"forward": lambda: csr(v64) @ x64, "grad_input": lambda: csr_t(v64) @ gy64,
                 "grad_values": lambda: torch.sparse.sampled_addmm(csr(v64), gy64, x64.t(), beta=0.0).values()}
    return ops, reference


def _dense_weight(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """The dense n x n weight of a CSR (only for the dense baseline, on the benchmark's device)."""
    rows = torch.repeat_interleave(torch.arange(n, device=crow.device), (crow[1:] - crow[:-1]).long())
    dense = torch.zeros(n, n, dtype=values.dtype, device=values.device)
    dense[rows, col.long()] = values
    return dense


def _run_case(n: int, sparsity_or_fan: float | int, dtype_name: str, device: torch.device, reps: int,
              timer: Callable[[Callable[[], object], int], dict[str, float]]) -> list[dict]:
    fan = sparsity_or_fan if isinstance(sparsity_or_fan, int) else None
    sparsity = 1.0 - fan / n if fan is not None else float(sparsity_or_fan)
    nnz = fan * n if fan is not None else round((1.0 - sparsity) * n * n)
    ops, references = _case_operations(n, nnz, DTYPES[dtype_name], device, seed=n)
    rows = []
    for op in OPERATIONS:
        try:
            reference: torch.Tensor | None = references[op]()
        except RUN_ERRORS as exc:  # no float64 reference on this device: times only
            print(f"n={n} {op}: no float64 reference ({type(exc).__name__}: {exc}); errors not checked", flush=True)
            reference = None
        for impl in IMPLEMENTATIONS:
            row = {"n": n, "sparsity": sparsity, "fan_in": nnz // n, "nnz": nnz, "dtype": dtype_name,
                   "operation": op, "implementation": impl}
            fn = ops[op].get(impl)
            if fn is None:
                row["error"] = f"dense weight not built for n > {DENSE_MAX_N}"
                rows.append(row)
                continue
            try:
                if impl != "dense" and reference is not None:  # dense computes the whole weight gradient
                    row["max_rel_error"] = _relative_error(fn(), reference)
                row.update(timer(fn, reps))
                row["median_ms"], row["ns_per_active"] = row["median_s"] * 1e3, row["median_s"] / nnz * 1e9
            except RUN_ERRORS as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append(row)
    for op in OPERATIONS:
        dense = next((r for r in rows if r["operation"] == op and r["implementation"] == "dense"
                      and "median_s" in r), None)
        for r in rows:
            if r["operation"] == op and "median_s" in r and dense is not None:
                r["speedup_vs_dense"] = dense["median_s"] / r["median_s"]
    return rows


def run_gpu(args: argparse.Namespace) -> dict:
    """Triton kernels vs dense cuBLAS and torch's CUDA CSR: forward, input gradient, value gradient."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench gpu --device cuda: no CUDA device is available (torch.cuda.is_available() is "
                          "False); allowed devices: cuda, or cpu with TRITON_INTERPRET=1 for a smoke test")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("bench gpu --device cpu runs the Triton kernels under the Triton interpreter: set "
                          "TRITON_INTERPRET=1 in the environment before starting (it must precede the import "
                          "of triton)")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            raise ConfigError(f"bench gpu --dtypes: {d!r} is not allowed; allowed: {', '.join(DTYPES)}")
    timer = _device_timer(device)
    rows: list[dict] = []
    for n, second in QUICK_CASES if args.quick else FULL_CASES:
        for dtype_name in dtypes:
            case_rows = _run_case(n, second, dtype_name, device, 2 if args.quick else args.repeats, timer)
            rows.extend(case_rows)
            times = "  ".join(f"{r['operation']}/{r['implementation']} "
                              + (f"{r['median_s'] * 1e3:.3f} ms" if "median_s" in r else "n/a")
                              for r in case_rows)
            print(f"n={n} {dtype_name} {times}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(rows, [("n", "n", "d"), ("fan_in", "fan-in", "d"), ("dtype", "dtype", "s"),
                       ("operation", "operation", "s"), ("implementation", "impl", "s"),
                       ("median_ms", "median ms", ".4f"), ("ns_per_active", "ns/active", ".3f"),
                       ("speedup_vs_dense", "vs dense", ".1f"), ("max_rel_error", "rel err", ".1e"),
                       ("error", "not run because", "s")])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    return {"device": device_name, "rows": rows}
