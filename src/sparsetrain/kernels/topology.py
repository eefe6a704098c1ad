"""Index operations of a topology update (sampling, selection, slot merge): our C++ on CPU, torch otherwise.

Pure tensor functions on sorted index lists; they know nothing of layouts or methods. Linear indices are
int64 ``row · n_cols + col``. Each op has a stock-torch implementation here that is always correct (and
serves CUDA tensors, ``SPARSETRAIN_KERNELS=torch`` and a machine without a compiler); the C++ versions in
cpu_kernels.cpp ("topology operations") do the same in one or two O(n) passes. The dispatch follows
:mod:`.backend`: ``auto`` uses ours when they load (else warns once), ``cpp`` requires them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backend, torch_ops


def _cpp(device: torch.device, dtype: torch.dtype = torch.float32):
    """The cpp_ext module when our CPU kernels serve this call, else None (torch serves)."""
    if device.type != "cpu":
        return None
    impl = backend.implementation(device, dtype)
    return None if impl is torch_ops else impl


def _check_index(name: str, t: torch.Tensor) -> None:
    if t.ndim != 1 or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a 1-D int32 or int64 tensor, got shape {tuple(t.shape)} dtype {t.dtype}")


def _check_lin(name: str, t: torch.Tensor) -> None:
    if t.ndim != 1 or t.dtype != torch.int64:
        raise ValueError(f"{name} must be a 1-D int64 tensor of linear indices, got shape {tuple(t.shape)} "
                         f"dtype {t.dtype}")


def rows_to_crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers (``rows``' dtype) of row indices sorted ascending. C++: one parallel pass over the
    entries (and a ValueError for unsorted or out-of-range rows); torch: a binary search per row."""
    _check_index("rows", rows)
    cpp = _cpp(rows.device)
    if cpp is not None:
        return cpp.rows_to_crow(rows, n_rows)
    return torch_ops.rows_to_crow(rows, n_rows)


