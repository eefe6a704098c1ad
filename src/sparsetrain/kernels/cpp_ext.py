"""Our compiled CPU kernels (cpu_kernels.cpp): JIT build, cached load, and wrappers with the public signatures.

The extension is built with ``torch.utils.cpp_extension.load`` into a directory keyed by a hash of the
source, the compiler flags, the torch version and the CPU model (``-march=native`` code must not run on
another CPU), so a changed source or a different machine rebuilds and an unchanged one loads in < 1 s.
``python -m sparsetrain.kernels.build`` does the build ahead of time.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from ..errors import ConfigError

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17")  # tuples: torch appends to the lists it is given
LDFLAGS = ("-fopenmp",)

# Batch tile width in bytes (see cpu_kernels.cpp): the accumulators of one tile live in registers, so a
# tile never exceeds 512 bytes (8 AVX-512 registers). Measured (docs/kernels.md): narrower tiles that keep
# the gathered working set in L2/L3 were 1.5-10x *slower* at every n (indices re-read per tile, more
# per-entry overhead), so we use the narrowest tile covering the whole batch row, up to 512 bytes.
TILE_CHOICES = (64, 128, 256, 512)
# Software prefetch distance (entries ahead) for the gathered rows, used only once the gathered operand takes
# half the last-level cache or more: there it halves the time per connection (n >= 65536 in float32, and
# at 65536 in bfloat16, whose 16 MiB operand is exactly half of L3: 190 -> 84 ms per step); below, the
# eight prefetch instructions per entry cost more than they hide (n = 16384: 3.0 vs 3.9 ns per entry).
PREFETCH = int(os.environ.get("SPARSETRAIN_CPU_PREFETCH", 16))
# Column blocking of the row walk (cpu_kernels.cpp, for_row_segments): "auto" picks blocks whose slice of the
# gathered operand fits L2 when rows are long enough to fill the segments; an integer forces the columns per
# block (0: never block).
COLUMN_BLOCK = os.environ.get("SPARSETRAIN_CPU_COLUMN_BLOCK", "auto")
MIN_SEGMENT = 64  # entries per row and block below which the per-segment overhead outweighs the L2 reuse
# L3 sweeps of the row walk (cpu_kernels.cpp, for_row_chunks): once the gathered operand outgrows half of L3,
# "auto" walks all rows once per block of columns whose slice of the operand is L3-resident (and turns the
# prefetch off): slices of a quarter of L3, else of half of L3, while rows keep 16 entries per pass (each
# pass re-reads every row's output or left operand once, so short segments cost more than the hits gain:
# half-L3 slices with 8 entries per pass, n = 262144 at fan-in 64, lost in two sessions of three, the fifth
# session's layer step 863 vs 811 ms; until then 4 entries per pass were allowed). An integer forces the
# columns per pass (0: one pass). "auto" does not sweep the input gradient, whose values are read through
# perm (random reads over the pass's share of the values compete with the slice for L3): measured slower at
# 65536, mixed at 131072 and 262144 (docs/kernels.md). bfloat16 walks are never swept (walk_plan).
SWEEP = os.environ.get("SPARSETRAIN_CPU_SWEEP", "auto")
SWEEP_SLICES = ((4, 16), (2, 16))  # (L3 fraction 1/k of a pass's slice, entries per row and pass it needs)
# Row-block storage of a compressed layer's values (CompressedLayout, transpose_csr in cpu_kernels.cpp): once the
# values take VALUE_BLOCK_L3_FRACTION of L3 or more, each block of rows holding about VALUE_BLOCK_BYTES of values (1024 rows at
# fan-in 64 in float32) keeps them in the order the transposed walk reaches them, so the fused backward streams them instead of fetching a random line per
# entry (n = 262144, fan-in 64: backward 17.4 -> 11.8 ns per weight in bfloat16, 37.0 -> 30.4 in float32),
# for an indirect but cache-local value read in the forward (+0.7-1.7 ns). "auto", a number of rows per
# block, or 0 (CSR order always): SPARSETRAIN_CPU_VALUE_BLOCK, read when a layout is built; the choice is kept
# in the layout's state (and checkpoints), so a resumed run stores its values as before. From the sixth session
# on, blocks were chosen from half of L3; since the eighth, from an eighth: values that fit L3 are still read
# at random by the backward (a random line per entry, and the gradient's lines written back), and with the
# forward in storage order below, the layer step (float32, B = 128, interleaved) measured 16384² at 99.5 %
# (5.4 MB) 36.4 -> 30.3 ms, 16384² at fan-in 64 (4 MiB) 26.8 -> 23.4; below 4 MiB nothing or a loss: 4096²
# at 98 % (1.3 MB) -3 %, 4096² at fan-in 64 (1 MiB) +2 %, 1024² at 90 % (0.4 MB) +9 %.
VALUE_BLOCK_BYTES = 256 * 1024
VALUE_BLOCK_L3_FRACTION = 8  # values of at least L3 / 8 (4 MiB of a 32 MiB L3) are stored in row blocks
# A row-block layer walks its storage order in both passes (spmm_storage: a block's sums in a scratch, each
# gathered row loaded once per block and column, the values streamed in place; grads_storage: a block's gy
# rows in L2) once a block uses each gathered row this many times on average; below that, the CSR walk through
# the slots (register sums, a random read of the block's values per entry) and the transposed walk. Measured,
# float32 forward, B = 128 (docs/kernels.md): 16384² at 98 % (4 uses)
# 41 -> 23 ms, at 90 % (4) 139 -> 119 ms, at 99.5 % (4) 9.1 -> 6.6 ms; fan-in 64 at 65536 (1 use) 61 -> 82 ms
# and 262144 (0.25) 262 -> 480 ms; bfloat16 at 90 % 92 -> 110 ms (its sums are float32: twice the bytes of
# its gathered rows), so bfloat16 keeps the CSR walks: its backward alone walks faster (16384² at 98 %, 800
# rows per block: 40.8 -> 33.3 ms; at 90 %, 160 rows: 171 -> 128), but the layer step gained only 2-9 %
# (98 %: 65.5 -> 64.3 ms at 400 rows, 68.3 -> 64.1 at 800; 90 %: 265 -> 238 at 320 rows, 260 -> 263 at 80),
# not worth a second policy. SPARSETRAIN_CPU_STORAGE_WALK = auto | 1 | 0 forces both passes for every dtype.
STORAGE_WALK_REUSE = 2
# A layer whose blocks walk their storage order takes larger blocks (value_block_rows): the more rows a block
# has, the more often its walk reuses a gathered row (in registers) and a gy row (in L2); the cap keeps the
# forward's sums of a block (rows x 512 bytes) within L2. Measured, float32 layer step, slots / storage walk,
# ms (eighth session): 16384² at 90 % with 40 rows 274 / 288, 160 rows 291 / 227, 640: 254 / 217, 1024:
# 277 / 232; at 98 % 200 rows 84.4 / 67.6, 800: 85.5 / 58.4; at 99.5 % 809 rows 27.2 / 24.2, 2048: 23.5 /
# 19.4; fan-in 64 at 16384 1024 rows 23.5 / 22.2, 2048: 25.5 / 19.9.
WALKED_BLOCK_SCALE = 4
WALKED_BLOCK_MAX_ROWS = 2048

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """Hash of everything the compiled binary depends on."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for part in (*CFLAGS, *LDFLAGS, torch.__version__, sys.version, _cpu_model()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def build_directory() -> Path:
    """Where the extension is built: $SPARSETRAIN_BUILD_DIR or ~/.cache/sparsetrain/kernels/<key>."""
    root = os.environ.get("SPARSETRAIN_BUILD_DIR") or Path.home() / ".cache" / "sparsetrain" / "kernels"
    return Path(root) / build_key()


