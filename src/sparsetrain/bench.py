"""Speed and memory benchmarks of compressed sparse layers against dense ``nn.Linear``.

``main(argv)`` has four subcommands (exposed by the CLI as ``sparsetrain bench ...``):
- ``layer``: one layer y = x Wᵀ, forward + backward (grad of input and of the active values), n in
  {1024, 4096, 16384} x sparsity {0.90, 0.98, 0.995}, dense vs each sparse kernel backend; speed-up, peak
  extra memory per active weight; and the crossover sparsity (sparse = dense) at n = 4096.
- ``scaling``: width scaling at constant fan-in 64: time per connection and the fitted exponent of n.
- ``mlp``: a full training step (forward, backward, SGD) of a 4-layer MLP, dense vs sparse.
- ``gpu``: our Triton kernels against dense cuBLAS and torch's CUDA CSR, float32 and bfloat16 (bench_gpu.py).
Conditions (CPU benchmarks): ``torch.set_num_threads(2)``, float32 (``--dtype bfloat16``: weights,
activations and gradients in bfloat16, sums in float32), batch B = 128. Each result is a median with its
min/max over repetitions; a table is printed and JSON written (default benchmarks/results/<name>.json).

Peak memory is measured in a fresh subprocess per case: large allocations are forced to mmap
(``MALLOC_MMAP_THRESHOLD_``) so freed memory leaves the process, the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs`` = 5) after set-up and a warm-up step, and the peak (VmHWM) of one more step
minus the resident size before it is the step's extra memory.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .allocator import retain_freed_memory

BATCH = 128
THREADS = 2
RESULTS_DIR = Path("benchmarks") / "results"
KERNEL_ENV = "SPARSETRAIN_KERNELS"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --dtype of the CPU benchmarks


# --- measurement ---------------------------------------------------------------------------------------
def timed(fn: Callable[[], None], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time (seconds) of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _summary(times)


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "reps": len(times)}


def interleaved(steps: dict, rounds: int, per_round: int = 1) -> dict:
    """:func:`timed` for several steps at once: every round runs each step in turn, once untimed (the step
    before it evicted this one's data from the caches) and then ``per_round`` times timed, so a shared
    machine's drift over the minutes of a run falls on all of them alike instead of on whichever was
    measured last. Returns ``{key: timing}`` like :func:`timed`."""
    times: dict = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            step()
            for _ in range(per_round):
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
    return {key: _summary(ts) for key, ts in times.items()}


def ab_arguments(parser: argparse.ArgumentParser, what: str) -> argparse.Namespace:
    """The shared command line of an interleaved A/B script (benchmarks/*_ab.py): ``--rounds`` (of 2 steps per
    ``what``), ``--quick`` and ``--out``, parsed and checked; then the benchmark threads and the allocator
    setting of ``sparsetrain train``."""
    parser.add_argument("--rounds", type=int, default=5, help=f"alternating rounds of 2 steps per {what}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<script>.json)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    torch.set_num_threads(THREADS)
    retain_freed_memory()
    return args


def with_backend(name: str, step: Callable[[], None]) -> Callable[[], None]:
    """``step`` run with SPARSETRAIN_KERNELS set to ``name`` (see :func:`kernel_backend`)."""
    def run() -> None:
        with kernel_backend(name):
            step()
    return run


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Run the block with SPARSETRAIN_KERNELS set to ``name`` ('torch' or 'cpp')."""
    old = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = old


def sparse_backends() -> list[str]:
    """Kernel backends to compare: the stock-torch formulation always, ours when it loads — ours first: after
    the torch formulation's steps (large temporaries), our step on the same layer measured 8-12 % slower for
    the rest of the process (16384² at 98 %: 67 -> 73 ms, no page faults either way; eighth session), and a
    user's run uses one backend."""
    from .kernels import cpp_ext

    try:
        cpp_ext.load()
    except RuntimeError as exc:
        print(f"note: our CPU kernels are unavailable ({exc}); benchmarking the torch formulation only",
              file=sys.stderr)
        return ["torch"]
    return ["cpp", "torch"]


def make_layer(n: int, sparsity: float | None = None, nnz: int | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dense nn.Linear (sparsity and nnz None) or SparseLinear, square n x n, no bias."""
    from .nn import SparseLinear

    if sparsity is None and nnz is None:
        return nn.Linear(n, n, bias=False, dtype=dtype)
    return SparseLinear(n, n, sparsity=sparsity, nnz=nnz, bias=False,
                        generator=torch.Generator().manual_seed(seed)).to(dtype)


def layer_step(layer: nn.Module, n: int, dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """Forward + backward of y = x Wᵀ for a B x n batch: gradients of the input and of the weights."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, n, generator=g).to(dtype).requires_grad_(True)
    gy = torch.randn(BATCH, n, generator=g).to(dtype)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(gy)

    return step


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_case(n: int, sparsity: float | None, nnz: int | None, dtype: str = "float32") -> dict[str, float]:
    """(In a fresh process) peak extra bytes of one layer step over the resident size before it."""
    torch.set_num_threads(THREADS)
    layer = make_layer(n, sparsity, nnz, dtype=DTYPES[dtype])
    step = layer_step(layer, n, DTYPES[dtype])
    step()  # warm-up: loads the kernels, starts the thread pool
    layer.zero_grad(set_to_none=True)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    step()
    peak = _status_kib("VmHWM")
    return {"extra_bytes": (peak - before) * 1024}


def measure_memory(n: int, sparsity: float | None, backend: str | None, nnz: int | None = None,
                   dtype: str = "float32") -> dict[str, float]:
    """Run :func:`_memory_case` in a fresh subprocess (so nothing earlier in this process is counted)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(THREADS))
    if backend is not None:
        env[KERNEL_ENV] = backend
    args = [sys.executable, "-m", "sparsetrain.bench", "_memory", str(n), str(sparsity), str(nnz), dtype]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement n={n} sparsity={sparsity} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def activation_bytes(n_in: int, n_out: int, element_size: int = 4) -> int:
    """Batch-sized tensors of a layer step: input (feature-major copy), output, output grad, input grad."""
    return BATCH * 2 * (n_in + n_out) * element_size


# --- reporting -----------------------------------------------------------------------------------------
def machine() -> dict[str, str | int]:
    """What the numbers were measured on."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "logical_cpus": os.cpu_count() or 0, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    cells = [[("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def write_json(name: str, payload: dict, out: str | None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def crossover(points: list[tuple[float, float]]) -> float | None:
    """Sparsity where speed-up = 1, interpolated linearly in log speed-up; None if never crossed."""
    points = sorted(points)
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if r0 < 1.0 <= r1:
            a, b = math.log(r0), math.log(r1)
            return s0 + (s1 - s0) * (0.0 - a) / (b - a)
    if points and points[0][1] >= 1.0:
        return points[0][0]  # already faster at the lowest sparsity scanned (an upper bound)
    return None


# --- subcommands ---------------------------------------------------------------------------------------
def run_layer(args: argparse.Namespace) -> dict:
    widths = [256] if args.quick else [1024, 4096, 16384]
    sparsities = [0.9] if args.quick else [0.90, 0.98, 0.995]
    scan = [0.5, 0.9] if args.quick else [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    scan_n = 256 if args.quick else 4096
    backends = sparse_backends()
    dtype, size = DTYPES[args.dtype], DTYPES[args.dtype].itemsize
    rows: list[dict] = []
    for n in widths:
        reps = 2 if args.quick else (3 if n >= 16384 else 7)
        dense = timed(layer_step(make_layer(n, dtype=dtype), n, dtype), reps)
        mem = None if args.no_memory else measure_memory(n, None, None, dtype=args.dtype)
        rows.append({"n": n, "sparsity": 0.0, "backend": "dense", "nnz": n * n, **dense,
                     "speedup": 1.0, **_memory_fields(mem, n, n * n, size)})
        print(f"n={n} dense {dense['median_s'] * 1e3:.1f} ms", flush=True)
        for s in sparsities:
            layer = make_layer(n, s, dtype=dtype)
            nnz = layer.nnz
            for b in backends:
                with kernel_backend(b):
                    t = timed(layer_step(layer, n, dtype), 3 if args.quick else 7)
                mem = None if args.no_memory else measure_memory(n, s, b, dtype=args.dtype)
                rows.append({"n": n, "sparsity": s, "backend": b, "nnz": nnz, **t,
                             "speedup": dense["median_s"] / t["median_s"], **_memory_fields(mem, n, nnz, size)})
                print(f"n={n} s={s} {b} {t['median_s'] * 1e3:.1f} ms x{rows[-1]['speedup']:.1f}", flush=True)
    print_table(rows, [("n", "n", "d"), ("sparsity", "sparsity", ".3f"), ("backend", "backend", "s"),
                       ("nnz", "active", "d"), ("median_s", "median s", ".4f"), ("min_s", "min s", ".4f"),
                       ("max_s", "max s", ".4f"), ("speedup", "speed-up", ".1f"),
                       ("extra_bytes", "peak extra B", ".3g"), ("bytes_per_active", "B/active", ".1f")])

    dense_scan = timed(layer_step(make_layer(scan_n, dtype=dtype), scan_n, dtype), 2 if args.quick else 7)
    scan_rows, cross = [], {}
    for b in backends:
        pts = []
        for s in scan:
            layer = make_layer(scan_n, s, dtype=dtype)
            with kernel_backend(b):
                t = timed(layer_step(layer, scan_n, dtype), 2 if args.quick else 5)
            pts.append((s, dense_scan["median_s"] / t["median_s"]))
            scan_rows.append({"backend": b, "sparsity": s, **t, "speedup": pts[-1][1]})
        cross[b] = crossover(pts)
    print(f"\ncrossover scan at n={scan_n} (dense {dense_scan['median_s'] * 1e3:.1f} ms)")
    print_table(scan_rows, [("backend", "backend", "s"), ("sparsity", "sparsity", ".2f"),
                            ("median_s", "median s", ".4f"), ("speedup", "speed-up", ".2f")])
    for b, c in cross.items():
        first_faster = any(r["backend"] == b and r["sparsity"] == scan[0] and r["speedup"] >= 1 for r in scan_rows)
        text = ("not reached in the scan" if c is None else
                f"at or below sparsity {c:.2f} (sparse already faster at the lowest sparsity scanned)"
                if first_faster else f"sparsity {c:.2f}")
        print(f"crossover ({b}): {text}")
    return {"rows": rows, "crossover": {"n": scan_n, "dense": dense_scan, "scan": scan_rows, "sparsity": cross}}


def _memory_fields(mem: dict | None, n: int, nnz: int, element_size: int = 4) -> dict:
    if mem is None:
        return {"extra_bytes": None, "bytes_per_active": None}
    act = activation_bytes(n, n, element_size)
    return {"extra_bytes": mem["extra_bytes"], "activation_bytes": act,
            "bytes_per_active": (mem["extra_bytes"] - act) / nnz}


def run_scaling(args: argparse.Namespace) -> dict:
    """Every width's layer is built first and the widths are timed in alternating rounds (:func:`interleaved`),
    once per backend, so the fitted exponent does not take the machine's drift during the run."""
    widths = [1024, 4096] if args.quick else [4096, 16384, 65536, 262144]
    fan_in = 64
    rows = []
    dtype = DTYPES[args.dtype]
    for b in sparse_backends():
        steps = {n: with_backend(b, layer_step(make_layer(n, nnz=fan_in * n, dtype=dtype), n, dtype)) for n in widths}
        for n, t in interleaved(steps, 2 if args.quick else args.repeats).items():
            rows.append({"backend": b, "n": n, "nnz": fan_in * n, **t,
                         "ns_per_connection": t["median_s"] / (fan_in * n) * 1e9})
            print(f"{b} n={n} {t['median_s'] * 1e3:.1f} ms", flush=True)
        del steps
    exponents = {b: fit_exponent([r["n"] for r in rows if r["backend"] == b],
                                 [r["median_s"] for r in rows if r["backend"] == b]) for b in {r["backend"] for r in rows}}
    print_table(rows, [("backend", "backend", "s"), ("n", "n", "d"), ("nnz", "active", "d"),
                       ("median_s", "median s", ".4f"), ("min_s", "min s", ".4f"), ("max_s", "max s", ".4f"),
                       ("ns_per_connection", "ns/connection", ".1f")])
    for b, e in sorted(exponents.items()):
        print(f"fitted exponent ({b}): time ~ n^{e:.2f}")
    return {"fan_in": fan_in, "rows": rows, "exponent": exponents}


def _mlp(width: int, sparsity: float | None, depth: int = 4, dtype: torch.dtype = torch.float32) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(make_layer(width, sparsity, seed=i, dtype=dtype))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def run_mlp(args: argparse.Namespace) -> dict:
    widths = [512] if args.quick else [4096, 16384]
    rows = []
    backends = sparse_backends()
    dtype = DTYPES[args.dtype]
    for w in widths:
        g = torch.Generator().manual_seed(2)
        x, target = torch.randn(BATCH, w, generator=g).to(dtype), torch.randn(BATCH, w, generator=g).to(dtype)
        for s in (None, 0.90, 0.98):
            model = _mlp(w, s, dtype=dtype)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                nn.functional.mse_loss(model(x), target).backward()
                opt.step()

            for b in (["dense"] if s is None else backends):
                reps = 2 if args.quick or (s is None and w >= 16384) else 5
                with kernel_backend("torch" if b == "dense" else b):
                    t = timed(step, reps)
                rows.append({"width": w, "sparsity": s or 0.0, "backend": b, **t})
                print(f"mlp width={w} s={s} {b} {t['median_s'] * 1e3:.1f} ms", flush=True)
            model = opt = None  # free the dense model before the next one is built
        dense_t = next(r["median_s"] for r in rows if r["width"] == w and r["backend"] == "dense")
        for r in rows:
            if r["width"] == w:
                r["speedup"] = dense_t / r["median_s"]
    print_table(rows, [("width", "width", "d"), ("sparsity", "sparsity", ".2f"), ("backend", "backend", "s"),
                       ("median_s", "median s", ".4f"), ("min_s", "min s", ".4f"), ("max_s", "max s", ".4f"),
                       ("speedup", "speed-up", ".1f")])
    return {"depth": 4, "rows": rows}


def run_gpu(args: argparse.Namespace) -> dict:
    """Triton kernels vs dense cuBLAS and torch's CUDA CSR (bench_gpu.py)."""
    from .bench_gpu import run_gpu as run

    return run(args)


COMMANDS = {"layer": run_layer, "scaling": run_scaling, "mlp": run_mlp, "gpu": run_gpu}


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsetrain bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or name).strip().splitlines()[0] if fn.__doc__ else name)
        p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
        p.add_argument("--out", default=None, help=f"JSON path (default {RESULTS_DIR}/<name>.json)")
        if name == "layer":
            p.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
        if name != "gpu":
            p.add_argument("--dtype", default="float32", choices=tuple(DTYPES),
                           help="weights, activations and gradients (bfloat16: our kernels sum in float32)")
        if name in ("scaling", "gpu"):
            p.add_argument("--repeats", type=_positive_int, default=5 if name == "scaling" else 20,
                           help="timed runs per case (median reported)")
        if name == "gpu":
            p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                           help="cpu: a smoke test under the Triton interpreter (needs TRITON_INTERPRET=1)")
            p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    mem = sub.add_parser("_memory")  # internal: one memory case, run in a fresh process
    mem.add_argument("n", type=int)
    mem.add_argument("sparsity")
    mem.add_argument("nnz")
    mem.add_argument("dtype", choices=tuple(DTYPES))
    args = parser.parse_args(argv)
    if args.command == "_memory":
        sparsity = None if args.sparsity == "None" else float(args.sparsity)
        nnz = None if args.nnz == "None" else int(args.nnz)
        print(json.dumps(_memory_case(args.n, sparsity, nnz, args.dtype)))
        return 0
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    retain_freed_memory()  # as `sparsetrain train` does (allocator.py)
    result = COMMANDS[args.command](args)
    name = {"layer": "layer_bench", "scaling": "width_scaling", "mlp": "mlp_bench", "gpu": "gpu_bench"}[args.command]
    dtype = {} if args.command == "gpu" else {"dtype": args.dtype}  # the GPU rows name their own dtype
    if dtype.get("dtype", "float32") != "float32":
        name += f"_{args.dtype}"
    write_json(name if not args.quick else f"{name}_quick", {"benchmark": args.command, "batch": BATCH, **dtype,
                                                             "machine": machine(),
                                                             "command": "sparsetrain bench " + " ".join(argv or sys.argv[1:]),
                                                             **result}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