def linear_index(row: torch.Tensor, col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """int64 ``row · n_cols + col`` in one pass (no int64 temporaries of the inputs)."""
    _check_index("row", row)
    _check_index("col", col)
    if row.shape != col.shape or row.dtype != col.dtype:
        raise ValueError(f"row and col must have the same shape and dtype, got {tuple(row.shape)} {row.dtype} and "
                         f"{tuple(col.shape)} {col.dtype}")
    cpp = _cpp(row.device)
    if cpp is not None:
        return cpp.linear_index(row, col, n_cols)
    return row.long() * n_cols + col.long()


def linear_to_csr(lin: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (int64 row pointers (n_rows + 1,), int64 columns) of sorted linear indices, without int64 division."""
    _check_lin("lin", lin)
    cpp = _cpp(lin.device)
    if cpp is not None:
        return cpp.linear_to_csr(lin, n_rows, n_cols)
    total = n_rows * n_cols
    if lin.numel() and (int(lin[0]) < 0 or int(lin[-1]) >= total or bool((lin[1:] < lin[:-1]).any())):
        raise ValueError(f"lin must be sorted ascending with entries in [0, n_rows * n_cols = {total})")
    starts = torch.arange(n_rows + 1, device=lin.device, dtype=torch.int64) * n_cols
    crow = torch.searchsorted(lin, starts)
    row_start = torch.repeat_interleave(starts[:-1], crow.diff(), output_size=lin.numel())
    return crow, lin - row_start


def sorted_uniform_draws(total: int, m: int, generator: torch.Generator, device: torch.device | str = "cpu",
                         exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``m`` uniform draws from [0, total) with replacement, ascending (int64), so no sort is needed.

    The order statistics of m uniforms are the partial sums of m + 1 Exp(1) spacings over their total.
    With ``exclude`` (sorted int64) the result is ``unique_difference(draws, exclude)``: each drawn position
    once, none of ``exclude`` (C++ does it while drawing). Torch: ``exponential_`` + ``cumsum`` from
    ``generator``. C++: the spacings come from a counter-based stream (SplitMix64) seeded by one draw from
    ``generator``, generated in fixed parallel blocks; the two give different (equally uniform) samples,
    each reproducible from the generator's state and independent of the thread count.
    """
    if total < 1 or m < 0:
        raise ValueError(f"sorted_uniform_draws needs total >= 1 and m >= 0, got total={total}, m={m}")
    if exclude is not None:
        _check_lin("exclude", exclude)
    device = torch.device(device)
    cpp = _cpp(device)
    if cpp is not None:
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
        return cpp.sorted_uniform_draws(int(total), int(m), seed, exclude)
    spacings = torch.empty(m + 1, dtype=torch.float64, device=device).exponential_(generator=generator)
    sums = torch.cumsum(spacings, 0)
    draws = (sums[:-1] * (total / float(sums[-1]))).long().clamp_(max=total - 1)
    return draws if exclude is None else unique_difference(draws, exclude)


def sample_and_score(crow: torch.Tensor, col: torch.Tensor, n_in: int, m: int, generator: torch.Generator,
                     parts: list[tuple[torch.Tensor, torch.Tensor]], f: torch.Tensor | None = None,
                     g: torch.Tensor | None = None,
                     absolute: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """GSE growth candidates of a CSR layer, scored in the same pass: ``(cand_crow, cand_col, scores)``, or
    None where our CPU kernels do not serve these tensors (the caller then composes the torch steps).

    ``m`` pairs are drawn with replacement, output unit b ~ ``g``, input unit a ~ ``f`` (non-negative
    weights, ``None`` = uniform, weight-0 units never drawn). The candidates are each drawn position that
    is not active, once, as a CSR (int64 row pointers, int32 columns ascending within a row: row-major
    order); ``scores`` is the batch gradient Σ_parts <gy_fm[b], x_fm[a]> there (absolute with
    ``absolute``). ``parts`` are the observed (x_fm (n_in, R), gy_fm (n_out, R)) pairs. Row counts come
    from m row draws, then each row draws its columns from its own counter-based stream: no global sort,
    and the sample is a function of one draw from ``generator``, not of the thread count.
    """
    _check_index("crow", crow)
    _check_index("col", col)
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    if not parts:
        raise ValueError("sample_and_score needs at least one observed (x_fm, gy_fm) part")
    dtype = parts[0][0].dtype
    cpp = _cpp(crow.device, dtype)
    if cpp is None or any(t.device.type != "cpu" or t.dtype != dtype for part in parts for t in part):
        return None
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
    return cpp.sample_and_score(crow, col.to(crow.dtype), n_in, m, seed, g, f, parts, absolute)


def csr_linear(crow: torch.Tensor, col: torch.Tensor, slots: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Linear positions ``row · n_cols + col`` of the CSR entries ``slots`` (strictly increasing int64)."""
    _check_index("col", col)
    _check_lin("slots", slots)
    if crow.dtype != torch.int64:
        crow = crow.long()
    cpp = _cpp(col.device)
    if cpp is not None:
        return cpp.csr_linear(crow, col, slots, n_cols)
    rows = torch.searchsorted(crow, slots, right=True) - 1
    return rows * n_cols + col[slots].long()


def unique_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The values of sorted ``a``, each once, that are not in sorted ``b`` (ascending): a linear merge.

    Both inputs must be sorted ascending (our C++ checks and raises ValueError; torch does not check).
    """
    _check_index("a", a)
    _check_index("b", b)
    if a.dtype != b.dtype:
        raise ValueError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    cpp = _cpp(a.device)
    if cpp is not None:
        return cpp.unique_difference(a, b)
    if a.numel() == 0:
        return a.clone()
    if b.numel():
        at = torch.searchsorted(b, a).clamp_(max=b.numel() - 1)
        keep = b[at] != a
    else:
        keep = torch.ones_like(a, dtype=torch.bool)
    keep[1:] &= a[1:] != a[:-1]
    return a[keep]


def select_k(scores: torch.Tensor, k: int, largest: bool = True, absolute: bool = False) -> torch.Tensor:
    """Ascending int64 positions of the ``k`` largest (or smallest) scores; ties go to the lower position.

    Order: -0.0 equals +0.0; NaN ranks above +inf (chosen first by largest, last by smallest), as in
    ``torch.sort``. ``absolute`` ranks |scores| without forming them. C++: a sample brackets the k-th key,
    then two passes (count and collect the bracket, write), O(n) without a sort.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    n = scores.numel()
    k = max(0, min(int(k), n))
    cpp = _cpp(scores.device, scores.dtype)
    if cpp is not None:
        if scores.dtype == torch.bfloat16:  # widened exactly, so the order and the ties are the same
            scores = scores.float()
        return cpp.select_k(scores, k, bool(largest), bool(absolute))
    if absolute:
        scores = scores.abs()
    if k == n:
        return torch.arange(n, device=scores.device)
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = torch.sort(scores, descending=largest, stable=True).indices[:k]
    return torch.sort(order).values


def csr_rows(crow: torch.Tensor) -> torch.Tensor:
    """The row of every entry of a CSR, in ``crow``'s dtype (what row pointers leave implicit)."""
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, dtype=crow.dtype, device=crow.device), crow.diff(),
                                   output_size=int(crow[-1]))


def merge_entries(crow: torch.Tensor, col: torch.Tensor, drop: torch.Tensor, new_lin: torch.Tensor, n_cols: int,
                  payloads: Sequence[torch.Tensor] = ()
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, list[torch.Tensor]]:
    """The entries of a CSR (``crow``, ``col``) minus the slots ``drop``, merged with new linear indices.

    ``drop`` (int64 slots) and ``new_lin`` must be strictly increasing. Returns ``(crow, col, source,
    collisions, carried)``: the merged CSR (dtype of ``col``), the old slot each new slot comes from (-1 for
    a new entry), how many new entries equal a kept one (the result is invalid unless 0), and each of
    ``payloads`` (1-D, one element per old entry: values, optimizer state) in the new slot order with 0 at
    new entries — carried in the merge itself, which saves one pass per payload.
    """
    _check_index("crow", crow)
    _check_index("col", col)
    _check_lin("drop", drop)
    _check_lin("new_lin", new_lin)
    for t in payloads:
        if t.ndim != 1 or t.numel() != col.numel():
            raise ValueError(f"payloads must be 1-D with one element per entry ({col.numel()}), "
                             f"got shape {tuple(t.shape)}")
    cpp = _cpp(col.device)
    if cpp is not None:
        out_crow, out_col, source, collisions, carried = cpp.merge_entries(
            crow, col, drop, new_lin, n_cols, [t.contiguous() for t in payloads])
        return out_crow, out_col, source, int(collisions), list(carried)
    keep = torch.ones(col.numel(), dtype=torch.bool, device=col.device)
    keep[drop] = False
    kept_src = torch.nonzero(keep).flatten()
    kept_lin = (csr_rows(crow).long() * n_cols + col.long())[kept_src]
    k, n_kept = new_lin.numel(), kept_lin.numel()
    collisions = 0
    if k and n_kept:
        at = torch.searchsorted(kept_lin, new_lin).clamp(max=n_kept - 1)
        collisions = int((kept_lin[at] == new_lin).sum())
    # each element's merged slot is its own rank plus the number of elements of the other list before it
    new_pos = torch.searchsorted(kept_lin, new_lin) + torch.arange(k, device=col.device)
    kept_pos = torch.searchsorted(new_lin, kept_lin) + torch.arange(n_kept, device=col.device)
    merged = torch.empty(n_kept + k, dtype=torch.int64, device=col.device)
    merged[kept_pos] = kept_lin
    merged[new_pos] = new_lin
    source = torch.full((n_kept + k,), -1, dtype=col.dtype, device=col.device)
    source[kept_pos] = kept_src.to(col.dtype)
    carried = []
    for t in payloads:
        out = t.new_zeros(n_kept + k)
        out[kept_pos] = t[kept_src]
        carried.append(out)
    out_crow = torch_ops.rows_to_crow((merged // n_cols).to(col.dtype), crow.numel() - 1)
    return out_crow, (merged % n_cols).to(col.dtype), source, collisions, carried


def transpose_csr(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transposed CSR of a CSR: ``(perm, ccol, row_t)``, all of ``col``'s dtype.

    ``perm[j]`` is the slot of the j-th entry in column-major order (stable: rows ascending within a column),
    ``ccol`` the column pointers, ``row_t[j]`` the row of that entry. C++: one counting sort that writes
    (slot, row) pairs, so ``perm`` and ``row_t`` are the two columns of one (nnz, 2) tensor.
    """
    _check_index("crow", crow)
    _check_index("col", col)
    cpp = _cpp(col.device)
    if cpp is not None:
        return cpp.transpose_csr(crow, col, n_cols)
    perm, ccol = backend.implementation(col.device, torch.float32).transpose_order(col, n_cols)
    return perm, ccol, csr_rows(crow).index_select(0, perm)


def transpose_blocked(crow: torch.Tensor, col: torch.Tensor, n_cols: int, block_rows: int,
                      method: str = "auto", walk: bool = False) -> tuple[torch.Tensor, ...]:
    """:func:`transpose_csr` for row-block value storage: ``(perm, ccol, row_t, slots)``, and with ``walk``
    the storage walk (:func:`storage_walk`) as a fifth element.

    The values of each block of ``block_rows`` rows keep the block's CSR range, ordered inside it as the
    transposed walk reaches them (columns ascending, rows ascending within a column). ``slots`` is the
    storage position of every CSR entry and ``perm`` holds storage positions. ``method`` (our C++):
    ``"columns"`` (a count per block and column, then one run per block and column; "auto" while those
    counts are at most half the entries), ``"walk"`` (a bucket pass over the transposed CSR) or ``"auto"``;
    all give the same result. O(nnz) (plus O(n_cols) per block by columns).
    """
    _check_index("crow", crow)
    _check_index("col", col)
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be an int >= 1, got {block_rows!r}")
    if method not in ("auto", "columns", "walk"):
        raise ValueError(f"method must be 'auto', 'columns' or 'walk', got {method!r}")
    cpp = _cpp(col.device)
    if cpp is not None:
        return cpp.transpose_blocked(crow, col, n_cols, block_rows, method, walk)
    perm, ccol, row_t = transpose_csr(crow, col, n_cols)
    # a stable sort by block keeps the walk's order inside each block, and blocks fill the storage in order
    by_block = torch.sort(torch.div(row_t, block_rows, rounding_mode="floor"), stable=True).indices
    storage = torch.empty_like(perm)
    storage[by_block] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    slots = torch.empty_like(perm)
    slots[perm.long()] = storage
    return (storage, ccol, row_t, slots, *((storage_walk(crow, col, slots, block_rows),) if walk else ()))


def storage_walk(crow: torch.Tensor, col: torch.Tensor, slots: torch.Tensor, block_rows: int) -> torch.Tensor:
    """(nnz, 2): the (column, row) of each storage position of a row-block layout (``slots`` from
    :func:`transpose_blocked`), what a walk of the storage order reads (``cpp_ext.spmm_storage``)."""
    for name, t in (("crow", crow), ("col", col), ("slots", slots)):
        _check_index(name, t)
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be an int >= 1, got {block_rows!r}")
    cpp = _cpp(col.device)
    if cpp is not None:
        return cpp.storage_walk(crow, col, slots, block_rows)
    out = torch.empty(col.numel(), 2, dtype=col.dtype, device=col.device)
    out[slots.long(), 0] = col
    out[slots.long(), 1] = csr_rows(crow).to(col.dtype)
    return out


def scatter_permuted(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[index[i]] = src[i]`` for a permutation ``index`` (the inverse of ``src[index]``)."""
    _check_index("index", index)
    if src.ndim != 1 or src.shape != index.shape:
        raise ValueError(f"src must be 1-D of index's length {index.numel()}, got shape {tuple(src.shape)}")
    cpp = _cpp(src.device)
    if cpp is not None:
        return cpp.scatter_permuted(src, index)
    return torch.empty_like(src).index_copy_(0, index.long(), src)


def transpose_after_merge(crow: torch.Tensor, col: torch.Tensor, n_cols: int, block_rows: int,
                          source: torch.Tensor, old_slots: torch.Tensor, payloads: Sequence[torch.Tensor] = (),
                          method: str = "auto", walk: bool = False):
    """Row-block storage after a merge of the indices: ``(perm, ccol, row_t, slots, remap, carried)``, and with
    ``walk`` the new storage walk as a seventh element (our C++ writes it with the storage order).

    The first four are :func:`transpose_blocked` of the merged CSR (``crow``, ``col``). ``source`` is
    :func:`merge_entries`' old CSR slot of each new entry (-1: grown), ``old_slots`` the old storage position of
    each old CSR entry; ``remap[q]`` is the old storage position of new storage position q (-1: grown), and
    ``carried`` each of ``payloads`` (1-D, old storage order) in the new storage order, 0 at grown entries.
    Our C++ builds the remap and carries the payloads block by block inside the transpose, while each block's
    storage range is in cache.
    """
    for name, t in (("crow", crow), ("col", col), ("source", source), ("old_slots", old_slots)):
        _check_index(name, t)
    if source.shape != col.shape or not col.dtype == source.dtype == old_slots.dtype:
        raise ValueError(f"source must have one entry per new entry ({col.numel()}), and source, old_slots and "
                         "col one dtype")
    for t in payloads:
        if t.ndim != 1 or t.numel() != old_slots.numel():
            raise ValueError(f"payloads must be 1-D with one element per old entry ({old_slots.numel()}), "
                             f"got shape {tuple(t.shape)}")
    cpp = _cpp(col.device)
    if cpp is not None:
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise ValueError(f"block_rows must be an int >= 1, got {block_rows!r}")
        return cpp.transpose_after_merge(crow, col, n_cols, block_rows, source, old_slots, list(payloads), method,
                                         walk)
    perm, ccol, row_t, slots, *walked = transpose_blocked(crow, col, n_cols, block_rows, method, walk)
    if bool((source >= old_slots.numel()).any()) or bool((old_slots >= old_slots.numel()).any()):
        raise ValueError(f"source and old_slots must lie below {old_slots.numel()}")
    from_old = torch.where(source >= 0, old_slots[source.clamp(min=0).long()], source)
    remap = scatter_permuted(from_old, slots)
    return (perm, ccol, row_t, slots, remap, [gather_or_zero(t, remap) for t in payloads], *walked)


def gather_or_zero(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``src[index]`` with 0 where ``index < 0`` (state carried across a slot change; -1 marks new slots)."""
    _check_index("index", index)
    if src.ndim != 1:
        raise ValueError(f"src must be 1-D, got shape {tuple(src.shape)}")
    cpp = _cpp(src.device)
    if cpp is not None:
        return cpp.gather_or_zero(src, index)
    out = src[index.clamp(min=0)]
    out[index < 0] = 0
    return out


def coordinates_to_linear(coords: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, bool, bool]:
    """(int64 linear indices of (k, 2) int (row, col) pairs, all within the shape?, strictly increasing?)."""
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"coords must be a (k, 2) int32/int64 tensor, got shape {tuple(coords.shape)} "
                         f"dtype {coords.dtype}")
    cpp = _cpp(coords.device)
    if cpp is not None:
        return tuple(cpp.coordinates_to_linear(coords, n_rows, n_cols))  # type: ignore[return-value]
    r, c = coords[:, 0].long(), coords[:, 1].long()
    in_range = not coords.numel() or bool((r.min() >= 0) & (r.max() < n_rows) & (c.min() >= 0) & (c.max() < n_cols))
    lin = r * n_cols + c
    return lin, in_range, bool((lin[1:] > lin[:-1]).all())


def order_check(t: torch.Tensor, high: int) -> tuple[bool, bool]:
    """(every entry in [0, high)?, strictly increasing?) of a 1-D integer tensor, in one pass."""
    _check_index("t", t)
    cpp = _cpp(t.device)
    if cpp is not None:
        return tuple(cpp.order_check(t, high))  # type: ignore[return-value]
    in_range = not t.numel() or bool((t.min() >= 0) & (t.max() < high))
    return in_range, bool((t[1:] > t[:-1]).all())
