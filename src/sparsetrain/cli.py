"""``sparsetrain`` command line: train, eval, report, bench, info."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .errors import ConfigError

_TRAIN_EXAMPLES = """examples:
  sparsetrain train                                   # the demo: GSE, 90 %-sparse MLP on MNIST-1D (~1 minute)
  sparsetrain train --set train.epochs=5              # the demo, shorter
  sparsetrain train --config configs/resnet56_cifar10.yaml --set method.name=rigl --set sparse.sparsity=0.95 \\
      --set data.root=~/data/cifar10
  sparsetrain train --config my.yaml --set optim.lr=0.05 --set model.options.hidden=[512,512] --out runs/mine
  sparsetrain train --config my.yaml --dry-run        # validate and print the resolved config, no training
  sparsetrain train --resume runs/demo-20260101-120000  # continue from the newest good checkpoint

--set KEY=VALUE takes a dotted key (optim.lr, method.gse.gamma, data.options.augment) and a YAML value
(0.05, true, null, [1, 2], text). The whole config is checked before any work starts."""

_EVAL_EXAMPLES = """examples:
  sparsetrain eval runs/demo-20260101-120000
  sparsetrain eval runs/demo-20260101-120000 --checkpoint runs/demo-20260101-120000/checkpoints/step-00001000.pt"""

_REPORT_EXAMPLES = """examples:
  sparsetrain report runs/demo-20260101-120000                 # plots + table into RUN_DIR/report
  sparsetrain report runs/gse-* runs/rigl-* --out reports/cmp   # several runs overlaid"""

_BENCH_EXAMPLES = """examples:
  sparsetrain bench --help          # the benchmark's own options
  sparsetrain bench scaling --repeats 11   # width scaling at fan-in 64 (CPU)
  sparsetrain bench gpu             # Triton vs cuBLAS and torch CUDA CSR (needs a GPU)
  sparsetrain bench ...             # every argument is passed to sparsetrain.bench"""