def _extension_name() -> str:
    return f"sparsetrain_cpu_{build_key()}"


def load(verbose: bool = False) -> ModuleType:
    """Build (first time only, announcing it on stderr) and import the extension. Raises on failure."""
    global _module, _error
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise RuntimeError(_error)
        from torch.utils import cpp_extension

        name = _extension_name()
        try:
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            if not (directory / f"{name}.so").exists():
                print("sparsetrain: compiling CPU kernels (once, ~1 min)", file=sys.stderr, flush=True)
            _module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                                         extra_ldflags=list(LDFLAGS), build_directory=str(directory), verbose=verbose)
        except Exception as exc:  # record why, so every later call reports the same reason without retrying
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            _error = f"{type(exc).__name__}: {first_line}"
            raise RuntimeError(_error) from exc
        return _module


def tile_bytes(R: int, element_size: int) -> int:
    """Narrowest tile (bytes) that covers a batch row of R elements, at most 512 bytes."""
    return next((t for t in TILE_CHOICES if t >= R * element_size), TILE_CHOICES[-1])


def accumulator_tile(dense_fm: torch.Tensor) -> int:
    """:func:`tile_bytes` of the accumulators for a batch row of ``dense_fm``. The kernels sum bfloat16
    operands in float32, so a bfloat16 tile of W elements takes the registers of a float32 one, and it is at
    least 128 bytes (32 elements: one 64-byte line of bfloat16, which the kernels split into two registers)."""
    if dense_fm.dtype == torch.bfloat16:
        return max(128, tile_bytes(dense_fm.shape[1], 4))
    return tile_bytes(dense_fm.shape[1], dense_fm.element_size())


