"""Time of one GSE topology update vs one training step of a SparseLinear (PERFORMANCE.md target: ≤ 1×).

Layer n × n at 98 % sparsity (default n = 16384), batch B = 128, SGD with momentum, 2 threads. A training
step is forward + backward + ``optimizer.step()``, timed for a *hidden* layer (its input needs a gradient,
as in the layer table of docs/benchmarks.md) and for a *first* layer (no input gradient). An update is
``method.step()`` at an update step (candidate sampling, SDDMM scoring, selection, ``layout.replace``
carrying values and momentum); a hidden layer also rebuilds its transposed index after the change, and a
row-block layer with a forward in storage order its storage walk: both are timed separately and charged to
the update (they would otherwise land in the next step). All are measured
in the same run, interleaved, and reported as medians; the update is also broken into its phases by
timing the same building blocks on the same data. Prints a table and writes
benchmarks/results/gse_update.json.

    .venv/bin/python benchmarks/gse_update_bench.py [--n 16384] [--sparsity 0.98] [--batch 128] [--repeats 5]
        [--dtype float32|bfloat16]

``--dtype bfloat16``: weights, activations, gradients and momentum in bfloat16 (our kernels sum in float32).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import resource
import statistics
import time

import torch

import sparsetrain as st
from sparsetrain import methods, rng
from sparsetrain.methods.candidates import scored_candidates
from sparsetrain.methods.scores import sampler_weights
from sparsetrain.methods.select import bottom_k, count_of, top_k


def _train_step(layer, opt, x):
    opt.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sampler", default="uniform", choices=("uniform", "grabo", "graest"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gse_update[_bfloat16].json)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    args.out = args.out or str(pathlib.Path(__file__).parent / "results" / f"gse_update{suffix}.json")
    torch.set_num_threads(args.threads)
    retained = st.retain_freed_memory()  # as `sparsetrain train` does: no page faults for recycled arrays
    n, B = args.n, args.batch

    layer = st.SparseLinear(n, n, sparsity=args.sparsity, generator=rng.generator(0)).to(dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9)
    # delta_t = 2: every second step updates; the odd steps are the plain training steps we time
    method = methods.create("gse", layer, opt, total_steps=4 * args.repeats + 4, delta_t=2, t_end=1.0, alpha=0.2,
                            sampler=args.sampler)
    gen = torch.Generator().manual_seed(1)

    def batch(needs_grad: bool) -> torch.Tensor:
        return torch.randn(B, n, generator=gen).to(dtype).requires_grad_(needs_grad)

    hidden_s, first_s, update_s, index_s, update_faults = [], [], [], [], []
    _train_step(layer, opt, batch(True))  # warm-up (allocations, first-touch)
    method.step()
    for _ in range(args.repeats + 1):
        _train_step(layer, opt, batch(True))  # observers armed: this backward feeds the update
        t0 = time.perf_counter()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        stats = method.step()
        t1 = time.perf_counter()
        update_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        layer.layout.transposed()  # the hidden layer's index for the input gradient, rebuilt after the change
        layer.layout.storage_walk()  # and the forward's walk in storage order, where the layer has one
        t2 = time.perf_counter()
        assert stats is not None
        x = batch(True)
        t3 = time.perf_counter()
        _train_step(layer, opt, x)  # a plain hidden-layer step, no observer
        t4 = time.perf_counter()
        x = batch(False)
        t5 = time.perf_counter()
        _train_step(layer, opt, x)  # a plain first-layer step, before method.step() arms the observers again
        t6 = time.perf_counter()  # (an armed observer would add this batch to the next update's scores)
        assert method.step() is None
        update_s.append(t1 - t0)
        index_s.append(t2 - t1)
        hidden_s.append(t4 - t3)
        first_s.append(t6 - t5)
    hidden_s, first_s, update_s, index_s = hidden_s[1:], first_s[1:], update_s[1:], index_s[1:]

    # phase breakdown on the same layer and one fresh batch
    observed = st.methods.scores.Observed()
    layer.backward_observer = observed
    _train_step(layer, opt, torch.randn(B, n, generator=gen).to(dtype))
    layer.backward_observer = None
    nnz = layer.nnz
    k = count_of(0.2, nnz)
    phases: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        phases[name] = time.perf_counter() - t
        return out

    f, g = timed("sampler weights", lambda: sampler_weights(observed.parts, args.sampler, rng.generator(9, 1)))
    found = timed("sample + dedupe + drop actives + score", lambda: scored_candidates(
        (layer.layout.crow, layer.layout.col), layer.layout.linear_indices, layer.layout.shape, int(math.ceil(nnz)),
        rng.generator(9), observed.parts, f, g))
    grow = timed("top-k growth", lambda: found.linear(top_k(found.scores, k)))
    drop = timed("bottom-k prune", lambda: bottom_k(layer.layout.values.detach(), k, absolute=True))
    momentum = opt.state[layer.layout.values]["momentum_buffer"]
    timed("layout.replace (values, momentum)", lambda: layer.layout.replace(drop, grow, carry=[momentum]))
    timed("transposed index (hidden layer)", layer.layout.transposed)
    timed("storage walk (forward in storage order)", layer.layout.storage_walk)

    med = statistics.median
    hidden, first, update, index = med(hidden_s), med(first_s), med(update_s), med(index_s)
    result = {
        "n": n, "sparsity": args.sparsity, "nnz": nnz, "batch": B, "threads": args.threads, "sampler": args.sampler,
        "dtype": args.dtype,
        "repeats": args.repeats, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "hidden_step_s": hidden_s, "first_step_s": first_s, "update_s": update_s, "index_rebuild_s": index_s,
        "hidden_step_median_s": hidden, "first_step_median_s": first, "update_median_s": update,
        "index_rebuild_median_s": index, "update_page_faults": update_faults,
        "hidden_update_over_step": (update + index) / hidden, "first_update_over_step": update / first,
        "candidates": len(found), "k": k, "freed_memory_retained": retained, "phases_s": phases,
        "target_update_over_step": 1.0,
    }
    print(f"GSE topology update vs training step: n={n}, sparsity={args.sparsity}, nnz={nnz}, B={B}, "
          f"threads={args.threads}, sampler={args.sampler}, dtype={args.dtype}, freed memory retained={retained}")
    print(f"{'what':<44}{'median s':>10}")
    print(f"{'hidden-layer step (fwd, bwd with grad-input, SGD)':<44}{hidden:>10.4f}")
    print(f"{'first-layer step (fwd, bwd, SGD)':<44}{first:>10.4f}")
    print(f"{'GSE update (method.step)':<44}{update:>10.4f}")
    print(f"{'index rebuild (transposed CSR, storage walk)':<44}{index:>10.4f}")
    print(f"{'page faults of one update':<44}{med(update_faults):>10.0f}   "
          f"({med(update_faults) * 4096 / 2**20:.0f} MiB touched for the first time)")
    print(f"{'hidden layer: (update + rebuild) / step':<44}{(update + index) / hidden:>10.2f}   (target <= 1)")
    print(f"{'first layer: update / step':<44}{update / first:>10.2f}   (target <= 1)")
    print(f"phases of one update (|S| = {len(found)}, k = {k}):")
    for name, seconds in phases.items():
        print(f"  {name:<42}{seconds:>10.4f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
