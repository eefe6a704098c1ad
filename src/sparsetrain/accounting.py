"""What a model costs: active and total weights, bytes stored, FLOPs per sample — per layer and in total.

FLOPs count multiply-adds as 2. ``forward_flops`` counts the arithmetic on active weights; masked-dense and
dense layers really execute ``dense_forward_flops``, and the table says which kind each layer is. Training
FLOPs per sample are 3× forward (forward, input gradient, weight gradient).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layout import CompressedLayout, DiagonalLayout

#: Layer kinds that execute sparse FLOPs.
SPARSE_KINDS = ("compressed", "diagonal")
from .nn import SparseModule


@dataclass
class LayerAccount:
    """One weight matrix. ``active``/``total`` count weights; bytes are what storage really holds."""

    name: str
    kind: str  # 'compressed' | 'diagonal' | 'masked' | 'dense' | 'diagonal-all' (DynaDiag reference mode)
    shape: tuple[int, ...]
    active: int
    total: int
    value_bytes: int
    index_bytes: int
    positions: int | None = None  # output positions per sample (tokens, H·W); None if unknown
    forward_flops: int | None = None
    dense_forward_flops: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.active / self.total if self.total else 0.0

    @property
    def train_flops(self) -> int | None:
        return None if self.forward_flops is None else 3 * self.forward_flops

    @property
    def executed_train_flops(self) -> int | None:
        """FLOPs the hardware executes: sparse for compressed and diagonal layers, dense otherwise."""
        flops = self.forward_flops if self.kind in SPARSE_KINDS else self.dense_forward_flops
        return None if flops is None else 3 * flops


@dataclass
class ModelAccount:
    """Per-layer accounts plus totals; ``other_parameters`` are biases, norms, embeddings (always dense)."""

    layers: list[LayerAccount]
    other_parameters: int = 0
    other_bytes: int = 0
    totals: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def total(attr: str):
            values = [getattr(layer, attr) for layer in self.layers]
            return None if any(v is None for v in values) else sum(values)

        active, size = total("active"), total("total")
        self.totals = {
            "active": active, "total": size, "sparsity": 1.0 - active / size if size else 0.0,
            "value_bytes": total("value_bytes"), "index_bytes": total("index_bytes"),
            "parameter_bytes": total("value_bytes") + total("index_bytes") + self.other_bytes,
            "dense_parameter_bytes": sum(l.total * 4 for l in self.layers) + self.other_bytes,
            "forward_flops": total("forward_flops"), "train_flops": total("train_flops"),
            "executed_train_flops": total("executed_train_flops"),
            "other_parameters": self.other_parameters,
        }

    def as_dict(self) -> dict:
        """JSON-serialisable form."""
        layers = []
        for layer in self.layers:
            record = asdict(layer)
            record.update(shape=list(layer.shape), sparsity=layer.sparsity, train_flops=layer.train_flops,
                          executed_train_flops=layer.executed_train_flops)
            layers.append(record)
        return {"layers": layers, "totals": dict(self.totals)}

    def table(self) -> str:
        """A fixed-width table for humans."""
        header = ("layer", "kind", "shape", "active / total", "sparsity", "stored", "train FLOPs/sample")
        rows = []
        for l in self.layers:
            rows.append((l.name or "<root>", l.kind + ("*" if l.kind not in SPARSE_KINDS else ""),
                         "x".join(map(str, l.shape)), f"{l.active:,} / {l.total:,}", f"{l.sparsity:.2%}",
                         format_bytes(l.value_bytes + l.index_bytes), format_count(l.executed_train_flops)))
        t = self.totals
        rows.append(("total", "", "", f"{t['active']:,} / {t['total']:,}", f"{t['sparsity']:.2%}",
                     format_bytes(t["value_bytes"] + t["index_bytes"]), format_count(t["executed_train_flops"])))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        line = lambda r: "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        out = [line(header), "-" * len(line(header))] + [line(r) for r in rows[:-1]]
        out += ["-" * len(line(header)), line(rows[-1])]
        out.append(f"other parameters (bias, norm, embeddings): {self.other_parameters:,} "
                   f"({format_bytes(self.other_bytes)}); all parameters stored: {format_bytes(t['parameter_bytes'])}"
                   f" vs {format_bytes(t['dense_parameter_bytes'])} dense fp32")
        if any(l.kind not in SPARSE_KINDS for l in self.layers):
            out.append("* masked-dense or dense layers: they execute dense FLOPs and store the dense weight")
        return "\n".join(out)


def _scaled(n: float | None, base: int, units: tuple[str, ...], small: str) -> str:
    """``n`` in the largest unit that keeps it below ``base`` (first unit printed as an integer)."""
    if n is None:
        return "?"
    for i, unit in enumerate(units):
        if abs(n) < base or i == len(units) - 1:
            return small.format(n, unit) if i == 0 else f"{n:.{1 if base == 1024 else 2}f}{unit}"
        n /= base
    raise AssertionError


def format_bytes(n: int | None) -> str:
    """Bytes in B / KiB / MiB / GiB / TiB."""
    return _scaled(n, 1024, ("B", " KiB", " MiB", " GiB", " TiB"), "{:.0f} {}")


def format_count(n: int | None) -> str:
    """A count with K / M / G / T suffixes (powers of 1000)."""
    return _scaled(n, 1000, ("", "K", "M", "G", "T"), "{:.0f}{}")


def _positions(model: nn.Module, input_shape: tuple[int, ...], modules: dict[str, nn.Module]) -> dict[str, int]:
    """Output positions per sample of each weight layer, from one forward pass on a zero sample."""
    found: dict[str, int] = {}
    hooks = []
    for name, module in modules.items():
        def hook(mod, inputs, output, name=name):
            y = output
            found[name] = int(y.shape[2] * y.shape[3]) if y.ndim == 4 else int(y[0].numel() // y.shape[-1])
        hooks.append(module.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def account(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> ModelAccount:
    """Account every Linear/Conv2d weight (sparse or dense) of ``model``.

    With ``input_shape`` (one sample, no batch dim) a forward pass finds the output positions per sample
    so FLOPs are exact for convs and token models; without it only layers without spatial output get FLOPs.
    """
    weights = {n: m for n, m in model.named_modules() if isinstance(m, (SparseModule, nn.Linear, nn.Conv2d))}
    positions = _positions(model, tuple(input_shape), weights) if input_shape is not None else {}
    layers, counted = [], set()
    for name, m in weights.items():
        if isinstance(m, SparseModule):
            shape, param = m.weight_shape, m.layout.parameter
            total, active = math.prod(shape), m.nnz
            if isinstance(m.layout, CompressedLayout):
                kind, value_bytes, index_bytes = "compressed", active * param.element_size(), m.layout.index_bytes()
            elif isinstance(m.layout, DiagonalLayout):  # values (K or all P diagonals) + the offsets
                kind = "diagonal" if getattr(m, "mode", "sparse") == "sparse" else "diagonal-all"
                value_bytes = param.numel() * param.element_size()
                index_bytes = m.layout.offsets.numel() * m.layout.offsets.element_size()
            else:
                kind, value_bytes, index_bytes = "masked", total * param.element_size(), total  # bool mask
        else:
            param = m.weight
            shape, total = tuple(param.shape), param.numel()
            kind, active, value_bytes, index_bytes = "dense", total, total * param.element_size(), 0
        counted.add(id(param))
        pos = positions.get(name, None if isinstance(m, (nn.Conv2d,)) or len(shape) == 4 else 1)
        layers.append(LayerAccount(name, kind, tuple(shape), active, total, value_bytes, index_bytes, pos,
                                   None if pos is None else 2 * active * pos,
                                   None if pos is None else 2 * total * pos))
    others = [p for p in model.parameters() if id(p) not in counted]
    return ModelAccount(layers, sum(p.numel() for p in others), sum(p.numel() * p.element_size() for p in others))


__all__ = ["LayerAccount", "ModelAccount", "account", "format_bytes", "format_count"]