def _cache_bytes(level: int, default: int) -> int:
    """Size of cpu0's cache of this level from sysfs (the default when unknown)."""
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if int((entry / "level").read_text()) == level and (entry / "type").read_text().strip() != "Instruction":
                text = (entry / "size").read_text().strip()
                return int(text[:-1]) * 1024 if text.endswith("K") else int(text)
        except (OSError, ValueError):
            continue
    return default


L2_BYTES = _cache_bytes(2, 2**20)
L3_BYTES = _cache_bytes(3, 32 * 2**20)


def prefetch_distance(dense_fm: torch.Tensor) -> int:
    """PREFETCH when the gathered operand takes half the last-level cache or more, else 0."""
    return PREFETCH if dense_fm.numel() * dense_fm.element_size() >= L3_BYTES // 2 else 0


def _forced(name: str, value: str, unit: str) -> int | None:
    """The integer an 'auto'-or-number environment setting forces, None for 'auto'."""
    if value == "auto":
        return None
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r}: allowed are 'auto' or a number of {unit} (0: off)")
    return int(value)


def forced_value_block() -> int | None:
    """The rows per value block SPARSETRAIN_CPU_VALUE_BLOCK forces (0: CSR order), None for 'auto'."""
    return _forced("SPARSETRAIN_CPU_VALUE_BLOCK", os.environ.get("SPARSETRAIN_CPU_VALUE_BLOCK", "auto"),
                   "rows per block")