_INFO_EXAMPLES = """examples:
  sparsetrain info"""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="sparsetrain", formatter_class=fmt,
                                     description="Always-sparse neural-network training.",
                                     epilog="Run `sparsetrain COMMAND --help` for a command's options and examples.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (no arguments: the embedded demo)", formatter_class=fmt,
                       description="Train from a YAML config (default: the embedded demo).", epilog=_TRAIN_EXAMPLES)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config (default: the embedded demo config)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--out", metavar="RUN_DIR", help="output folder (default runs/<name>-<timestamp>)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest good checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="evaluate a run's final checkpoint on the test split", formatter_class=fmt,
                       description="Evaluate a run's newest good checkpoint on the test split and print "
                                   "accuracy and the per-layer accounting table.", epilog=_EVAL_EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--checkpoint", metavar="FILE", help="a specific checkpoint file instead of the newest")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, metavar="N", help="evaluation batch size")

    p = sub.add_parser("report", help="plots and a markdown table from one or more runs", formatter_class=fmt,
                       description="Write PNG plots (loss/accuracy, per-layer density, topology turnover) and a "
                                   "markdown table for one or more run folders.", epilog=_REPORT_EXAMPLES)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/report for one run, else ./report)")

    sub.add_parser("bench", help="kernel and layer benchmarks (forwards to sparsetrain.bench)", formatter_class=fmt,
                   description="Benchmarks; all arguments go to sparsetrain.bench.", epilog=_BENCH_EXAMPLES,
                   add_help=False)
    sub.add_parser("info", help="versions, threads, CUDA and kernel backends", formatter_class=fmt,
                   description="Print versions, thread counts, CUDA availability and kernel backends.",
                   epilog=_INFO_EXAMPLES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench = bool(argv) and argv[0] == "bench"
    parser = None if bench else _parser()
    if parser is not None and not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv) if parser is not None else None
    try:
        if args is None:
            from .bench import main as bench_main  # the benchmark parses its own arguments
            return int(bench_main(argv[1:]) or 0)
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "report":
            return _report(args)
        if args.command == "info":
            return _info()
    except ConfigError as exc:
        print(f"sparsetrain: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .train.checkpoint import CheckpointError
        if isinstance(exc, CheckpointError):
            print(f"sparsetrain: error: {exc}", file=sys.stderr)
            return 2
        raise
    raise AssertionError(args.command)


def _train(args: argparse.Namespace) -> int:
    from .allocator import retain_freed_memory
    from .train import Trainer, resolve
    from .train.config import dump_yaml

    progress = False if getattr(args, "no_progress", False) else None
    if getattr(args, "resume", None):
        if args.config or args.assignments:
            raise ConfigError("--resume continues a run with its saved config; drop --config/--set "
                              f"(got --config={args.config!r}, --set={args.assignments!r})")
        if args.out:
            raise ConfigError("--resume writes into the run folder it resumes; drop --out")
        trainer = Trainer.resume(args.resume, device=args.device, progress=progress)
    else:
        config = resolve(getattr(args, "config", None), getattr(args, "assignments", []))
        if getattr(args, "dry_run", False):
            print(dump_yaml(config), end="")
            return 0
        trainer = Trainer(config, getattr(args, "out", None), device=getattr(args, "device", None), progress=progress)
    retain_freed_memory()  # topology updates reuse freed blocks instead of page-faulting them in (allocator.py)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(f"\nsparsetrain: interrupted at step {getattr(trainer, 'step', 0)}; continue with "
              f"`sparsetrain train --resume {trainer.run_dir}` (from its newest checkpoint)", file=sys.stderr)
        return 130
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_run

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer; got {args.batch_size}")
    result = evaluate_run(args.run_dir, device=args.device, checkpoint=args.checkpoint, batch_size=args.batch_size)
    print(result["account"].table())
    print(f"\ncheckpoint      {result['checkpoint']} (step {result['step']})")
    print(f"test accuracy   {result['accuracy']:.2%} on {result['samples']:,} samples (loss {result['loss']:.4f})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    written = write_report(args.run_dirs, args.out)
    for path in written:
        print(path)
    return 0


def _info() -> int:
    import platform

    import torch

    from . import __version__
    from .kernels import active_backends, backend

    rows = [("sparsetrain", __version__), ("torch", torch.__version__), ("python", platform.python_version()),
            ("platform", platform.platform()),
            ("threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"),
            ("cuda", _cuda_line())]
    dtypes = {"cpp": backend.CPP_DTYPES, "triton": backend.TRITON_DTYPES}
    for dev, name in active_backends().items():
        first, _, rest = name.partition(" ")
        ours = dtypes.get(first)
        listed = "" if ours is None else " (" + ", ".join(str(d).replace("torch.", "") for d in ours) + ")"
        rows.append((f"kernels ({dev})", first + listed + (" " + rest if rest else "")))
    rows.append(("value storage", _value_storage_line()))
    rows.append(("forward walk", _storage_walk_line()))
    for name, load in (("datasets", "data:DATASETS"), ("models", "models:MODELS")):
        module, attr = load.split(":")
        try:
            rows.append((name, ", ".join(getattr(__import__(f"sparsetrain.{module}", fromlist=[attr]), attr))))
        except ImportError as exc:
            rows.append((name, f"unavailable ({exc})"))
    try:
        from . import methods
        rows.append(("methods", ", ".join(methods.available())))
    except ImportError as exc:
        rows.append(("methods", f"unavailable ({exc})"))
    width = max(len(k) for k, _ in rows) + 2
    print("\n".join(f"{k:<{width}}{v}" for k, v in rows))
    return 0


def _setting_line(read: Callable[[], Any], auto: Callable[[], str], forced: Callable[[Any], str]) -> str:
    """One `info` line for an auto-or-forced environment setting: ``read()`` returns None for 'auto' or the
    forced value, and raises ConfigError for an invalid one (then the line says so)."""
    try:
        value = read()
    except ConfigError as exc:
        return f"invalid: {exc}"
    return auto() if value is None else forced(value)


def _value_storage_line() -> str:
    """How new CPU compressed layers will store their values (row blocks or CSR order), and why."""
    from .kernels import cpp_ext

    return _setting_line(
        cpp_ext.forced_value_block,
        lambda: (f"row blocks of ~{cpp_ext.VALUE_BLOCK_BYTES // 1024} KiB ({cpp_ext.WALKED_BLOCK_SCALE}x, at most "
                 f"{cpp_ext.WALKED_BLOCK_MAX_ROWS} rows, where they walk their storage order) for CPU layers with "
                 f">= {cpp_ext.L3_BYTES // cpp_ext.VALUE_BLOCK_L3_FRACTION // 2**20} MiB of values "
                 f"(1/{cpp_ext.VALUE_BLOCK_L3_FRACTION} of L3), else CSR order (SPARSETRAIN_CPU_VALUE_BLOCK=auto)"),
        lambda rows: f"SPARSETRAIN_CPU_VALUE_BLOCK={rows}: " + ("CSR order" if rows == 0 else f"blocks of {rows} rows"))


def _storage_walk_line() -> str:
    """How row-block CPU layers run their passes: in storage order, or the CSR and transposed walks."""
    from .kernels import cpp_ext

    return _setting_line(
        cpp_ext.forced_storage_walk,
        lambda: (f"in storage order for float32/float64 row blocks that use each gathered row >= "
                 f"{cpp_ext.STORAGE_WALK_REUSE} times, else the CSR walk (SPARSETRAIN_CPU_STORAGE_WALK=auto)"),
        lambda walk: "SPARSETRAIN_CPU_STORAGE_WALK=" + ("1: always in storage order" if walk else "0: the CSR walk"))


def _cuda_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda \
            else "not available (CPU-only torch build)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} device(s): {', '.join(names)} (CUDA {torch.version.cuda})"