def value_block_rows(n_rows: int, n_cols: int, nnz: int, dtype: torch.dtype) -> int:
    """Rows per value block for a new CPU layout of ``nnz`` values of ``dtype`` in ``n_rows`` x ``n_cols``
    (0: CSR order): once the values take an eighth of L3 or more (VALUE_BLOCK_L3_FRACTION), blocks of about
    VALUE_BLOCK_BYTES of values, WALKED_BLOCK_SCALE times that (at most WALKED_BLOCK_MAX_ROWS rows) where such
    blocks would walk their storage order (storage_walk_reuses); or what SPARSETRAIN_CPU_VALUE_BLOCK forces."""
    forced = forced_value_block()
    if forced is not None:
        return forced
    element_size = dtype.itemsize
    if nnz * element_size < L3_BYTES // VALUE_BLOCK_L3_FRACTION or n_rows == 0:
        return 0
    rows = max(1, min(n_rows, VALUE_BLOCK_BYTES // (max(1, nnz // n_rows) * element_size)))
    if storage_walk_reuses(n_rows, n_cols, nnz, rows, dtype):  # the default rule: blocks do not follow a force
        rows = max(rows, min(n_rows, WALKED_BLOCK_MAX_ROWS, rows * WALKED_BLOCK_SCALE))
    return rows


def mean_fan(crow: torch.Tensor) -> int:
    """Entries per row of a CSR, rounded down (0 for no rows): what the walk policies size segments by."""
    n_rows = crow.numel() - 1
    return int(crow[-1]) // n_rows if n_rows > 0 else 0


def column_block(n_cols: int, fan: int, tile: int) -> int:
    """Columns per block for the row walk, 0 for none: enough blocks that one block's slice of the gathered
    operand (n_cols rows of `tile` bytes) takes at most half of L2, as long as each row still has
    MIN_SEGMENT entries per block and the slice fits L2 whole."""
    forced = _forced("SPARSETRAIN_CPU_COLUMN_BLOCK", COLUMN_BLOCK, "columns per block")
    if forced is not None:
        return forced
    footprint = n_cols * tile
    wanted = -(-footprint // (L2_BYTES // 2))
    blocks = min(wanted, fan // MIN_SEGMENT)
    if blocks < 2 or footprint > blocks * L2_BYTES:
        return 0
    return -(-n_cols // blocks)


def sweep_columns(n_cols: int, fan: int, tile: int, permuted: bool = False) -> int:
    """Columns per L3 pass of the row walk, 0 for a single pass: when the gathered operand (n_cols rows of
    `tile` bytes) exceeds half of L3, the first of SWEEP_SLICES whose passes leave every row (of `fan`
    entries) enough entries. A walk reading its values through a permutation sweeps only when forced."""
    forced = _forced("SPARSETRAIN_CPU_SWEEP", SWEEP, "columns per pass")
    if forced is not None:
        return forced
    if permuted or n_cols * tile <= L3_BYTES // 2:
        return 0
    for fraction, min_entries in SWEEP_SLICES:
        columns = max(1, L3_BYTES // fraction // tile)
        if fan >= min_entries * -(-n_cols // columns):
            return columns
    return 0


def walk_plan(crow: torch.Tensor, gathered_fm: torch.Tensor, permuted: bool = False) -> tuple[int, int, int, int]:
    """(tile bytes, prefetch distance, column block, sweep columns) for a row walk over `crow` that gathers
    rows of `gathered_fm` (`permuted`: reading its values through a permutation): the prefetch only when the
    operand is beyond L3 and not swept through it. A bfloat16 walk is never swept (its rows' float32 sums
    would have to wait in memory between passes), and its gathered rows are half its accumulator tile."""
    tile = accumulator_tile(gathered_fm)
    n_cols, fan = gathered_fm.shape[0], mean_fan(crow)
    if gathered_fm.dtype == torch.bfloat16:
        if _forced("SPARSETRAIN_CPU_SWEEP", SWEEP, "columns per pass"):
            raise ConfigError(f"SPARSETRAIN_CPU_SWEEP={SWEEP!r}: bfloat16 walks are never swept (their float32 "
                              "row sums would have to wait in memory between passes); for them use 'auto' or 0")
        return tile, prefetch_distance(gathered_fm), column_block(n_cols, fan, tile // 2), 0
    sweep = sweep_columns(n_cols, fan, tile, permuted)
    return tile, 0 if sweep else prefetch_distance(gathered_fm), column_block(n_cols, fan, tile), sweep


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
         n_cols: int) -> torch.Tensor:
    """(n_rows, R) = CSR(n_rows x n_cols) @ dense_fm (n_cols, R)."""
    dense_fm = dense_fm.contiguous()
    return load().spmm(crow.contiguous(), col.contiguous(), values.contiguous(), dense_fm, None,
                       *walk_plan(crow, dense_fm), False)


def spmm_permuted(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, perm: torch.Tensor,
                  dense_fm: torch.Tensor) -> torch.Tensor:
    """:func:`spmm` with entry p's value read as ``values[perm[p]]`` (no gathered copy of the values).

    ``perm`` and ``col`` may be the two columns of one (nnz, 2) tensor, as :func:`transpose_csr` returns them:
    the kernel then reads them as one stream of pairs.
    """
    dense_fm = dense_fm.contiguous()
    plan = walk_plan(crow, dense_fm, permuted=True)
    pairs = _pairs_of(perm, col)
    if pairs is not None:
        return load().spmm(crow.contiguous(), pairs, values.contiguous(), dense_fm, None, *plan, True)
    return load().spmm(crow.contiguous(), col.contiguous(), values.contiguous(), dense_fm, perm.contiguous(),
                       *plan, False)


def spmm_storage(crow: torch.Tensor, walk: torch.Tensor, values: torch.Tensor, dense_fm: torch.Tensor,
                 block_rows: int) -> torch.Tensor:
    """:func:`spmm` of a row-block layout walked in storage order: ``walk`` is its :func:`storage_walk`, the
    values are in storage order. Each block's sums stay in a scratch while the block's entries add the
    gathered rows column by column (one register load of a row serves all its uses in the block);
    bitwise the CSR walk's result."""
    dense_fm = dense_fm.contiguous()
    return load().spmm_storage(crow.contiguous(), walk, values.contiguous(), dense_fm, block_rows,
                               accumulator_tile(dense_fm))


def grads_storage(crow: torch.Tensor, walk: torch.Tensor, ccol: torch.Tensor, values: torch.Tensor,
                  gy_fm: torch.Tensor, x_fm: torch.Tensor, block_rows: int,
                  input_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x_fm, grad_values in storage order) of a row-block layer walked in storage order (``grad_x_fm``
    empty without ``input_grad``): each block's gy rows stay in L2 while its column runs use them, where
    :func:`grads_transposed` gathers a random gy row per entry; bitwise its results (bfloat16: grad_x summed
    in float32 and rounded once, as there)."""
    gy_fm, x_fm = gy_fm.contiguous(), x_fm.contiguous()
    return tuple(load().grads_storage(crow.contiguous(), walk, ccol.to(walk.dtype).contiguous(),  # type: ignore[return-value]
                                      values.contiguous(), gy_fm, x_fm, block_rows, accumulator_tile(x_fm),
                                      input_grad))


def storage_walk(crow: torch.Tensor, col: torch.Tensor, slots: torch.Tensor, block_rows: int) -> torch.Tensor:
    """(nnz, 2) (column, row) of each storage position of a row-block layout, from its CSR and ``slots``."""
    return load().storage_walk(crow.contiguous(), col.contiguous(), slots.contiguous(), block_rows)


def forced_storage_walk() -> bool | None:
    """What SPARSETRAIN_CPU_STORAGE_WALK forces (1: walk, 0: never), None for 'auto'."""
    setting = os.environ.get("SPARSETRAIN_CPU_STORAGE_WALK", "auto")
    if setting not in ("auto", "0", "1"):
        raise ConfigError(f"SPARSETRAIN_CPU_STORAGE_WALK={setting!r}: allowed are 'auto', '1' (always) or '0' (never)")
    return None if setting == "auto" else setting == "1"


def storage_walk_reuses(n_rows: int, n_cols: int, nnz: int, block_rows: int, dtype: torch.dtype) -> bool:
    """The default rule for walking a row-block layer's storage order: float32/float64 values whose blocks
    use each gathered row STORAGE_WALK_REUSE times or more on average (not bfloat16: its forward's float32
    sums move twice the bytes of its gathered rows, slower; its backward alone gained 2-9 % of a step)."""
    if block_rows <= 0 or dtype not in (torch.float32, torch.float64) or n_rows == 0 or n_cols == 0:
        return False
    return min(block_rows, n_rows) * nnz >= STORAGE_WALK_REUSE * n_rows * n_cols


def storage_walk_pays(n_rows: int, n_cols: int, nnz: int, block_rows: int, dtype: torch.dtype) -> bool:
    """Whether a row-block layer walks its storage order (:func:`spmm_storage` forward, :func:`grads_storage`
    backward) rather than the CSR through its slots and the transposed CSR: what
    SPARSETRAIN_CPU_STORAGE_WALK forces, else :func:`storage_walk_reuses`."""
    forced = forced_storage_walk()
    if block_rows <= 0:
        return False
    return storage_walk_reuses(n_rows, n_cols, nnz, block_rows, dtype) if forced is None else forced


def grads_transposed(ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, values: torch.Tensor,
                     gy_fm: torch.Tensor, x_fm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x_fm, grad_values) of y = W x from one walk of W's transposed CSR: each entry's gy row is
    gathered once for both (:func:`spmm_permuted` plus :func:`sddmm` gather a row per entry each)."""
    gy_fm = gy_fm.contiguous()
    tile, prefetch, block, _ = walk_plan(ccol, gy_fm, permuted=True)
    pairs = _pairs_of(perm_t, row_t)
    if pairs is None:  # separate tensors: interleave them once (the kernel reads (slot, row) pairs)
        pairs = torch.stack((perm_t, row_t.to(perm_t.dtype)), dim=1)
    return tuple(load().grads_transposed(ccol.to(pairs.dtype).contiguous(), pairs, values.contiguous(),  # type: ignore[return-value]
                                         gy_fm, x_fm.contiguous(), tile, prefetch, block))


def _pairs_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | None:
    """The contiguous (n, 2) tensor whose columns are ``first`` and ``second``, when they are exactly that."""
    if (first.ndim == 1 and first.shape == second.shape and first.dtype == second.dtype and first.stride() == (2,)
            and second.stride() == (2,) and second.data_ptr() == first.data_ptr() + first.element_size()):
        return first.as_strided((first.numel(), 2), (2, 1))
    return None


def transposed_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t.t().contiguous() for a contiguous 2-D tensor: 16 x 16 register blocks (AVX-512, float32) or cache
    tiles, in parallel; an output larger than half of L3 is written with non-temporal stores (it would not
    stay cached for its reader anyway, and they skip reading every destination line before writing it)."""
    t = t.contiguous()
    return load().transpose(t, t.numel() * t.element_size() > L3_BYTES // 2)


def sddmm(crow: torch.Tensor, col: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """out[j] = <left_fm[row_j], right_fm[col_j]> at CSR coordinates."""
    right_fm = right_fm.contiguous()
    return load().sddmm(crow.contiguous(), col.contiguous(), left_fm.contiguous(), right_fm, False,
                        *walk_plan(crow, right_fm))


def sddmm_coo(rows: torch.Tensor, cols: torch.Tensor, left_fm: torch.Tensor, right_fm: torch.Tensor) -> torch.Tensor:
    """out[j] = <left_fm[rows_j], right_fm[cols_j]> at explicit (row-major sorted) coordinates."""
    right_fm = right_fm.contiguous()
    tile = accumulator_tile(right_fm)
    if cols.dtype != rows.dtype:
        cols = cols.to(rows.dtype)
    return load().sddmm(rows.contiguous(), cols.contiguous(), left_fm.contiguous(), right_fm, True, tile,
                        prefetch_distance(right_fm), 0, 0)


def transpose_order(col: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort: (perm, ccol), perm[j] = slot of the j-th entry in column-major order."""
    return tuple(load().transpose_order(col.contiguous(), int(n_cols)))  # type: ignore[return-value]


# --- diagonal layers (dispatch and torch versions in diagonal.py) --------------------------------------
def diag_gather(z: torch.Tensor, offsets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, D): out[b, t] = Σ_k w[k, t] · z[b, (t + offsets[k]) mod P]."""
    return load().diag_gather(z.contiguous(), offsets.long().contiguous(), w.contiguous())


def diag_scatter(u: torch.Tensor, offsets: torch.Tensor, w: torch.Tensor, p: int) -> torch.Tensor:
    """(B, P): out[b, (t + offsets[k]) mod P] += w[k, t] · u[b, t]."""
    return load().diag_scatter(u.contiguous(), offsets.long().contiguous(), w.contiguous(), int(p))


def diag_correlate(z: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(K, D): out[k, t] = Σ_b u[b, t] · z[b, (t + offsets[k]) mod P]."""
    return load().diag_correlate(z.contiguous(), u.contiguous(), offsets.long().contiguous())


# --- topology operations (dispatch and torch versions in topology.py) ----------------------------------
def linear_index(row: torch.Tensor, col: torch.Tensor, n_cols: int) -> torch.Tensor:
    return load().linear_index(row.contiguous(), col.contiguous(), int(n_cols))


def rows_to_crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    return load().rows_to_crow(rows.contiguous(), int(n_rows))


def linear_to_csr(lin: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(load().linear_to_csr(lin.contiguous(), int(n_rows), int(n_cols)))  # type: ignore[return-value]


def sorted_uniform_draws(total: int, m: int, seed: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    return load().sorted_uniform_draws(int(total), int(m), int(seed), None if exclude is None else exclude.contiguous())


def unique_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return load().unique_difference(a.contiguous(), b.contiguous())


def select_k(scores: torch.Tensor, k: int, largest: bool, absolute: bool = False) -> torch.Tensor:
    return load().select_k(scores.contiguous(), int(k), bool(largest), bool(absolute))


def merge_entries(crow: torch.Tensor, col: torch.Tensor, drop: torch.Tensor, new_lin: torch.Tensor, n_cols: int,
                  payloads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, list[torch.Tensor]]:
    return tuple(load().merge_entries(crow.contiguous(), col.contiguous(), drop.contiguous(),  # type: ignore[return-value]
                                      new_lin.contiguous(), int(n_cols), payloads))


def transpose_csr(crow: torch.Tensor, col: torch.Tensor, n_cols: int,
                  bucket_bits: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perm, ccol, row_t); perm and row_t are the two columns of one (nnz, 2) tensor (see spmm_permuted).

    ``bucket_bits``: -1 picks one counting pass or two (wide layers: buckets of 2^k columns first), 0 forces
    one, k > 0 two with 2^k columns per bucket; all give the same result."""
    pairs, ccol, _, _ = load().transpose_csr(crow.contiguous(), col.contiguous(), int(n_cols), 0, 0, int(bucket_bits),
                                             False)
    return pairs[:, 0], ccol, pairs[:, 1]


BLOCK_SLOT_METHODS = {"auto": 0, "columns": 1, "walk": 2}


def transpose_blocked(crow: torch.Tensor, col: torch.Tensor, n_cols: int, block_rows: int,
                      method: str = "auto", walk: bool = False) -> tuple[torch.Tensor, ...]:
    """:func:`transpose_csr` for row-block value storage: (perm, ccol, row_t, slots), perm in storage positions;
    with ``walk`` also the storage walk (written with the storage order by columns)."""
    pairs, ccol, slots, walked = load().transpose_csr(crow.contiguous(), col.contiguous(), int(n_cols),
                                                      int(block_rows), BLOCK_SLOT_METHODS[method], -1, bool(walk))
    return (pairs[:, 0], ccol, pairs[:, 1], slots, *((walked,) if walk else ()))


def transpose_after_merge(crow: torch.Tensor, col: torch.Tensor, n_cols: int, block_rows: int, source: torch.Tensor,
                          old_slots: torch.Tensor, payloads: list[torch.Tensor], method: str = "auto",
                          walk: bool = False):
    """(perm, ccol, row_t, slots, remap, carried[, walk]): :func:`transpose_blocked` and the merge's storage
    remap."""
    pairs, ccol, slots, remap, carried, walked = load().transpose_after_merge(
        crow.contiguous(), col.contiguous(), int(n_cols), int(block_rows), BLOCK_SLOT_METHODS[method],
        source.contiguous(), old_slots.contiguous(), [t.contiguous() for t in payloads], bool(walk))
    return (pairs[:, 0], ccol, pairs[:, 1], slots, remap, list(carried), *((walked,) if walk else ()))


def scatter_permuted(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return load().scatter_permuted(src, index.contiguous())


def gather_or_zero(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return load().gather_or_zero(src, index.contiguous())


def coordinates_to_linear(coords: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, bool, bool]:
    return tuple(load().coordinates_to_linear(coords.contiguous(), int(n_rows), int(n_cols)))  # type: ignore[return-value]


def order_check(t: torch.Tensor, high: int) -> tuple[bool, bool]:
    return tuple(load().order_check(t.contiguous(), int(high)))  # type: ignore[return-value]


def sample_and_score(crow: torch.Tensor, col: torch.Tensor, n_in: int, m: int, seed: int,
                     row_weights: torch.Tensor | None, col_weights: torch.Tensor | None,
                     parts: list[tuple[torch.Tensor, torch.Tensor]],
                     absolute: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lefts = [gy.contiguous() for _, gy in parts]
    rights = [x.contiguous() for x, _ in parts]
    tile = max(accumulator_tile(x) for x in rights)
    return tuple(load().sample_and_score(crow.contiguous(), col.contiguous(), int(n_in), int(m), int(seed),  # type: ignore[return-value]
                                         row_weights, col_weights, lefts, rights, bool(absolute), tile,
                                         max(prefetch_distance(x) for x in rights)))


def csr_linear(crow: torch.Tensor, col: torch.Tensor, slots: torch.Tensor, n_cols: int) -> torch.Tensor:
    return load().csr_linear(crow.contiguous(), col.contiguous(), slots.contiguous(), int(n_cols))
