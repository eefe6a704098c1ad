// CPU kernels of a compressed sparse layer: CSR SpMM, SDDMM (CSR and COO) and a counting-sort transpose.
//
// Dense operands are feature-major: row c of an (n, R) tensor holds one feature for all R batch rows,
// so every inner loop is a contiguous SIMD axpy (SpMM) or dot (SDDMM) over R.
//
// Locality: the batch dimension is processed in tiles of W elements (at most 512 bytes) held in named SIMD
// registers (Tile); long rows are walked block of columns by block of columns so a block of the gathered
// operand stays in L2 (for_row_segments); once that operand outgrows L3, either all rows are walked once
// per slice of columns that fits L3 (an L3 sweep, for_row_chunks) or the gathered rows are software-
// prefetched a fixed number of entries ahead (the Python side decides, cpp_ext.walk_plan).
// (Narrower batch tiles were measured and lost everywhere: see docs/kernels.md.)
//
// Parallelism: SpMM and CSR SDDMM split rows into chunks of equal (nnz + rows) cost, COO SDDMM splits
// entries into equal ranges; chunks are scheduled dynamically (a static split stalls on the slowest).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int kChunksPerThread = 8;
constexpr int kCacheLine = 64;
// Below this many multiply-adds a call runs on one thread: waking a team costs more than it saves, and on
// a shared (oversubscribed) machine a barrier can stall for a whole scheduler time slice.
constexpr int64_t kSerialWork = int64_t(1) << 18;

inline int team_size(int64_t work) { return work < kSerialWork ? 1 : std::max(1, at::get_num_threads()); }

// f(c) for c in [0, n_chunks) on nt threads, chunks handed out dynamically (for callers inside dispatch
// macros, where a pragma cannot stand).
template <typename F>
void parallel_chunks(int nt, int64_t n_chunks, F&& f) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; ++c) f(c);
}

template <typename I>
inline void prefetch_tile(const void* base, int64_t bytes) {
  const char* p = static_cast<const char*>(base);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 0, 1);
}

// 64-byte SIMD vectors (GCC vector extensions: one AVX-512 register, two AVX2 or four SSE registers).
template <typename T> struct Simd;
template <> struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef float Unaligned __attribute__((vector_size(64), aligned(4), __may_alias__));
};
template <> struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef double Unaligned __attribute__((vector_size(64), aligned(8), __may_alias__));
};

// The type a kernel sums in for operands stored as T: T itself, except bfloat16, which is widened to
// float (exactly) as it is loaded and rounded back (to nearest even) once, when a result is stored. A
// bfloat16 operand halves the bytes every gathered row moves; the arithmetic stays float32.
template <typename T> struct Acc { using type = T; };
template <> struct Acc<c10::BFloat16> { using type = float; };
template <typename T> using acc_t = typename Acc<T>::type;

// A 64-byte chunk of T as kPer vectors of acc_t<T>, and back. bfloat16 is the high half of a float, so a
// chunk of 32 is split into its even and its odd elements (a shift and a mask, no shuffle); sums keep that
// order in registers, and a store rounds each lane to nearest even (NaN to the quiet NaN, as
// c10::BFloat16 does) and interleaves the halves again.
template <typename T>
struct Lanes {
  using V = typename Simd<T>::V;
  static constexpr int kPer = 1, kElements = 64 / static_cast<int>(sizeof(T));
  static void load(const T* p, V* v) { v[0] = *reinterpret_cast<const typename Simd<T>::Unaligned*>(p); }
  static void store(T* p, const V* v) { *reinterpret_cast<typename Simd<T>::Unaligned*>(p) = v[0]; }
};
template <>
struct Lanes<c10::BFloat16> {
  using V = Simd<float>::V;
  typedef uint32_t Bits __attribute__((vector_size(64)));
  typedef uint32_t BitsUnaligned __attribute__((vector_size(64), aligned(2), __may_alias__));
  static constexpr int kPer = 2, kElements = 32;
  static void load(const c10::BFloat16* p, V* v) {
    const Bits b = *reinterpret_cast<const BitsUnaligned*>(p);
    const Bits even = b << 16, odd = b & 0xFFFF0000u;
    v[0] = reinterpret_cast<const V&>(even);
    v[1] = reinterpret_cast<const V&>(odd);
  }
  static Bits rounded(V x) {  // x rounded to bfloat16, in the high half of each lane
    const Bits b = reinterpret_cast<const Bits&>(x);
    const Bits nan = reinterpret_cast<Bits>(x != x);
    return ((b + 0x7FFFu + ((b >> 16) & 1u)) & ~nan) | (nan & 0x7FC00000u);
  }
  static void store(c10::BFloat16* p, const V* v) {
    *reinterpret_cast<BitsUnaligned*>(p) = (rounded(v[0]) >> 16) | (rounded(v[1]) & 0xFFFF0000u);
  }
};

// A batch tile of W elements held as named SIMD registers of acc_t<T>. Written with explicit vectors because
// GCC keeps a plain `T acc[W]` accumulator on the stack (a load and a store around every FMA): measured 2x
// slower.
template <typename T, int W>
struct Tile {
  using C = acc_t<T>;
  using L = Lanes<T>;
  using V = typename Simd<C>::V;
  static constexpr int kChunks = W / L::kElements, kPer = L::kPer, kVectors = kChunks * kPer;
  static_assert(W % L::kElements == 0 && kChunks >= 1, "a tile is a whole number of 64-byte chunks");
  V v[kVectors];

  void zero() {
#pragma GCC unroll 16
    for (int q = 0; q < kVectors; ++q) v[q] = V{};
  }
  void load(const T* p) {
#pragma GCC unroll 8
    for (int q = 0; q < kChunks; ++q) L::load(p + q * L::kElements, v + q * kPer);
  }
  void store(T* p) const {
#pragma GCC unroll 8
    for (int q = 0; q < kChunks; ++q) L::store(p + q * L::kElements, v + q * kPer);
  }
  void axpy(C a, const T* x) {  // this += a * x
    const V va = V{} + a;
#pragma GCC unroll 8
    for (int q = 0; q < kChunks; ++q) {
      V t[kPer];
      L::load(x + q * L::kElements, t);
      for (int k = 0; k < kPer; ++k) v[q * kPer + k] += va * t[k];
    }
  }
  C dot(const T* x) const {
    V t[kPer];
    L::load(x, t);
    V s = v[0] * t[0];
    for (int k = 1; k < kPer; ++k) s += v[k] * t[k];
#pragma GCC unroll 8
    for (int q = 1; q < kChunks; ++q) {
      L::load(x + q * L::kElements, t);
      for (int k = 0; k < kPer; ++k) s += v[q * kPer + k] * t[k];
    }
    return sum_lanes(s);
  }
  // Pairwise sum of the lanes: halves added as vectors (a scalar loop would be a 16-add dependency chain).
  static C sum_lanes(V s) {
    typedef C Half __attribute__((vector_size(32)));
    typedef C Quarter __attribute__((vector_size(16)));
    Half lo, hi;
    std::memcpy(&lo, &s, 32);
    std::memcpy(&hi, reinterpret_cast<const char*>(&s) + 32, 32);
    const Half h = lo + hi;
    Quarter a, b;
    std::memcpy(&a, &h, 16);
    std::memcpy(&b, reinterpret_cast<const char*>(&h) + 16, 16);
    const Quarter q = a + b;
    if constexpr (sizeof(C) == 4) return (q[0] + q[2]) + (q[1] + q[3]);
    else return q[0] + q[1];
  }
};

// The tile of a kernel's dot products against gathered rows (SDDMM, the fused backward's value gradient).
// bfloat16 on a CPU with the bfloat16 pair instruction: the row held as it is stored (32 elements a
// register) and each lane adding two exact products per instruction (vdpbf16ps), half the instructions of
// widening both sides; otherwise the Tile itself. (vdpbf16ps treats bfloat16 denormals as zero.)
#if defined(__AVX512BF16__)
template <int W>
struct PairDotTile {
  static constexpr int kVectors = W / 32;
  __m512bh r[kVectors];
  static __m512bh raw(const c10::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  void load(const c10::BFloat16* p) {
#pragma GCC unroll 8
    for (int q = 0; q < kVectors; ++q) r[q] = raw(p + 32 * q);
  }
  float dot(const c10::BFloat16* x) const {
    __m512 s0 = _mm512_dpbf16_ps(_mm512_setzero_ps(), r[0], raw(x)), s1 = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int q = 1; q < kVectors; ++q) {
      if (q % 2) s1 = _mm512_dpbf16_ps(s1, r[q], raw(x + 32 * q));
      else s0 = _mm512_dpbf16_ps(s0, r[q], raw(x + 32 * q));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }
};
template <typename T, int W> struct DotTileOf { using type = Tile<T, W>; };
template <int W> struct DotTileOf<c10::BFloat16, W> { using type = PairDotTile<W>; };
template <typename T, int W> using DotTile = typename DotTileOf<T, W>::type;
#else
template <typename T, int W> using DotTile = Tile<T, W>;
#endif

// Row boundaries of n_chunks chunks of roughly equal cost crow[i] + i (entries plus per-row overhead).
template <typename I>
std::vector<int64_t> balanced_row_chunks(const I* crow, int64_t n_rows, int64_t n_chunks) {
  std::vector<int64_t> bounds(n_chunks + 1);
  const int64_t total = static_cast<int64_t>(crow[n_rows]) + n_rows;
  bounds[0] = 0;
  for (int64_t c = 1; c < n_chunks; ++c) {
    const int64_t target = total * c / n_chunks;
    int64_t lo = bounds[c - 1], hi = n_rows;  // first row i with crow[i] + i >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(crow[mid]) + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  bounds[n_chunks] = n_rows;
  return bounds;
}

// Row of slot i of a CSR (binary search of the row pointers): where a walk over a range of slots starts.
template <typename I>
inline int64_t row_of_slot(const I* crow, int64_t n_rows, int64_t i) {
  return std::upper_bound(crow, crow + n_rows + 1, static_cast<I>(i)) - crow - 1;
}

template <typename I>
void check_row_pointers(const I* crow, int64_t n_rows, int64_t nnz) {
  bool ok = crow[0] == 0 && static_cast<int64_t>(crow[n_rows]) == nnz;
  for (int64_t r = 0; ok && r < n_rows; ++r) ok = crow[r] <= crow[r + 1];
  TORCH_CHECK_VALUE(ok, "crow must be non-decreasing from 0 to len(col) = ", nnz);
}

template <typename I>
void check_columns(const I* col, int64_t nnz, int64_t n_cols) {
  bool bad = false;
#pragma omp parallel for num_threads(team_size(nnz)) schedule(static) reduction(|| : bad)
  for (int64_t p = 0; p < nnz; ++p) bad = bad || col[p] < 0 || col[p] >= n_cols;
  TORCH_CHECK_VALUE(!bad, "col has entries outside [0, n_cols=", n_cols, ")");
}

// Column blocking. A row's entries are sorted by column, so the entries of rows [row_begin, row_end) that
// fall in a block of `block` columns are one contiguous segment per row. Walking a tile of kTileRows rows
// block by block keeps the block's slice of the gathered operand (and the tile's rows of the other one) in
// L2 while it is reused, instead of streaming it from L3 once per entry. Segment starts are per-row cursors
// advanced block by block (no stored index). seg(i, p_begin, p_end, limit, first) handles row i's entries
// from p_begin up to p_end or the first column >= limit, and returns where it stopped (testing the column
// in the compute loop is cheaper than finding the segment end first); first: the row's first block; last:
// its last block of the whole walk; slot: the row's place in its tile of kTileRows rows (0 when unblocked),
// where a kernel whose sums are wider than its output keeps them between blocks (RowSums).
// block <= 0 or >= n_cols: one call per row, the plain CSR walk.
constexpr int64_t kTileRows = 256;
constexpr int64_t kValuePrefetch = 32;  // entries ahead for values read through a permutation
constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();

// One pass of the row walk over the columns [begin, end) (end >= n_cols: to the end of every row). A whole
// walk is one pass; an L3 sweep (for_row_chunks) makes one pass per block of columns over all rows, each
// row resuming where the last pass left it (cursor, one per row; nullptr: a single pass from crow).
struct Pass {
  int64_t begin = 0, end = kNoLimit;
  int64_t* cursor = nullptr;
};

template <typename I, typename F>
void for_row_segments(const I* crow, int64_t row_begin, int64_t row_end, int64_t n_cols, int64_t block,
                      const Pass& pass, F&& seg) {
  const bool fresh = pass.begin == 0;
  auto start = [&](int64_t i) { return fresh ? static_cast<int64_t>(crow[i]) : pass.cursor[i]; };
  auto stop = [&](int64_t i, int64_t p) { if (pass.cursor != nullptr) pass.cursor[i] = p; };
  const int64_t end = std::min(pass.end, n_cols);
  const bool final_pass = end >= n_cols;
  if (block <= 0 || pass.begin + block >= end) {
    const int64_t limit = final_pass ? kNoLimit : end;
    for (int64_t i = row_begin; i < row_end; ++i)
      stop(i, seg(i, start(i), static_cast<int64_t>(crow[i + 1]), limit, fresh, final_pass, int64_t(0)));
    return;
  }
  int64_t cursor[kTileRows];
  for (int64_t tb = row_begin; tb < row_end; tb += kTileRows) {
    const int64_t te = std::min(tb + kTileRows, row_end);
    for (int64_t i = tb; i < te; ++i) cursor[i - tb] = start(i);
    for (int64_t limit = pass.begin + block; limit - block < end; limit += block) {
      const bool first = fresh && limit == block, last = final_pass && limit >= end;
      const int64_t lim = limit >= end ? (final_pass ? kNoLimit : end) : limit;
      for (int64_t i = tb; i < te; ++i)
        cursor[i - tb] = seg(i, cursor[i - tb], static_cast<int64_t>(crow[i + 1]), lim, first, last, i - tb);
    }
    for (int64_t i = tb; i < te; ++i) stop(i, cursor[i - tb]);
  }
}

// Where a row's batch-tile sums live between the column blocks of a walk: in the output row itself when the
// sums are T, else (bfloat16) in a thread's float32 scratch of kTileRows tile rows, so they are rounded to T
// once, at the row's last block. load/store: the register tile (or the scalar path's array) from/to there.
template <typename T, int W>
struct RowSums {
  using C = acc_t<T>;
  static constexpr bool kWide = !std::is_same_v<T, C>;
  C* scratch = nullptr;
  RowSums() {
    if constexpr (kWide) {
      static thread_local std::vector<C> buffer;
      buffer.resize(kTileRows * W);
      scratch = buffer.data();
    }
  }
  void load(Tile<T, W>& t, const T* o, bool first, int64_t slot) const {
    if (first) t.zero();
    else if constexpr (kWide) std::memcpy(t.v, scratch + slot * W, sizeof(t.v));
    else t.load(o);
  }
  void store(const Tile<T, W>& t, T* o, bool last, int64_t slot) const {
    if (kWide && !last) std::memcpy(scratch + slot * W, t.v, sizeof(t.v));
    else t.store(o);
  }
  void load(C* a, const T* o, int64_t w, bool first, int64_t slot) const {
    const C* from = kWide ? scratch + slot * W : nullptr;
    for (int64_t k = 0; k < w; ++k) a[k] = first ? C(0) : kWide ? from[k] : C(o[k]);
  }
  void store(const C* a, T* o, int64_t w, bool last, int64_t slot) const {
    if (kWide && !last) std::memcpy(scratch + slot * W, a, w * sizeof(C));
    else for (int64_t k = 0; k < w; ++k) o[k] = T(a[k]);
  }
};

// out[i, r0:r0+w] = sum_p v(p) * x[col[p], r0:r0+w] for rows [row_begin, row_end), with v(p) = val[p], or
// val[perm[p]] when perm is given (the transposed CSR reading the row-major values in place, the value
// slots prefetched ahead). W is the tile width; w == W takes the register-resident path, w < W (the
// batch's last, partial tile) the scalar one, which sums in a local acc_t<T> copy of the output row.
// S: the stride of col and perm in elements (2: the two are interleaved (slot, column) pairs, the transposed
// CSR as its build leaves it).
template <typename T, typename I, int W, int S>
void spmm_rows(const I* crow, const I* col, const T* val, const I* perm, const T* x, T* out, int64_t R, int64_t r0,
               int64_t w, int64_t row_begin, int64_t row_end, int64_t n_cols, int64_t block, const Pass& pass,
               int64_t prefetch) {
  using C = acc_t<T>;
  const int64_t last = crow[row_end];
  auto column = [&](int64_t p) { return static_cast<int64_t>(col[p * S]); };
  auto value = [&](int64_t p) -> C {
    if (perm == nullptr) return val[p];
    if (p + kValuePrefetch < last) __builtin_prefetch(val + perm[(p + kValuePrefetch) * S], 0, 1);
    return val[perm[p * S]];
  };
  const RowSums<T, W> sums;
  for_row_segments(crow, row_begin, row_end, n_cols, block, pass,
                   [&](int64_t i, int64_t p, int64_t end, int64_t limit, bool first, bool final, int64_t slot) {
    T* o = out + i * R + r0;
    if (w == W) {
      Tile<T, W> acc;
      sums.load(acc, o, first, slot);
      for (; p < end && column(p) < limit; ++p) {
        if (prefetch > 0 && p + prefetch < last) prefetch_tile<I>(x + column(p + prefetch) * R + r0, W * sizeof(T));
        acc.axpy(value(p), x + column(p) * R + r0);
      }
      sums.store(acc, o, final, slot);
    } else {
      C acc[W];
      sums.load(acc, o, w, first, slot);
      for (; p < end && column(p) < limit; ++p) {
        const C v = value(p);
        const T* xr = x + column(p) * R + r0;
        for (int64_t k = 0; k < w; ++k) acc[k] += v * C(xr[k]);
      }
      sums.store(acc, o, w, final, slot);
    }
    return p;
  });
}

// f(r0, w, row_begin, row_end, pass) for every batch tile [r0, r0 + w) of width W and every chunk of rows of
// equal (entries + rows) cost, the chunks of one tile handed out dynamically to the team. sweep > 0: the
// columns are walked in passes of `sweep` columns, each over all rows (an L3 sweep: the pass's slice of the
// gathered operand stays in L3 while every row that uses it is served, and the rows' own operand is
// streamed once per pass instead of each entry fetching a random row from DRAM).
template <int W, typename I, typename F>
void for_row_chunks(const I* crow, int64_t n_rows, int64_t R, int64_t n_cols, int64_t sweep, F&& f) {
  const int nt = team_size(static_cast<int64_t>(crow[n_rows]) * R);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(n_rows, int64_t(nt) * kChunksPerThread));
  const std::vector<int64_t> bounds = balanced_row_chunks(crow, n_rows, n_chunks);
  const bool sweeping = sweep > 0 && sweep < n_cols;
  std::vector<int64_t> cursor(sweeping ? n_rows : 0);
  const int64_t step = sweeping ? sweep : std::max<int64_t>(n_cols, 1);
#pragma omp parallel num_threads(nt)
  for (int64_t r0 = 0; r0 < R; r0 += W) {
    const int64_t w = std::min<int64_t>(W, R - r0);
    for (int64_t begin = 0; begin < n_cols || begin == 0; begin += step) {
      const Pass pass{begin, sweeping ? begin + step : kNoLimit, sweeping ? cursor.data() : nullptr};
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < n_chunks; ++c) f(r0, w, bounds[c], bounds[c + 1], pass);
    }
  }
}

template <typename T, typename I, int W, int S>
void spmm_impl(const I* crow, const I* col, const T* val, const I* perm, const T* x, T* out, int64_t n_rows,
               int64_t R, int64_t n_cols, int64_t block, int64_t sweep, int64_t prefetch) {
  for_row_chunks<W>(crow, n_rows, R, n_cols, sweep,
                    [&](int64_t r0, int64_t w, int64_t row_begin, int64_t row_end, const Pass& pass) {
    spmm_rows<T, I, W, S>(crow, col, val, perm, x, out, R, r0, w, row_begin, row_end, n_cols, block, pass, prefetch);
  });
}

// SpMM over row-block value storage, walked in storage order (the forward of a blocked layer whose blocks
// reuse their gathered rows): block b holds rows [b * block_rows, ...) and, in storage order, its entries
// sorted by (column, row); walk[2 s], walk[2 s + 1] are the column and row of storage position s. Each
// gathered operand row is loaded into registers once per block and column and added into every row of the
// block that uses it; the block's sums (block_rows x W of acc_t<T>) stay in a thread's scratch (L2) and are
// stored once. A row's entries arrive in column order, as in the CSR walk, so the sums are bitwise those of
// spmm_rows. Reading the values in place, in order, replaces one random value read per entry (through the
// CSR slots) by a stream; the price, a load and a store of the sums per entry, pays only where a block uses a
// gathered row several times (cpp_ext.storage_walk_pays).
template <typename T, typename I, int W>
bool spmm_storage_impl(const I* crow, const I* walk, const T* val, const T* x, T* out, int64_t n_rows, int64_t R,
                       int64_t n_cols, int64_t block_rows) {
  using C = acc_t<T>;
  using Tl = Tile<T, W>;
  using V = typename Tl::V;
  constexpr int K = Tl::kVectors;
  const int64_t n_blocks = (n_rows + block_rows - 1) / block_rows;
  const int nt = team_size(static_cast<int64_t>(crow[n_rows]) * R);
  std::atomic<bool> bad{false};
#pragma omp parallel num_threads(nt)
  {
    static_assert(sizeof(V) == 64, "a tile vector is one 64-byte register");
    std::vector<V> scratch(static_cast<size_t>(block_rows) * K);  // 64-byte aligned (vector of V)
    for (int64_t r0 = 0; r0 < R; r0 += W) {
      const int64_t w = std::min<int64_t>(W, R - r0);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t lo = b * block_rows, hi = std::min(n_rows, lo + block_rows);
        const int64_t end = crow[hi];
        V* sums = scratch.data();
        C* flat = reinterpret_cast<C*>(sums);  // the partial tile's sums: W of C per row
        std::memset(static_cast<void*>(sums), 0, static_cast<size_t>(hi - lo) * K * sizeof(V));
        // a column outside [0, n_cols) (one test per column) or a row outside the block (clamped without a
        // branch, then reported) fails the call: a walk storage_walk did not build
        const uint64_t rows = static_cast<uint64_t>(hi - lo);
        bool inside = true;
        for (int64_t p = crow[lo]; p < end;) {
          const int64_t c = walk[2 * p];
          if (static_cast<uint64_t>(c) >= static_cast<uint64_t>(n_cols)) { bad = true; break; }
          const T* xr = x + c * R + r0;
          if (w == W) {
            Tl xt;
            xt.load(xr);
            do {
              uint64_t at = static_cast<uint64_t>(walk[2 * p + 1] - lo);
              inside &= at < rows;
              at = at < rows ? at : 0;
              const V v = V{} + C(val[p]);
              V* s = sums + at * K;
#pragma GCC unroll 16
              for (int q = 0; q < K; ++q) s[q] += v * xt.v[q];
            } while (++p < end && walk[2 * p] == c);
          } else {
            do {
              uint64_t at = static_cast<uint64_t>(walk[2 * p + 1] - lo);
              inside &= at < rows;
              at = at < rows ? at : 0;
              const C v = val[p];
              C* s = flat + at * W;
              for (int64_t k = 0; k < w; ++k) s[k] += v * C(xr[k]);
            } while (++p < end && walk[2 * p] == c);
          }
        }
        if (!inside) bad = true;
        for (int64_t i = lo; i < hi; ++i) {
          T* o = out + i * R + r0;
          if (w == W) {
            Tl t;
            std::memcpy(static_cast<void*>(t.v), sums + (i - lo) * K, sizeof(t.v));
            t.store(o);
          } else {
            const C* s = flat + (i - lo) * W;
            for (int64_t k = 0; k < w; ++k) o[k] = T(s[k]);
          }
        }
      }
    }
  }
  return !bad;
}

// The (column, row) of every storage position of a row-block layout: walk[2 slots[p]] = (col[p], row of p).
// Each block's writes stay inside its own range of the storage (a few hundred KiB), blocks in parallel.
// False (and that block left unwritten) where a slot leaves its block's range.
template <typename I>
bool storage_walk_impl(const I* crow, const I* col, const I* slots, I* walk, int64_t n_rows, int64_t block_rows) {
  const int64_t n_blocks = (n_rows + block_rows - 1) / block_rows;
  const int nt = team_size(static_cast<int64_t>(crow[n_rows]));
  std::atomic<bool> bad{false};
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t lo = b * block_rows, hi = std::min(n_rows, lo + block_rows);
    const int64_t first = crow[lo], size = static_cast<int64_t>(crow[hi]) - first;
    bool ok = true;
    for (int64_t p = first; p < first + size; ++p) ok &= static_cast<uint64_t>(slots[p] - first) < static_cast<uint64_t>(size);
    if (!ok) { bad = true; continue; }
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t p = crow[i]; p < crow[i + 1]; ++p) {
        const int64_t s = slots[p];
        walk[2 * s] = col[p];
        walk[2 * s + 1] = static_cast<I>(i);
      }
  }
  return !bad;
}

// out[e] (+)= <left[row_e, r0:r0+w], right[col_e, r0:r0+w]>, one row's run of entries at a time (the left
// row's tile stays in registers for the run). O: acc_t<T> where several batch tiles add into out (their
// sums are not rounded to T in between); T itself for a single tile (rounded once, as it is written).
// CSR form: row chunks, walked by column block like SpMM. COO form (explicit rows, any order): entries
// [e_begin, e_end), runs of equal rows.
template <typename T, typename I, int W, typename O = acc_t<T>>
int64_t sddmm_run(const T* a, const I* col, const T* right, O* out, int64_t R, int64_t w, bool accumulate,
                  int64_t e, int64_t e_end, int64_t limit, int64_t prefetch_end, int64_t prefetch) {
  if (w == W) {
    DotTile<T, W> row_tile;
    row_tile.load(a);
    for (; e < e_end && static_cast<int64_t>(col[e]) < limit; ++e) {
      if (prefetch > 0 && e + prefetch < prefetch_end)
        prefetch_tile<I>(right + static_cast<int64_t>(col[e + prefetch]) * R, W * sizeof(T));
      const acc_t<T> s = row_tile.dot(right + static_cast<int64_t>(col[e]) * R);
      out[e] = accumulate ? O(out[e] + s) : O(s);
    }
  } else {
    for (; e < e_end && static_cast<int64_t>(col[e]) < limit; ++e) {
      const T* b = right + static_cast<int64_t>(col[e]) * R;
      acc_t<T> s = 0;
      for (int64_t k = 0; k < w; ++k) s += acc_t<T>(a[k]) * acc_t<T>(b[k]);
      out[e] = accumulate ? O(out[e] + s) : O(s);
    }
  }
  return e;
}

template <typename T, typename I, int W, typename O>
void sddmm_csr_impl(const I* crow, int64_t n_rows, const I* col, const T* left, const T* right, O* out,
                    int64_t R, int64_t n_cols, int64_t block, int64_t sweep, int64_t prefetch) {
  for_row_chunks<W>(crow, n_rows, R, n_cols, sweep,
                    [&](int64_t r0, int64_t w, int64_t row_begin, int64_t row_end, const Pass& pass) {
    const int64_t last = crow[row_end];
    for_row_segments(crow, row_begin, row_end, n_cols, block, pass,
                     [&](int64_t i, int64_t p, int64_t end, int64_t limit, bool, bool, int64_t) {
      return sddmm_run<T, I, W, O>(left + i * R + r0, col, right + r0, out, R, w, r0 > 0, p, end, limit, last,
                                   prefetch);
    });
  });
}

template <typename T, typename I, int W, typename O>
void sddmm_coo_impl(const I* rows, const I* col, const T* left, const T* right, O* out, int64_t nnz, int64_t R,
                    int64_t prefetch) {
  const int nt = team_size(nnz * R);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(nnz / 64 + 1, int64_t(nt) * kChunksPerThread));
#pragma omp parallel num_threads(nt)
  for (int64_t r0 = 0; r0 < R; r0 += W) {
    const int64_t w = std::min<int64_t>(W, R - r0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t e_end = nnz * (c + 1) / n_chunks;
      for (int64_t e = nnz * c / n_chunks; e < e_end;) {
        const int64_t row = rows[e];
        int64_t run_end = e + 1;
        while (run_end < e_end && static_cast<int64_t>(rows[run_end]) == row) ++run_end;
        sddmm_run<T, I, W, O>(left + row * R + r0, col, right + r0, out, R, w, r0 > 0, e, run_end, kNoLimit, e_end,
                           prefetch);
        e = run_end;
      }
    }
  }
}

// Both gradients of y = W x from one walk of the transposed CSR (rows: input features j; entries: (slot,
// output row) pairs): grad_x[j] = sum_p val[slot_p] * gy[row_p] and grad_val[slot_p] = <gy[row_p], x[j]>.
// Every entry gathers its gy row once for both (two separate walks gather it twice: once by the input-
// gradient SpMM, once, as a gy row against a gathered x row, by the CSR SDDMM); x[j] is read once per row.
// The value gradient is written through the slot (slots of one row are scattered; each is written by
// exactly one entry, so threads never share one), prefetched for writing like the value reads; O as for
// the SDDMM (sddmm_run).
template <typename T, typename I, int W, typename O>
void grads_transposed_impl(const I* ccol, const I* pairs, const T* val, const T* gy, const T* x, T* grad_x,
                           O* grad_val, int64_t n_in, int64_t R, int64_t n_out, int64_t block, int64_t prefetch) {
  using C = acc_t<T>;
  for_row_chunks<W>(ccol, n_in, R, n_out, 0, [&](int64_t r0, int64_t w, int64_t row_begin, int64_t row_end,
                                                  const Pass& pass) {
    const int64_t last = ccol[row_end];
    const bool accumulate = r0 > 0;
    const RowSums<T, W> sums;
    for_row_segments(ccol, row_begin, row_end, n_out, block, pass,
                     [&](int64_t j, int64_t p, int64_t end, int64_t limit, bool first, bool final, int64_t slot) {
      T* o = grad_x + j * R + r0;
      const T* xj = x + j * R + r0;
      if (w == W) {
        Tile<T, W> acc;
        DotTile<T, W> xt;
        sums.load(acc, o, first, slot);
        xt.load(xj);
        for (; p < end && static_cast<int64_t>(pairs[2 * p + 1]) < limit; ++p) {
          if (p + kValuePrefetch < last) {
            const int64_t ahead = pairs[2 * (p + kValuePrefetch)];
            __builtin_prefetch(val + ahead, 0, 1);
            __builtin_prefetch(grad_val + ahead, 1, 1);
          }
          if (prefetch > 0 && p + prefetch < last)
            prefetch_tile<I>(gy + static_cast<int64_t>(pairs[2 * (p + prefetch) + 1]) * R + r0, W * sizeof(T));
          const T* g = gy + static_cast<int64_t>(pairs[2 * p + 1]) * R + r0;
          const int64_t s = pairs[2 * p];
          acc.axpy(val[s], g);
          const C d = xt.dot(g);
          grad_val[s] = accumulate ? O(grad_val[s] + d) : O(d);
        }
        sums.store(acc, o, final, slot);
      } else {
        C gx[W];
        sums.load(gx, o, w, first, slot);
        for (; p < end && static_cast<int64_t>(pairs[2 * p + 1]) < limit; ++p) {
          const T* g = gy + static_cast<int64_t>(pairs[2 * p + 1]) * R + r0;
          const int64_t s = pairs[2 * p];
          const C v = val[s];
          C d = 0;
          for (int64_t k = 0; k < w; ++k) {
            gx[k] += v * C(g[k]);
            d += C(xj[k]) * C(g[k]);
          }
          grad_val[s] = accumulate ? O(grad_val[s] + d) : O(d);
        }
        sums.store(gx, o, w, final, slot);
      }
      return p;
    });
  });
}

// acc += a * g (kInput) and the dot <xt, g>, loading g's tile once (Tile::axpy then Tile::dot load it twice):
// the same operations in the same order as those two, so bitwise their results.
template <bool kInput, typename T, int W>
inline acc_t<T> axpy_dot(Tile<T, W>& acc, acc_t<T> a, const T* g, const Tile<T, W>& xt) {
  using Tl = Tile<T, W>;
  using V = typename Tl::V;
  const V va = V{} + a;
  V s = V{};
#pragma GCC unroll 8
  for (int q = 0; q < Tl::kChunks; ++q) {
    V t[Tl::kPer];
    Tl::L::load(g + q * Tl::L::kElements, t);
    for (int k = 0; k < Tl::kPer; ++k) {
      if constexpr (kInput) acc.v[q * Tl::kPer + k] += va * t[k];
      if (q == 0 && k == 0) s = xt.v[0] * t[0];
      else s += xt.v[q * Tl::kPer + k] * t[k];
    }
  }
  return Tl::sum_lanes(s);
}

// The backward of a row-block layer walked in storage order (bfloat16: grad_x's sums in the float32
// wide_sums, rounded once at the end, the dots by the fused backward's DotTile). Each of
// kChunksPerThread x threads ranges of input features (balanced by entries; one thread each) walks the blocks
// in order and, inside a block, its own columns' runs: a run of column j loads x[j] and grad_x[j]'s sums into
// registers once, and each entry adds val * gy[row] to them (kInput) and writes its value gradient
// <gy[row], x[j]> in storage order — the gy rows of a block (a few hundred) stay in L2 while its runs use
// them, where the transposed walk gathers a random gy row from L3 per entry. Entries of a column are summed
// in row order as by that walk, and grad_x starts at zero: bitwise grads_transposed_impl's results.
// Returns false unless the walk's rows stay inside their blocks and every entry was reached (columns
// ascending inside each block), i.e. unless the walk is storage_walk's.
template <typename T, typename I, int W, bool kInput, typename O>
bool grads_storage_impl(const I* crow, const I* walk, const I* ccol, const T* val, const T* gy, const T* x, T* grad_x,
                        float* wide_sums, O* grad_val, int64_t n_out, int64_t n_in, int64_t R, int64_t block_rows) {
  using C = acc_t<T>;
  constexpr bool kWide = !std::is_same_v<T, C>;  // bfloat16: grad_x's partial sums stay float32 (wide_sums)
  using Sum = std::conditional_t<kWide, C, T>;
  Sum* sums = nullptr;
  if constexpr (kWide) { static_assert(std::is_same_v<C, float>); sums = wide_sums; } else { sums = grad_x; }
  const int64_t nnz = crow[n_out], n_blocks = (n_out + block_rows - 1) / block_rows;
  const int nt = team_size(nnz * R);
  const int64_t n_ranges = std::max<int64_t>(1, std::min<int64_t>(n_in, int64_t(nt) * kChunksPerThread));
  const std::vector<int64_t> bounds = balanced_row_chunks(ccol, n_in, n_ranges);
  std::atomic<int64_t> reached{0};
  std::atomic<bool> bad{false};
#pragma omp parallel num_threads(nt)
  for (int64_t r0 = 0; r0 < R; r0 += W) {
    const int64_t w = std::min<int64_t>(W, R - r0);
    const bool accumulate = r0 > 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_ranges; ++k) {
      const int64_t j_lo = bounds[k], j_hi = bounds[k + 1];
      int64_t count = 0;
      bool inside = true;
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t lo = b * block_rows, hi = std::min(n_out, lo + block_rows), end = crow[hi];
        const uint64_t rows = static_cast<uint64_t>(hi - lo);
        int64_t p = crow[lo], e = end;  // the block's first entry of a column >= j_lo
        while (p < e) {
          const int64_t m = (p + e) / 2;
          if (static_cast<int64_t>(walk[2 * m]) < j_lo) p = m + 1; else e = m;
        }
        while (p < end) {
          const int64_t j = walk[2 * p];
          if (j >= j_hi || j < j_lo) break;
          const int64_t first = p;
          Sum* o = sums + j * R + r0;
          const T* xj = x + j * R + r0;
          auto row_of = [&](int64_t q) {
            uint64_t at = static_cast<uint64_t>(walk[2 * q + 1] - lo);
            inside &= at < rows;
            return lo + static_cast<int64_t>(at < rows ? at : 0);
          };
          if (w == W) {
            Tile<T, W> acc;
            if constexpr (kInput) {
              if constexpr (kWide) std::memcpy(static_cast<void*>(acc.v), o, sizeof(acc.v));
              else acc.load(o);
            }
            if constexpr (kWide) {  // the pair-dot tile of the fused backward, and the axpy as a second pass
              DotTile<T, W> xt;
              xt.load(xj);
              do {
                const T* g = gy + row_of(p) * R + r0;
                if constexpr (kInput) acc.axpy(val[p], g);
                const C d = xt.dot(g);
                grad_val[p] = accumulate ? O(grad_val[p] + d) : O(d);
              } while (++p < end && walk[2 * p] == j);
            } else {
              Tile<T, W> xt;
              xt.load(xj);
              do {
                const C d = axpy_dot<kInput>(acc, kInput ? C(val[p]) : C(0), gy + row_of(p) * R + r0, xt);
                grad_val[p] = accumulate ? O(grad_val[p] + d) : O(d);
              } while (++p < end && walk[2 * p] == j);
            }
            if constexpr (kInput) {
              if constexpr (kWide) std::memcpy(static_cast<void*>(o), acc.v, sizeof(acc.v));
              else acc.store(o);
            }
          } else {
            C gx[W];
            if constexpr (kInput) for (int64_t q = 0; q < w; ++q) gx[q] = o[q];
            do {
              const T* g = gy + row_of(p) * R + r0;
              const C v = val[p];
              C d = 0;
              for (int64_t q = 0; q < w; ++q) {
                if constexpr (kInput) gx[q] += v * C(g[q]);
                d += C(xj[q]) * C(g[q]);
              }
              grad_val[p] = accumulate ? O(grad_val[p] + d) : O(d);
            } while (++p < end && walk[2 * p] == j);
            if constexpr (kInput) for (int64_t q = 0; q < w; ++q) o[q] = Sum(gx[q]);
          }
          count += p - first;
        }
      }
      if (!inside) bad = true;
      if (r0 == 0) reached += count;
    }
  }
  if constexpr (kWide && kInput) {  // round the float32 sums once: full tiles in the lanes' split order
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t j = 0; j < n_in; ++j)
      for (int64_t r0 = 0; r0 < R; r0 += W) {
        const int64_t w = std::min<int64_t>(W, R - r0);
        const C* from = sums + j * R + r0;
        T* to = grad_x + j * R + r0;
        if (w == W) {
          Tile<T, W> t;
          std::memcpy(static_cast<void*>(t.v), from, sizeof(t.v));
          t.store(to);
        } else {
          for (int64_t q = 0; q < w; ++q) to[q] = T(from[q]);
        }
      }
  }
  return !bad && reached == nnz;
}

// The region [i_lo, i_hi) x [j_lo, j_hi) of dst (cols, rows) = src (rows, cols) transposed, both contiguous:
// square tiles small enough that a tile's source and destination lines stay in L1, tiles split over threads.
template <typename T>
void transpose_tiles(const T* src, T* dst, int64_t rows, int64_t cols, int64_t i_lo, int64_t i_hi, int64_t j_lo,
                     int64_t j_hi) {
  constexpr int64_t kSide = 32;
  const int64_t tiles_r = (i_hi - i_lo + kSide - 1) / kSide, tiles_c = (j_hi - j_lo + kSide - 1) / kSide;
  const int64_t n_tiles = tiles_r * tiles_c;
  if (n_tiles <= 0) return;
  const int nt = team_size((i_hi - i_lo) * (j_hi - j_lo));
  const int64_t n_chunks = std::min<int64_t>(n_tiles, int64_t(nt) * kChunksPerThread);
  parallel_chunks(nt, n_chunks, [&](int64_t c) {
    for (int64_t t = n_tiles * c / n_chunks; t < n_tiles * (c + 1) / n_chunks; ++t) {
      const int64_t i0 = i_lo + (t / tiles_c) * kSide, j0 = j_lo + (t % tiles_c) * kSide;
      const int64_t i1 = std::min(i0 + kSide, i_hi), j1 = std::min(j0 + kSide, j_hi);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
  });
}

#if defined(__AVX512F__)
// 16 elements of a row as the 16 lanes of a register, and back: float as it is; a 16-bit element (bfloat16)
// zero-extended into a 32-bit lane and truncated back, so the shuffles below move its bits exactly.
template <typename T> struct Block16;
template <> struct Block16<float> {
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, __m512 x, bool stream) {
    if (stream) _mm512_stream_ps(p, x); else _mm512_storeu_ps(p, x);
  }
};
template <> struct Block16<c10::BFloat16> {
  static __m512 load(const c10::BFloat16* p) {
    return _mm512_castsi512_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
  static void store(c10::BFloat16* p, __m512 x, bool stream) {
    const __m256i h = _mm512_cvtepi32_epi16(_mm512_castps_si512(x));
    if (stream) _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  }
};

// One 16 x 16 block transposed in registers (three shuffle stages): each source line is read once and each
// destination line written once, whole, so power-of-two row strides (whose lines share a cache set) cost
// nothing, and a destination line can be streamed past the caches (stream: non-temporal stores, which
// skip the read-for-ownership of a line about to be overwritten; only for outputs too large to stay cached).
template <typename T>
inline void transpose_block16(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, bool stream) {
  __m512 r[16], t[16];
  for (int k = 0; k < 16; ++k) r[k] = Block16<T>::load(src + k * src_stride);
  for (int k = 0; k < 16; k += 2) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3) of rows k, k + 1
    t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int q = 0; q < 16; q += 4) {  // r[q + e], lane L: rows q..q+3 of column 4L + e
    r[q] = _mm512_shuffle_ps(t[q], t[q + 2], 0x44);
    r[q + 1] = _mm512_shuffle_ps(t[q], t[q + 2], 0xEE);
    r[q + 2] = _mm512_shuffle_ps(t[q + 1], t[q + 3], 0x44);
    r[q + 3] = _mm512_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
  }
  for (int e = 0; e < 4; ++e) {  // gather lane L of r[e], r[4 + e], r[8 + e], r[12 + e]: column 4L + e
    const __m512 a = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x44), b = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xEE);
    const __m512 c = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x44), d = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xEE);
    const __m512 out[4] = {_mm512_shuffle_f32x4(a, c, 0x88), _mm512_shuffle_f32x4(a, c, 0xDD),
                           _mm512_shuffle_f32x4(b, d, 0x88), _mm512_shuffle_f32x4(b, d, 0xDD)};
    for (int L = 0; L < 4; ++L) Block16<T>::store(dst + (4 * L + e) * dst_stride, out[L], stream);
  }
}

// The [0, rows16) x [0, cols16) part of the transpose by 16 x 16 register blocks, walked along bands of
// `band` (16 or, for a 16-bit type, 32) source rows, that many sequential read streams, the blocks split
// over threads. A band of 32 transposes its two blocks per band column into a 16-line scratch in L1 and
// writes each destination line (32 elements) whole: streamed straight out, a line would get its halves one
// band apart, each flushed half empty (bfloat16 (128, 262144) -> (262144, 128): 12.5 -> 4.9 ms). Used for
// streamed outputs whose halves would be written more than 256 lines apart (cols > 256); elsewhere the
// scratch's extra pass costs more than it saves (cached (128, 16384): 0.16 vs 0.31 ms; streamed
// (262144, 128), halves 8 blocks apart: 10.0 vs 11.1 ms).
template <typename T>
void transpose_blocks16(const T* src, T* dst, int64_t rows, int64_t cols, int64_t rows16, int64_t cols16,
                        int64_t band, bool stream) {
  stream = stream && reinterpret_cast<uintptr_t>(dst) % kCacheLine == 0 && rows % band == 0;  // aligned lines only
  const int64_t bands = rows16 / band, per_band = cols16 / 16, n_blocks = bands * per_band;
  const int nt = team_size(rows16 * cols16);
  const int64_t n_chunks = std::min<int64_t>(n_blocks, int64_t(nt) * kChunksPerThread);
  parallel_chunks(nt, n_chunks, [&](int64_t c) {
    for (int64_t b = n_blocks * c / n_chunks; b < n_blocks * (c + 1) / n_chunks; ++b) {
      const int64_t i0 = (b / per_band) * band, j0 = (b % per_band) * 16;
      if (sizeof(T) == 4 || band == 16) {
        transpose_block16(src + i0 * cols + j0, cols, dst + j0 * rows + i0, rows, stream);
      } else {
        alignas(64) T lines[16][32];
        for (int64_t h = 0; h < 32; h += 16)
          transpose_block16(src + (i0 + h) * cols + j0, cols, &lines[0][h], 32, false);
        for (int k = 0; k < 16; ++k) {
          const __m512i line = _mm512_load_si512(lines[k]);
          void* to = dst + (j0 + k) * rows + i0;
          if (stream) _mm512_stream_si512(static_cast<__m512i*>(to), line); else _mm512_storeu_si512(to, line);
        }
      }
    }
    if (stream) _mm_sfence();  // order this chunk's streamed stores before the team's join
  });
}
#endif

// dst (cols, rows) = src (rows, cols) transposed, both contiguous. float or bfloat16 with AVX-512: register
// blocks for the part that is whole 16 x 16 blocks, tiles for the rest; otherwise tiles throughout.
// Exception: a cached (not streamed) output whose rows are a multiple of 4 KiB apart keeps the tiles, because a block's
// 16 stores then all fall in one cache set (measured 1.6-2x slower than the tiles at n = 4096, 16384).
template <typename T>
void transpose_impl(const T* src, T* dst, int64_t rows, int64_t cols, bool stream) {
  int64_t rows16 = 0, cols16 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) {
    const bool one_set = (rows * int64_t(sizeof(T))) % 4096 == 0;
    const int64_t band = sizeof(T) == 2 && stream && cols > 256 ? 32 : 16;
    if (rows >= band && cols >= 16 && (stream || !one_set)) {
      rows16 = rows / band * band;
      cols16 = cols / 16 * 16;
      transpose_blocks16(src, dst, rows, cols, rows16, cols16, band, stream);
    }
  }
#endif
  (void)stream;
  transpose_tiles(src, dst, rows, cols, rows16, rows, 0, cols);  // rows below the blocks, all columns
  transpose_tiles(src, dst, rows, cols, 0, rows16, cols16, cols);  // columns right of the blocks
}

// Calls f(integral_constant<W>) with W = tile_bytes / sizeof(acc_t<T>) elements, for a tile of 64-512 bytes
// of accumulators (the registers a tile takes; a bfloat16 tile of W elements gathers W * 2 bytes). A tile is
// at least one 64-byte chunk of T: 128 bytes of accumulators for bfloat16.
template <typename T, typename F>
void with_tile(int64_t tile_bytes, F&& f) {
  constexpr int E = static_cast<int>(sizeof(acc_t<T>));
  auto call = [&](auto bytes) {
    constexpr int W = decltype(bytes)::value / E;
    if constexpr (W % Lanes<T>::kElements == 0) f(std::integral_constant<int, W>{});
    else TORCH_CHECK(false, "sparsetrain cpu kernels: tile_bytes for this dtype must be at least ",
                     Lanes<T>::kElements * E);
  };
  switch (tile_bytes) {
    case 64: call(std::integral_constant<int, 64>{}); break;
    case 128: call(std::integral_constant<int, 128>{}); break;
    case 256: call(std::integral_constant<int, 256>{}); break;
    case 512: call(std::integral_constant<int, 512>{}); break;
    default: TORCH_CHECK(false, "sparsetrain cpu kernels: tile_bytes must be 64, 128, 256 or 512, got ", tile_bytes);
  }
}

void check_common(const torch::Tensor& index, const torch::Tensor& col, const char* index_name) {
  TORCH_CHECK(index.device().is_cpu() && col.device().is_cpu(), "sparsetrain cpu kernels need CPU tensors");
  TORCH_CHECK(index.dim() == 1 && col.dim() == 1, index_name, " and col must be 1-D");
  TORCH_CHECK(index.scalar_type() == col.scalar_type(), index_name, " and col must have the same dtype, got ",
              index.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK(col.scalar_type() == torch::kInt32 || col.scalar_type() == torch::kInt64,
              "index dtype must be int32 or int64, got ", col.scalar_type());
  TORCH_CHECK(index.is_contiguous() && col.is_contiguous(), index_name, " and col must be contiguous");
}

void check_dense(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous(), name,
              " must be a contiguous 2-D CPU tensor (feature-major)");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kFloat64 ||
                  t.scalar_type() == torch::kBFloat16, name, " dtype must be float32, float64 or bfloat16, got ",
              t.scalar_type());
}

// The dtype kernels sum in for operands of dtype `t` (see acc_t).
inline torch::ScalarType acc_dtype(torch::ScalarType t) { return t == torch::kBFloat16 ? torch::kFloat32 : t; }

// f(out pointer) for an SDDMM-like output of n elements of dtype T summed over batch tiles of W: written in T
// directly when the batch is one tile, else summed in an acc_t<T> tensor that is rounded to T afterwards.
// Returns the output in T.
template <typename T, int W, typename F>
torch::Tensor with_sum_output(int64_t n, int64_t R, const torch::TensorOptions& options, F&& f) {
  if (std::is_same_v<T, acc_t<T>> || R <= W) {
    auto out = torch::empty({n}, options);
    f(out.template data_ptr<T>());
    return out;
  }
  auto sums = torch::empty({n}, options.dtype(acc_dtype(options.dtype().toScalarType())));
  f(sums.template data_ptr<acc_t<T>>());
  return sums.to(options.dtype().toScalarType());
}

// A bfloat16 row walk keeps each output row's float32 sums until the row's last entry (RowSums: a tile of
// rows' worth of scratch between column blocks), so it is never swept: an L3 pass over all rows would need
// float32 sums for every row between passes.
void check_unswept(const torch::Tensor& t, int64_t sweep) {
  TORCH_CHECK_VALUE(t.scalar_type() != torch::kBFloat16 || sweep <= 0, "bfloat16 row walks take sweep = 0, got ",
                    sweep);
}

template <typename F>
void dispatch_index(const torch::Tensor& col, F&& f) {
  if (col.scalar_type() == torch::kInt32) f(int32_t{}); else f(int64_t{});
}

}  // namespace

// out = CSR(crow, col, values) @ x_fm. With perm, entry p's value is values[perm[p]]; with `pairs`, col is
// an (nnz, 2) tensor of (perm, column) pairs (the transposed CSR as transpose_csr builds it).
torch::Tensor spmm(torch::Tensor crow, torch::Tensor col, torch::Tensor values, torch::Tensor x_fm,
                   c10::optional<torch::Tensor> perm, int64_t tile_bytes, int64_t prefetch, int64_t col_block,
                   int64_t sweep, bool pairs) {
  check_dense(x_fm, "dense_fm");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous() && values.scalar_type() == x_fm.scalar_type(),
              "values must be 1-D contiguous with the dtype of dense_fm");
  int64_t nnz = col.numel();
  if (pairs) {
    TORCH_CHECK(!perm.has_value(), "pairs carry their own perm");
    TORCH_CHECK(col.dim() == 2 && col.size(1) == 2 && col.is_contiguous(), "pairs must be a contiguous (nnz, 2) tensor");
    TORCH_CHECK(crow.dim() == 1 && crow.is_contiguous() && crow.scalar_type() == col.scalar_type() &&
                    (col.scalar_type() == torch::kInt32 || col.scalar_type() == torch::kInt64),
                "crow and pairs must be int32 or int64 of one dtype");
    nnz = col.size(0);
  } else {
    check_common(crow, col, "crow");
  }
  if (perm.has_value())
    TORCH_CHECK(perm->dim() == 1 && perm->is_contiguous() && perm->scalar_type() == col.scalar_type() &&
                    perm->numel() == nnz, "perm must be 1-D contiguous, with col's length and dtype");
  TORCH_CHECK(values.numel() == nnz, "values must have one element per entry (", nnz, ")");
  const int64_t n_rows = crow.numel() - 1, R = x_fm.size(1);
  TORCH_CHECK(n_rows >= 0, "crow must have at least one element");
  check_unswept(x_fm, sweep);
  auto out = torch::empty({n_rows, R}, x_fm.options());
  if (n_rows == 0 || R == 0) return out;
  if (nnz == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, x_fm.scalar_type(), "sparsetrain_spmm", [&] {
    using T = scalar_t;
    dispatch_index(col, [&](auto index_tag) {
      using I = decltype(index_tag);
      const I* c = col.data_ptr<I>();
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        if (pairs)
          spmm_impl<T, I, W, 2>(crow.data_ptr<I>(), c + 1, values.data_ptr<T>(), c, x_fm.data_ptr<T>(),
                                out.data_ptr<T>(), n_rows, R, x_fm.size(0), col_block, sweep, prefetch);
        else
          spmm_impl<T, I, W, 1>(crow.data_ptr<I>(), c, values.data_ptr<T>(), perm.has_value() ? perm->data_ptr<I>() : nullptr,
                                x_fm.data_ptr<T>(), out.data_ptr<T>(), n_rows, R, x_fm.size(0), col_block, sweep, prefetch);
      });
    });
  });
  return out;
}

// out = the row-block layout (crow, storage walk, values in storage order) @ x_fm, walked in storage order
// (spmm_storage_impl); walk: the (nnz, 2) (column, row) of each storage position, as storage_walk builds it.
torch::Tensor spmm_storage(torch::Tensor crow, torch::Tensor walk, torch::Tensor values, torch::Tensor x_fm,
                           int64_t block_rows, int64_t tile_bytes) {
  check_dense(x_fm, "dense_fm");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous() && values.scalar_type() == x_fm.scalar_type(),
              "values must be 1-D contiguous with the dtype of dense_fm");
  TORCH_CHECK(crow.dim() == 1 && crow.is_contiguous() && walk.dim() == 2 && walk.size(1) == 2 &&
                  walk.is_contiguous() && crow.scalar_type() == walk.scalar_type() &&
                  (walk.scalar_type() == torch::kInt32 || walk.scalar_type() == torch::kInt64),
              "crow and walk must be contiguous int32 or int64 of one dtype, walk of shape (nnz, 2)");
  TORCH_CHECK_VALUE(block_rows >= 1, "block_rows must be >= 1, got ", block_rows);
  const int64_t nnz = walk.size(0), n_rows = crow.numel() - 1, R = x_fm.size(1);
  TORCH_CHECK(n_rows >= 0, "crow must have at least one element");
  TORCH_CHECK(values.numel() == nnz, "values must have one element per entry (", nnz, ")");
  auto out = torch::empty({n_rows, R}, x_fm.options());
  if (n_rows == 0 || R == 0) return out;
  if (nnz == 0) return out.zero_();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, x_fm.scalar_type(), "sparsetrain_spmm_storage", [&] {
    using T = scalar_t;
    dispatch_index(walk, [&](auto index_tag) {
      using I = decltype(index_tag);
      TORCH_CHECK_VALUE(static_cast<int64_t>(crow.data_ptr<I>()[n_rows]) == nnz, "crow[-1] must equal nnz (", nnz, ")");
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        ok = spmm_storage_impl<T, I, W>(crow.data_ptr<I>(), walk.data_ptr<I>(), values.data_ptr<T>(),
                                        x_fm.data_ptr<T>(), out.data_ptr<T>(), n_rows, R, x_fm.size(0), block_rows);
      });
    });
  });
  TORCH_CHECK_VALUE(ok, "spmm_storage: walk has a column outside [0, ", x_fm.size(0),
                    ") or a row outside its block (build it with storage_walk)");
  return out;
}

// The dense operands and values of a layer's backward: one dtype, one batch width, 1-D contiguous values.
void check_grad_operands(const torch::Tensor& values, const torch::Tensor& gy_fm, const torch::Tensor& x_fm) {
  check_dense(gy_fm, "gy_fm");
  check_dense(x_fm, "x_fm");
  TORCH_CHECK(gy_fm.scalar_type() == x_fm.scalar_type() && values.scalar_type() == x_fm.scalar_type(),
              "values, gy_fm and x_fm must have one dtype");
  TORCH_CHECK(gy_fm.size(1) == x_fm.size(1), "gy_fm and x_fm must have the same number of columns R");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), "values must be 1-D contiguous");
}

// (grad_x (n_in, R), grad_values (nnz)) of y = W x, from W's transposed CSR (ccol, (slot, row) pairs), its
// values, gy (n_out, R) and x (n_in, R); see grads_transposed_impl.
std::tuple<torch::Tensor, torch::Tensor> grads_transposed(torch::Tensor ccol, torch::Tensor pairs, torch::Tensor values,
                                                          torch::Tensor gy_fm, torch::Tensor x_fm, int64_t tile_bytes,
                                                          int64_t prefetch, int64_t col_block) {
  check_grad_operands(values, gy_fm, x_fm);
  TORCH_CHECK(ccol.dim() == 1 && ccol.is_contiguous() && pairs.dim() == 2 && pairs.size(1) == 2 &&
                  pairs.is_contiguous() && ccol.scalar_type() == pairs.scalar_type() &&
                  (ccol.scalar_type() == torch::kInt32 || ccol.scalar_type() == torch::kInt64),
              "ccol and pairs must be contiguous int32 or int64 of one dtype, pairs of shape (nnz, 2)");
  const int64_t n_in = x_fm.size(0), R = x_fm.size(1), nnz = pairs.size(0);
  TORCH_CHECK(ccol.numel() == n_in + 1, "ccol must have n_in + 1 = ", n_in + 1, " elements, got ", ccol.numel());
  TORCH_CHECK(values.numel() == nnz, "values must have one element per entry (", nnz, ")");
  auto grad_x = torch::empty({n_in, R}, x_fm.options());
  torch::Tensor grad_values;
  if (R == 0 || nnz == 0) return {grad_x.zero_(), torch::zeros({nnz}, x_fm.options())};
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, x_fm.scalar_type(), "sparsetrain_grads_transposed", [&] {
    using T = scalar_t;
    dispatch_index(pairs, [&](auto index_tag) {
      using I = decltype(index_tag);
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        grad_values = with_sum_output<T, W>(nnz, R, x_fm.options(), [&](auto* out) {
          grads_transposed_impl<T, I, W>(ccol.data_ptr<I>(), pairs.data_ptr<I>(), values.data_ptr<T>(),
                                         gy_fm.data_ptr<T>(), x_fm.data_ptr<T>(), grad_x.data_ptr<T>(), out, n_in, R,
                                         gy_fm.size(0), col_block, prefetch);
        });
      });
    });
  });
  return {grad_x, grad_values};
}

// (grad_x (n_in, R) or an empty tensor, grad_values (nnz) in storage order) of a row-block layer walked in
// storage order (grads_storage_impl); walk as for spmm_storage, ccol its column pointers.
std::tuple<torch::Tensor, torch::Tensor> grads_storage(torch::Tensor crow, torch::Tensor walk, torch::Tensor ccol,
                                                       torch::Tensor values, torch::Tensor gy_fm, torch::Tensor x_fm,
                                                       int64_t block_rows, int64_t tile_bytes, bool input_grad) {
  check_grad_operands(values, gy_fm, x_fm);
  TORCH_CHECK(crow.dim() == 1 && crow.is_contiguous() && ccol.dim() == 1 && ccol.is_contiguous() && walk.dim() == 2 &&
                  walk.size(1) == 2 && walk.is_contiguous() && crow.scalar_type() == walk.scalar_type() &&
                  ccol.scalar_type() == walk.scalar_type() &&
                  (walk.scalar_type() == torch::kInt32 || walk.scalar_type() == torch::kInt64),
              "crow, ccol and walk must be contiguous int32 or int64 of one dtype, walk of shape (nnz, 2)");
  TORCH_CHECK_VALUE(block_rows >= 1, "block_rows must be >= 1, got ", block_rows);
  const int64_t n_out = gy_fm.size(0), n_in = x_fm.size(0), R = x_fm.size(1), nnz = walk.size(0);
  TORCH_CHECK(crow.numel() == n_out + 1, "crow must have n_out + 1 = ", n_out + 1, " elements, got ", crow.numel());
  TORCH_CHECK(ccol.numel() == n_in + 1, "ccol must have n_in + 1 = ", n_in + 1, " elements, got ", ccol.numel());
  TORCH_CHECK(values.numel() == nnz, "values must have one element per entry (", nnz, ")");
  const bool wide = x_fm.scalar_type() == torch::kBFloat16;  // grad_x summed in a float32 scratch, rounded once
  auto grad_x = !input_grad ? torch::empty({0}, x_fm.options())
                : wide      ? torch::empty({n_in, R}, x_fm.options()) : torch::zeros({n_in, R}, x_fm.options());
  auto wide_sums = input_grad && wide ? torch::zeros({n_in, R}, x_fm.options().dtype(torch::kFloat32))
                                      : torch::empty({0}, x_fm.options().dtype(torch::kFloat32));
  if (R == 0 || nnz == 0) return {grad_x.zero_(), torch::zeros({nnz}, x_fm.options())};
  bool ok = true;
  torch::Tensor grad_values;
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, x_fm.scalar_type(), "sparsetrain_grads_storage", [&] {
    using T = scalar_t;
    dispatch_index(walk, [&](auto index_tag) {
      using I = decltype(index_tag);
      TORCH_CHECK_VALUE(static_cast<int64_t>(crow.data_ptr<I>()[n_out]) == nnz &&
                            static_cast<int64_t>(ccol.data_ptr<I>()[n_in]) == nnz,
                        "crow[-1] and ccol[-1] must equal nnz (", nnz, ")");
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        grad_values = with_sum_output<T, W>(nnz, R, x_fm.options(), [&](auto* out) {
          auto run = [&](auto input) {
            ok = grads_storage_impl<T, I, W, decltype(input)::value>(
                crow.data_ptr<I>(), walk.data_ptr<I>(), ccol.data_ptr<I>(), values.data_ptr<T>(), gy_fm.data_ptr<T>(),
                x_fm.data_ptr<T>(), input_grad ? grad_x.data_ptr<T>() : nullptr,
                wide && input_grad ? wide_sums.data_ptr<float>() : nullptr, out, n_out, n_in, R, block_rows);
          };
          if (input_grad) run(std::true_type{}); else run(std::false_type{});
        });
      });
    });
  });
  TORCH_CHECK_VALUE(ok, "grads_storage: walk has a row outside its block or columns not ascending inside a block "
                    "(build it with storage_walk)");
  return {grad_x, grad_values};
}

// stream: non-temporal stores where the fast path can use them (an output too large to stay in cache).
torch::Tensor transpose(torch::Tensor src, bool stream) {
  check_dense(src, "src");
  const int64_t rows = src.size(0), cols = src.size(1);
  auto out = torch::empty({cols, rows}, src.options());
  if (rows == 0 || cols == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, src.scalar_type(), "sparsetrain_transpose", [&] {
    transpose_impl<scalar_t>(src.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, cols, stream);
  });
  return out;
}

torch::Tensor sddmm(torch::Tensor crow_or_rows, torch::Tensor col, torch::Tensor left_fm, torch::Tensor right_fm,
                    bool coo, int64_t tile_bytes, int64_t prefetch, int64_t col_block, int64_t sweep) {
  check_common(crow_or_rows, col, coo ? "rows" : "crow");
  check_dense(left_fm, "left_fm");
  check_dense(right_fm, "right_fm");
  TORCH_CHECK(left_fm.scalar_type() == right_fm.scalar_type(), "left_fm and right_fm must have the same dtype");
  TORCH_CHECK(left_fm.size(1) == right_fm.size(1), "left_fm and right_fm must have the same number of columns R");
  const int64_t nnz = col.numel(), R = left_fm.size(1);
  const int64_t n_rows = coo ? left_fm.size(0) : crow_or_rows.numel() - 1;
  if (coo) TORCH_CHECK(crow_or_rows.numel() == nnz, "rows and cols must have the same length");
  if (nnz == 0 || R == 0) return torch::zeros({nnz}, left_fm.options());
  torch::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, left_fm.scalar_type(), "sparsetrain_sddmm", [&] {
    using T = scalar_t;
    dispatch_index(col, [&](auto index_tag) {
      using I = decltype(index_tag);
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        const I* idx = crow_or_rows.data_ptr<I>();
        out = with_sum_output<T, W>(nnz, R, left_fm.options(), [&](auto* o) {
          if (coo)
            sddmm_coo_impl<T, I, W>(idx, col.data_ptr<I>(), left_fm.data_ptr<T>(), right_fm.data_ptr<T>(), o, nnz, R,
                                    prefetch);
          else
            sddmm_csr_impl<T, I, W>(idx, n_rows, col.data_ptr<I>(), left_fm.data_ptr<T>(), right_fm.data_ptr<T>(), o,
                                    R, right_fm.size(0), col_block, sweep, prefetch);
        });
      });
    });
  });
  return out;
}

// Stable counting sort of col: perm lists entry ids in column-major order, ccol are the column pointers.
// Per-thread histograms over contiguous entry ranges keep it stable and parallel: O(nnz + T * n_cols).
// Given `pairs` (and the row pointers `crow`) instead of `pm`, it writes (slot, row) pairs: the transposed CSR
// with its rows, one store stream per column instead of two (the scatter misses L2 on nearly every store):
// 19 -> 13 ms at n = 16384, 98 %, and the input-gradient SpMM reads the pairs as one stream.
template <typename I>
struct SlotRow {
  I slot, row;
};

template <typename I>
void counting_transpose(const I* c, int64_t nnz, int64_t n_cols, I* pm, I* cp, const I* crow = nullptr,
                        int64_t n_rows = 0, SlotRow<I>* pairs = nullptr) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(team_size(nnz * 16), nnz / 4096 + 1)));
  std::vector<int64_t> counts(static_cast<size_t>(nt) * (n_cols + 1), 0);
  bool bad = false;
#pragma omp parallel num_threads(nt) reduction(|| : bad)
  {
    const int t = omp_get_thread_num();
    int64_t* h = counts.data() + static_cast<size_t>(t) * (n_cols + 1);
    const int64_t b = nnz * t / nt, e = nnz * (t + 1) / nt;
    for (int64_t j = b; j < e; ++j) {
      const int64_t v = c[j];
      if (v < 0 || v >= n_cols) { bad = true; continue; }
      ++h[v];
    }
  }
  TORCH_CHECK_VALUE(!bad, "col has entries outside [0, n_cols=", n_cols, ")");
  int64_t off = 0;
  for (int64_t k = 0; k < n_cols; ++k) {
    cp[k] = static_cast<I>(off);
    for (int t = 0; t < nt; ++t) {
      int64_t& h = counts[static_cast<size_t>(t) * (n_cols + 1) + k];
      const int64_t n = h;
      h = off;  // becomes thread t's next write position for column k
      off += n;
    }
  }
  cp[n_cols] = static_cast<I>(off);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    int64_t* pos = counts.data() + static_cast<size_t>(t) * (n_cols + 1);
    const int64_t b = nnz * t / nt, e = nnz * (t + 1) / nt;
    if (pairs != nullptr) {
      int64_t r = b < e ? row_of_slot(crow, n_rows, b) : 0;
      for (int64_t j = b; j < e; ++j) {
        while (static_cast<int64_t>(crow[r + 1]) <= j) ++r;  // the row of entry j, from the row pointers
        pairs[pos[c[j]]++] = SlotRow<I>{static_cast<I>(j), static_cast<I>(r)};
      }
    } else {
      for (int64_t j = b; j < e; ++j) pm[pos[c[j]]++] = static_cast<I>(j);
    }
  }
}

// counting_transpose's (slot, row) pairs in two passes for wide layers: one live store line per column in a
// single pass means n_cols live lines (16384 columns: 1 MiB, L2's size; 262144: 16 MiB), so nearly every
// store misses. Here the first pass scatters (slot, row, col) by bucket of 2^bucket_bits columns (a few
// hundred live lines) into scratch, and the second, one bucket at a time in parallel, counting-sorts a
// bucket by column inside L2, which also gives the column pointers. Both passes are stable (the first over
// per-thread ranges in order), so rows stay ascending within a column: the same result as one pass.
template <typename I>
struct SlotRowCol {
  I slot, row, col;
};

template <typename I>
void bucketed_transpose(const I* c, int64_t nnz, int64_t n_cols, I* cp, const I* crow, int64_t n_rows,
                        SlotRow<I>* pairs, int bucket_bits, SlotRowCol<I>* scratch) {
  const int64_t width = int64_t(1) << bucket_bits, n_buckets = (n_cols + width - 1) / width;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(team_size(nnz * 16), nnz / 4096 + 1)));
  std::vector<int64_t> counts(static_cast<size_t>(nt) * n_buckets, 0);
  bool bad = false;
#pragma omp parallel num_threads(nt) reduction(|| : bad)
  {
    const int t = omp_get_thread_num();
    int64_t* h = counts.data() + static_cast<size_t>(t) * n_buckets;
    for (int64_t j = nnz * t / nt, e = nnz * (t + 1) / nt; j < e; ++j) {
      const int64_t v = c[j];
      if (v < 0 || v >= n_cols) { bad = true; continue; }
      ++h[v >> bucket_bits];
    }
  }
  TORCH_CHECK_VALUE(!bad, "col has entries outside [0, n_cols=", n_cols, ")");
  std::vector<int64_t> start(n_buckets + 1);
  int64_t off = 0;
  for (int64_t k = 0; k < n_buckets; ++k) {
    start[k] = off;
    for (int t = 0; t < nt; ++t) {
      int64_t& h = counts[static_cast<size_t>(t) * n_buckets + k];
      const int64_t n = h;
      h = off;  // thread t's next write position in bucket k
      off += n;
    }
  }
  start[n_buckets] = off;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    int64_t* pos = counts.data() + static_cast<size_t>(t) * n_buckets;
    const int64_t b = nnz * t / nt, e = nnz * (t + 1) / nt;
    int64_t r = b < e ? row_of_slot(crow, n_rows, b) : 0;
    for (int64_t j = b; j < e; ++j) {
      while (static_cast<int64_t>(crow[r + 1]) <= j) ++r;
      const I v = c[j];
      scratch[pos[v >> bucket_bits]++] = SlotRowCol<I>{static_cast<I>(j), static_cast<I>(r), v};
    }
  }
#pragma omp parallel num_threads(nt)
  {
    std::vector<int64_t> next(width);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_buckets; ++k) {
      const int64_t c0 = k * width, c1 = std::min(n_cols, c0 + width), e0 = start[k], e1 = start[k + 1];
      std::fill(next.begin(), next.end(), 0);
      for (int64_t e = e0; e < e1; ++e) ++next[scratch[e].col - c0];
      int64_t at = e0;
      for (int64_t cc = c0; cc < c1; ++cc) {
        cp[cc] = static_cast<I>(at);
        const int64_t n = next[cc - c0];
        next[cc - c0] = at;
        at += n;
      }
      for (int64_t e = e0; e < e1; ++e) {
        const SlotRowCol<I>& q = scratch[e];
        pairs[next[q.col - c0]++] = SlotRow<I>{q.slot, q.row};
      }
    }
  }
  cp[n_cols] = static_cast<I>(nnz);
}

// Columns per bucket of bucketed_transpose (log2), or 0 for one pass: about the square root of n_cols, so
// both passes keep a few hundred live lines. One pass while n_cols <= kOnePassColumns, whose live lines
// (2 MiB) L2 and L3 still hold (fan-in 64, interleaved medians, ms, one pass vs two: 16384 2.9 vs 5.3,
// 32768 6.6 vs 7.6, 65536 23.5 vs 18.7, 131072 55.8 vs 34.1, 262144 136 vs 66; 16384 at 98 %: 16.3 vs 19.6).
constexpr int64_t kOnePassColumns = 32768;
inline int auto_bucket_bits(int64_t n_cols) {
  if (n_cols <= kOnePassColumns) return 0;
  int bits = 0;
  while ((int64_t(1) << bits) < n_cols) ++bits;
  return bits / 2;
}

void check_index_vector(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kInt32 || t.scalar_type() == torch::kInt64,
              name, " dtype must be int32 or int64, got ", t.scalar_type());
}

// The storage walk of a row-block layout: (nnz, 2) (column, row) of each storage position (storage_walk_impl).
torch::Tensor storage_walk(torch::Tensor crow, torch::Tensor col, torch::Tensor slots, int64_t block_rows) {
  check_common(crow, col, "crow");
  check_index_vector(slots, "slots");
  TORCH_CHECK_VALUE(slots.scalar_type() == col.scalar_type() && slots.numel() == col.numel(),
                    "slots must have col's dtype and length");
  TORCH_CHECK_VALUE(block_rows >= 1, "block_rows must be >= 1, got ", block_rows);
  const int64_t nnz = col.numel(), n_rows = crow.numel() - 1;
  TORCH_CHECK(n_rows >= 0, "crow must have at least one element");
  auto walk = torch::empty({nnz, 2}, col.options());
  dispatch_index(col, [&](auto index_tag) {
    using I = decltype(index_tag);
    const I* cp = crow.data_ptr<I>();
    const I* sp = slots.data_ptr<I>();
    TORCH_CHECK_VALUE(static_cast<int64_t>(cp[n_rows]) == nnz, "crow[-1] must equal nnz (", nnz, ")");
    TORCH_CHECK_VALUE(storage_walk_impl<I>(cp, col.data_ptr<I>(), sp, walk.data_ptr<I>(), n_rows, block_rows),
                      "storage_walk: slots must map each block of ", block_rows, " rows into its own CSR range");
  });
  return walk;
}

std::tuple<torch::Tensor, torch::Tensor> transpose_order(torch::Tensor col, int64_t n_cols) {
  check_index_vector(col, "col");
  TORCH_CHECK(n_cols >= 0, "n_cols must be >= 0, got ", n_cols);
  const int64_t nnz = col.numel();
  auto perm = torch::empty({nnz}, col.options());
  auto ccol = torch::empty({n_cols + 1}, col.options());
  dispatch_index(col, [&](auto index_tag) {
    using I = decltype(index_tag);
    counting_transpose<I>(col.data_ptr<I>(), nnz, n_cols, perm.data_ptr<I>(), ccol.data_ptr<I>());
  });
  return {perm, ccol};
}

// ======================================================================================================
// Topology operations: the index work of a topology update (candidate sampling, selection, slot merge).
//
// All are O(n) single or few-pass loops over sorted index lists, parallel over fixed chunks with OpenMP.
// Results never depend on the number of threads (fixed chunking wherever floating-point sums or random
// streams are involved). Linear indices are int64 row * n_cols + col; (row, col) arrays keep their dtype.
// ======================================================================================================
namespace {

// Memory-bound passes: a team pays off from about this many elements (see kSerialWork).
inline int team_for(int64_t n) { return team_size(n * 8); }

inline int64_t chunk_count(int nt, int64_t n, int64_t grain) {
  return std::max<int64_t>(1, std::min<int64_t>(int64_t(nt) * kChunksPerThread, n / grain + 1));
}

// x = q * n + r with 0 <= r < n, through a float64 reciprocal (exact after one correction for x < 2^52):
// int64 division costs 10-40 cycles, this one multiply.
struct Divider {
  int64_t n;
  double inv;
  explicit Divider(int64_t d) : n(d), inv(1.0 / static_cast<double>(d)) {}
  inline void divmod(int64_t x, int64_t& q, int64_t& r) const {
    if (x < 0 || x >= (int64_t(1) << 52)) { q = x / n; r = x % n; return; }
    q = static_cast<int64_t>(static_cast<double>(x) * inv);
    r = x - q * n;
    if (r < 0) { --q; r += n; } else if (r >= n) { ++q; r -= n; }
  }
};

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Exp(1) spacing number i of the stream `seed`: counter-based (SplitMix64 of seed + i), so any block of
// the stream can be generated independently. u in (0, 1] with 53 random bits.
inline double exp_spacing(uint64_t seed, int64_t i) {
  const uint64_t x = splitmix64(seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull);
  const double u = static_cast<double>((x >> 11) + 1) * 0x1.0p-53;
  return -std::log(u);
}

constexpr int64_t kDrawBlock = int64_t(1) << 15;  // fixed, so positions do not depend on the thread count

// Order-preserving unsigned keys of floating-point scores in arithmetic only (so loops over them vectorise):
// -0.0 equals +0.0, every NaN is above +inf. With `absolute` the key is that of |x|.
template <typename T> struct KeyOf;
template <> struct KeyOf<float> { using K = uint32_t; static constexpr K kInf = 0x7F800000u; };
template <> struct KeyOf<double> { using K = uint64_t; static constexpr K kInf = 0x7FF0000000000000ull; };

template <typename T>
inline typename KeyOf<T>::K float_key(T x, bool absolute) {
  using K = typename KeyOf<T>::K;
  constexpr int kTop = 8 * sizeof(K) - 1;
  constexpr K kSign = K(1) << kTop;
  K u;
  std::memcpy(&u, &x, sizeof u);
  if (absolute) u &= ~kSign;
  const K mag = u & ~kSign;
  u &= K(0) - K(mag != 0);                          // -0.0 -> +0.0
  K k = u ^ ((K(0) - (u >> kTop)) | kSign);         // negative: all bits flipped; else the sign bit
  return k | (K(0) - K(mag > KeyOf<T>::kInf));     // NaN -> the largest key
}

// Positions of the k largest keys (smallest with `largest` false), ascending; ties to the lower position.
// Two passes over the scores. A strided sample of 2^14 keys brackets the k-th key in [lo, hi] (a few
// standard deviations of the sample quantile either side); pass 1 counts, per fixed chunk, the keys above
// hi and collects the positions inside the bracket (a few % of them), whose nth_element gives the exact
// k-th key T (when the bracket missed, it is widened to the whole side that holds T and pass 1 repeats);
// pass 2 writes every key above T and the first (k - #above) keys equal to T, each chunk at its offset.
constexpr int64_t kFlagWord = 8;  // flags looked at together (one uint64_t) when sweeping
constexpr int64_t kCollectSlack = 16;  // room past the end for whole-vector stores

template <typename T, bool Largest, bool Absolute>
struct Selector {
  using K = typename KeyOf<T>::K;
  static inline K key(T x) { const K k = float_key<T>(x, Absolute); return Largest ? k : ~k; }

  // keys above `top` counted, positions with lo <= key <= top collected into `bracket` (ascending)
  static int64_t count_and_collect(const T* s, int64_t begin, int64_t end, K lo, K top,
                                   std::vector<int64_t>& bracket) {
    int64_t gt = 0, in = 0;
    for (int64_t b0 = begin; b0 < end; b0 += int64_t(1) << 20) {  // key-width counters vectorise best
      K gt_b = 0, in_b = 0;
      const int64_t b1 = std::min(end, b0 + (int64_t(1) << 20));
#pragma omp simd reduction(+ : gt_b, in_b)
      for (int64_t i = b0; i < b1; ++i) {
        const K x = key(s[i]);
        gt_b += K(x > top);
        in_b += K(x >= lo) & K(x <= top);
      }
      gt += static_cast<int64_t>(gt_b);
      in += static_cast<int64_t>(in_b);
    }
    bracket.resize(in + kFlagWord);
    sweep(s, begin, end, bracket.data(), in, 0, [lo, top](K x) { return uint8_t(((x >= lo) & (x <= top)) << 1); });
    bracket.resize(in);
    return gt;
  }

  // Writes, ascending, the positions i in [begin, end) that flag_of(key(s[i])) selects until `count` are
  // written: flag 2 selects, flag 1 selects while `ties` last (the first ones, so ties go to the lower
  // position), 0 does not. Flags are computed a block at a time (vectorised); the sweep writes every
  // position at the cursor, which advances only for a selected one, so there is no branch per element.
  // `out` must have kFlagWord slots beyond `count` unless the tail is swept one by one (guarded).
  template <typename Flag>
  static void sweep(const T* s, int64_t begin, int64_t end, int64_t* out, int64_t count, int64_t ties, Flag flag_of,
                    bool guarded = false) {
    constexpr int64_t kBlock = 256;
    alignas(64) uint8_t flags[kBlock];
    int64_t w = 0;
    for (int64_t b0 = begin; b0 < end && w < count; b0 += kBlock) {
      const int64_t len = std::min(kBlock, end - b0);
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) flags[j] = flag_of(key(s[b0 + j]));
      for (int64_t j = len; j < kBlock; ++j) flags[j] = 0;
      for (int64_t j = 0; j < len && w < count; j += kFlagWord) {
        uint64_t word;
        std::memcpy(&word, flags + j, sizeof word);
        if (word == 0) continue;
        if (guarded && w + kFlagWord > count) {  // the last few: never write past this range
          for (int64_t q = j; q < std::min(len, j + kFlagWord) && w < count; ++q) {
            const int64_t tie = (flags[q] & 1) & (ties > 0);
            if ((flags[q] >> 1) | tie) out[w++] = b0 + q;
            ties -= tie;
          }
          continue;
        }
        for (int64_t q = j; q < j + kFlagWord; ++q) {
          const int64_t tie = (flags[q] & 1) & (ties > 0);
          out[w] = b0 + q;
          w += (flags[q] >> 1) | tie;
          ties -= tie;
        }
      }
    }
  }

  // Keys of a strided sample bracket the k-th largest key: keys > hi are surely selected, keys < lo surely
  // not (3 sigma of the sample rank, plus 2), so only keys in [lo, hi] need an exact selection.
  static void sample_bracket(const T* s, int64_t n, int64_t k, int nt, K& lo, K& hi, double& lo_fraction) {
    constexpr int64_t kSample = int64_t(1) << 14;
    const int64_t S = std::min(n, kSample);
    std::vector<K> sample(S);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t j = 0; j < S; ++j) sample[j] = key(s[j * n / S]);
    const double rank = static_cast<double>(k) * S / n;  // of the k-th key in the descending sample
    const double margin = 3.0 * std::sqrt(rank * (1.0 - rank / S) + 1.0) + 2.0;
    const int64_t hi_rank = static_cast<int64_t>(std::floor(rank - margin));
    const int64_t lo_rank = static_cast<int64_t>(std::ceil(rank + margin));
    hi = ~K(0);
    lo = K(0);
    if (hi_rank >= 0) {
      std::nth_element(sample.begin(), sample.begin() + hi_rank, sample.end(), std::greater<K>());
      hi = sample[hi_rank];
    }
    if (lo_rank < S) {
      std::nth_element(sample.begin() + std::max<int64_t>(hi_rank, 0), sample.begin() + lo_rank, sample.end(),
                       std::greater<K>());
      lo = sample[lo_rank];
    }
    lo_fraction = std::min(1.0, static_cast<double>(lo_rank + 1) / S);  // sample share of keys >= lo
  }

  // One pass over the scores: each chunk collects the positions and keys of its keys >= lo (about k plus
  // the bracket), into room sized from the sample; the threshold and the ties are then found among the
  // collected keys alone. Returns false, having written nothing, when the sample misled (a chunk's room
  // overflowed or the k-th key lies outside [lo, hi]): run() then takes the counting passes.
  static bool run_one_pass(const T* s, int64_t n, int64_t k, int64_t* out, int nt, int64_t n_chunks, K lo, K hi,
                           double lo_fraction) {
    std::vector<std::vector<int64_t>> pos(n_chunks);
    std::vector<std::vector<K>> keys(n_chunks);
    std::vector<int64_t> n_gt(n_chunks, 0), n_eq(n_chunks, 0);
    bool overflow = false;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(|| : overflow)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t b = n * c / n_chunks, e = n * (c + 1) / n_chunks, len = e - b;
      const double expected = lo_fraction * static_cast<double>(len);
      const int64_t room = std::min<int64_t>(len, static_cast<int64_t>(expected + 6.0 * std::sqrt(expected) + 1024));
      pos[c].resize(room + kCollectSlack);
      keys[c].resize(room + kCollectSlack);
      int64_t* p = pos[c].data();
      K* kk = keys[c].data();
      int64_t w = 0;
      constexpr int64_t kBlock = 256;
      alignas(64) K block_keys[kBlock];
      for (int64_t b0 = b; b0 < e && !overflow; b0 += kBlock) {
        const int64_t m = std::min(kBlock, e - b0);
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) block_keys[j] = key(s[b0 + j]);
        if (w + m > room) { overflow = true; break; }
        int64_t j = 0;
#if defined(__AVX512F__)
        if constexpr (sizeof(K) == 4) {  // 16 at a time: compress the selected lanes, store whole vectors
          // (register compress + full store: the memory form of vpcompress is microcoded on Zen 4)
          const __m512i low = _mm512_set1_epi32(static_cast<int>(lo));
          const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
          for (; j + 16 <= m; j += 16) {
            const __m512i kv = _mm512_loadu_si512(block_keys + j);
            const __mmask16 take = _mm512_cmpge_epu32_mask(kv, low);
            _mm512_storeu_si512(kk + w, _mm512_maskz_compress_epi32(take, kv));
            const __m512i first = _mm512_add_epi64(_mm512_set1_epi64(b0 + j), iota);
            const __mmask8 take_lo = static_cast<__mmask8>(take), take_hi = static_cast<__mmask8>(take >> 8);
            _mm512_storeu_si512(p + w, _mm512_maskz_compress_epi64(take_lo, first));
            const int64_t w_hi = w + __builtin_popcount(take_lo);
            _mm512_storeu_si512(p + w_hi, _mm512_maskz_compress_epi64(take_hi, _mm512_add_epi64(first, _mm512_set1_epi64(8))));
            w = w_hi + __builtin_popcount(take_hi);
          }
        }
#endif
        for (; j < m; ++j) {  // no branch per element: write, advance when selected
          p[w] = b0 + j;
          kk[w] = block_keys[j];
          w += block_keys[j] >= lo;
        }
      }
      pos[c].resize(w);
      keys[c].resize(w);
    }
    if (overflow) return false;
    int64_t above = 0, inside = 0;
    for (int64_t c = 0; c < n_chunks; ++c)
      for (K x : keys[c]) { above += x > hi; inside += x <= hi; }
    if (!(above < k && k <= above + inside)) return false;
    std::vector<K> bracket;
    bracket.reserve(inside);
    for (int64_t c = 0; c < n_chunks; ++c)
      for (K x : keys[c]) if (x <= hi) bracket.push_back(x);
    const int64_t need = k - above;
    std::nth_element(bracket.begin(), bracket.begin() + (need - 1), bracket.end(), std::greater<K>());
    const K threshold = bracket[need - 1];
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      int64_t gt = 0, eq = 0;
      for (K x : keys[c]) { gt += x > threshold; eq += x == threshold; }
      n_gt[c] = gt;
      n_eq[c] = eq;
    }
    int64_t ties_left = k;
    for (int64_t c = 0; c < n_chunks; ++c) ties_left -= n_gt[c];
    std::vector<int64_t> offset(n_chunks + 1, 0), ties(n_chunks);
    for (int64_t c = 0; c < n_chunks; ++c) {
      ties[c] = std::min(n_eq[c], ties_left);
      ties_left -= ties[c];
      offset[c + 1] = offset[c] + n_gt[c] + ties[c];
    }
    TORCH_CHECK(offset[n_chunks] == k && ties_left == 0, "select_k: internal error (one pass selected ",
                offset[n_chunks], " of ", k, ")");
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      int64_t* o = out + offset[c];
      int64_t t = ties[c];
      const int64_t m = static_cast<int64_t>(keys[c].size());
      for (int64_t j = 0; j < m; ++j) {  // ascending positions; ties to the lower ones
        const K x = keys[c][j];
        const bool tie = x == threshold && t > 0;
        if (x > threshold || tie) *o++ = pos[c][j];
        t -= tie;
      }
    }
    return true;
  }

  static void run(const T* s, int64_t n, int64_t k, int64_t* out) {
    const int nt = team_for(n);
    const int64_t n_chunks = chunk_count(nt, n, 1 << 14);
    K lo, hi;
    double lo_fraction;
    sample_bracket(s, n, k, nt, lo, hi, lo_fraction);
    if (run_one_pass(s, n, k, out, nt, n_chunks, lo, hi, lo_fraction)) return;
    std::vector<int64_t> n_gt(n_chunks), n_eq(n_chunks);
    std::vector<std::vector<int64_t>> in_bracket(n_chunks);
    int64_t above = 0, inside = 0;
    for (int attempt = 0;; ++attempt) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t c = 0; c < n_chunks; ++c) {
        n_gt[c] = count_and_collect(s, n * c / n_chunks, n * (c + 1) / n_chunks, lo, hi, in_bracket[c]);
      }
      above = inside = 0;
      for (int64_t c = 0; c < n_chunks; ++c) { above += n_gt[c]; inside += static_cast<int64_t>(in_bracket[c].size()); }
      if (above < k && k <= above + inside) break;
      TORCH_CHECK(attempt == 0, "select_k: internal error (bracket)");
      if (above >= k) { lo = hi; hi = ~K(0); }  // T is at or above hi: the bracket becomes [hi, max]
      else { hi = lo; lo = K(0); }             // T is at or below lo: the bracket becomes [min, lo]
    }
    std::vector<int64_t> key_at(n_chunks + 1, 0);
    for (int64_t c = 0; c < n_chunks; ++c) key_at[c + 1] = key_at[c] + static_cast<int64_t>(in_bracket[c].size());
    std::vector<K> keys(inside);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      K* kc = keys.data() + key_at[c];
      const auto& v = in_bracket[c];
      for (size_t j = 0; j < v.size(); ++j) kc[j] = key(s[v[j]]);
    }
    const int64_t need = k - above;
    std::vector<K> order(keys);
    std::nth_element(order.begin(), order.begin() + (need - 1), order.end(), std::greater<K>());
    const K threshold = order[need - 1];
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      int64_t gt = 0, eq = 0;
      for (int64_t j = key_at[c]; j < key_at[c + 1]; ++j) {
        gt += keys[j] > threshold;
        eq += keys[j] == threshold;
      }
      n_gt[c] += gt;
      n_eq[c] = eq;
    }
    int64_t ties_left = k;
    for (int64_t c = 0; c < n_chunks; ++c) ties_left -= n_gt[c];
    std::vector<int64_t> offset(n_chunks + 1), ties(n_chunks);
    for (int64_t c = 0; c < n_chunks; ++c) {
      ties[c] = std::min(n_eq[c], ties_left);
      ties_left -= ties[c];
      offset[c + 1] = offset[c] + n_gt[c] + ties[c];
    }
    TORCH_CHECK(offset[n_chunks] == k && ties_left == 0, "select_k: internal error (selected ", offset[n_chunks],
                " of ", k, ")");
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c)
      sweep(s, n * c / n_chunks, n * (c + 1) / n_chunks, out + offset[c], offset[c + 1] - offset[c], ties[c],
            [threshold](K x) { return uint8_t((K(x > threshold) << 1) | K(x == threshold)); }, true);
  }
};

template <typename T>
void select_k_impl(const T* s, int64_t n, int64_t k, bool largest, bool absolute, int64_t* out) {
  if (largest)
    absolute ? Selector<T, true, true>::run(s, n, k, out) : Selector<T, true, false>::run(s, n, k, out);
  else
    absolute ? Selector<T, false, true>::run(s, n, k, out) : Selector<T, false, false>::run(s, n, k, out);
}

}  // namespace

// CSR row pointers of row indices sorted ascending: crow[r] = the first entry whose row is >= r. One
// parallel pass: each chunk of entries writes the pointers of the rows that start inside it.
torch::Tensor rows_to_crow(torch::Tensor rows, int64_t n_rows) {
  check_index_vector(rows, "rows");
  TORCH_CHECK_VALUE(n_rows >= 0, "n_rows must be >= 0, got ", n_rows);
  const int64_t n = rows.numel();
  auto crow = torch::empty({n_rows + 1}, rows.options());
  bool bad = false;
  dispatch_index(rows, [&](auto tag) {
    using I = decltype(tag);
    const I* r = rows.data_ptr<I>();
    I* out = crow.data_ptr<I>();
    const int nt = team_for(n);
    const int64_t n_chunks = chunk_count(nt, n, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(|| : bad)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t b = n * c / n_chunks, e = n * (c + 1) / n_chunks;
      int64_t previous = b == 0 ? -1 : static_cast<int64_t>(r[b - 1]);
      for (int64_t j = b; j < e; ++j) {
        const int64_t row = r[j];
        if (row < previous || row >= n_rows) { bad = true; break; }
        for (int64_t q = previous + 1; q <= row; ++q) out[q] = static_cast<I>(j);
        previous = row;
      }
      if (c == n_chunks - 1 && !bad)
        for (int64_t q = previous + 1; q <= n_rows; ++q) out[q] = static_cast<I>(n);
    }
    if (n == 0)
      for (int64_t q = 0; q <= n_rows; ++q) out[q] = 0;
  });
  TORCH_CHECK_VALUE(!bad, "rows must be sorted ascending with entries in [0, n_rows=", n_rows, ")");
  return crow;
}

torch::Tensor linear_index(torch::Tensor row, torch::Tensor col, int64_t n_cols) {
  check_common(row, col, "row");
  TORCH_CHECK(row.numel() == col.numel(), "row and col must have the same length");
  const int64_t n = row.numel();
  auto out = torch::empty({n}, row.options().dtype(torch::kInt64));
  int64_t* o = out.data_ptr<int64_t>();
  dispatch_index(row, [&](auto tag) {
    using I = decltype(tag);
    const I* r = row.data_ptr<I>();
    const I* c = col.data_ptr<I>();
#pragma omp parallel for num_threads(team_for(n)) schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int64_t>(r[i]) * n_cols + static_cast<int64_t>(c[i]);
  });
  return out;
}

// CSR (row pointers, columns) of sorted linear indices: one pass, the row pointer of row q is written by
// the first entry at or after row q.
std::tuple<torch::Tensor, torch::Tensor> linear_to_csr(torch::Tensor lin, int64_t n_rows, int64_t n_cols) {
  TORCH_CHECK(lin.device().is_cpu() && lin.dim() == 1 && lin.is_contiguous() && lin.scalar_type() == torch::kInt64,
              "lin must be a contiguous 1-D int64 CPU tensor");
  TORCH_CHECK_VALUE(n_rows >= 0 && n_cols >= 1, "linear_to_csr needs n_rows >= 0 and n_cols >= 1, got ", n_rows,
                    " and ", n_cols);
  const int64_t n = lin.numel(), total = n_rows * n_cols;
  const int64_t* x = lin.data_ptr<int64_t>();
  const int nt = team_for(n);
  bool bad = false;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(|| : bad)
  for (int64_t i = 0; i < n; ++i) bad = bad || x[i] < 0 || x[i] >= total || (i > 0 && x[i - 1] > x[i]);
  TORCH_CHECK_VALUE(!bad, "lin must be sorted ascending with entries in [0, n_rows * n_cols = ", total, ")");
  auto crow = torch::empty({n_rows + 1}, lin.options());
  auto col = torch::empty({n}, lin.options());
  int64_t* cp = crow.data_ptr<int64_t>();
  int64_t* co = col.data_ptr<int64_t>();
  const Divider div(n_cols);
  const int64_t n_chunks = chunk_count(nt, n, 1 << 14);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t b = n * c / n_chunks, e = n * (c + 1) / n_chunks;
    int64_t prev_row = -1, r, q;
    if (b > 0) div.divmod(x[b - 1], prev_row, q);
    for (int64_t i = b; i < e; ++i) {
      div.divmod(x[i], r, q);
      co[i] = q;
      for (int64_t k = prev_row + 1; k <= r; ++k) cp[k] = i;
      prev_row = r;
    }
  }
  int64_t last_row = -1, q;
  if (n > 0) div.divmod(x[n - 1], last_row, q);
  for (int64_t k = last_row + 1; k <= n_rows; ++k) cp[k] = n;
  return {crow, col};
}

// m uniform draws from [0, total) with replacement, ascending: positions floor(S_i * total / S_{m+1}) of the
// partial sums S_i of m + 1 Exp(1) spacings (order statistics of uniforms). Two passes over fixed blocks:
// block sums, then each value as (sum of earlier blocks) + (partial sum inside its block), which is
// monotone across block borders exactly, so the output is sorted without a sort. With `exclude` (sorted),
// the second pass keeps each position once and only when it is not in `exclude` (a merge against it, so
// the draws are never stored in full).
torch::Tensor sorted_uniform_draws(int64_t total, int64_t m, int64_t seed, c10::optional<torch::Tensor> exclude) {
  TORCH_CHECK_VALUE(total >= 1 && m >= 0, "sorted_uniform_draws needs total >= 1 and m >= 0, got ", total, " and ", m);
  const bool unique = exclude.has_value();
  const int64_t* ex = nullptr;
  int64_t n_ex = 0;
  if (unique) {
    const auto& t = *exclude;
    TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() && t.scalar_type() == torch::kInt64,
                "exclude must be a contiguous 1-D int64 CPU tensor");
    ex = t.data_ptr<int64_t>();
    n_ex = t.numel();
    bool unsorted = false;
#pragma omp parallel for num_threads(team_for(n_ex)) schedule(static) reduction(|| : unsorted)
    for (int64_t j = 1; j < n_ex; ++j) unsorted = unsorted || ex[j - 1] > ex[j];
    TORCH_CHECK_VALUE(!unsorted, "exclude must be sorted ascending");
  }
  auto out = torch::empty({m}, torch::TensorOptions().dtype(torch::kInt64));
  if (m == 0) return out;
  const uint64_t s = static_cast<uint64_t>(seed);
  const int64_t n_sp = m + 1, n_blocks = (n_sp + kDrawBlock - 1) / kDrawBlock;
  int64_t* o = out.data_ptr<int64_t>();
  double* spacing = reinterpret_cast<double*>(o);  // the spacings live in the output until replaced
  std::vector<double> block_sum(n_blocks);
  std::vector<int64_t> kept(n_blocks);
  const int nt = team_size(n_sp * 32);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    double p = 0.0;
    for (int64_t i = b * kDrawBlock, e = std::min(n_sp, (b + 1) * kDrawBlock); i < e; ++i) {
      const double v = exp_spacing(s, i);
      if (i < m) spacing[i] = v;
      p += v;
    }
    block_sum[b] = p;
  }
  std::vector<double> start(n_blocks + 1, 0.0);
  for (int64_t b = 0; b < n_blocks; ++b) start[b + 1] = start[b] + block_sum[b];
  const double scale = static_cast<double>(total) / start[n_blocks];
  auto position = [&](double v) { return std::min(static_cast<int64_t>(v * scale), total - 1); };
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    double p = 0.0;
    const double base = start[b];
    const int64_t begin = b * kDrawBlock, end = std::min(m, (b + 1) * kDrawBlock);
    if (!unique) {
      for (int64_t i = begin; i < end; ++i) {
        p += spacing[i];
        o[i] = position(base + p);
      }
      continue;
    }
    // the previous block's last value is exactly start[b] (same partial sums), so duplicates across the
    // border are seen too
    int64_t prev = b == 0 ? -1 : position(base), w = begin, j = -1;
    for (int64_t i = begin; i < end; ++i) {
      p += spacing[i];
      const int64_t pos = position(base + p);
      if (pos == prev) continue;
      prev = pos;
      if (j < 0) j = std::lower_bound(ex, ex + n_ex, pos) - ex;
      while (j < n_ex && ex[j] < pos) ++j;
      if (j < n_ex && ex[j] == pos) continue;
      o[w++] = pos;  // w <= i: only spacings already read are overwritten
    }
    kept[b] = w - begin;
  }
  if (!unique) return out;
  int64_t total_kept = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t begin = b * kDrawBlock;
    if (total_kept != begin && kept[b] > 0) std::memmove(o + total_kept, o + begin, kept[b] * sizeof(int64_t));
    total_kept += kept[b];
  }
  return out.resize_({total_kept});
}

// Sorted a, each value once, without the values of sorted b: a linear merge per chunk of a (its start in b
// by binary search), written in place per chunk and then compacted.
torch::Tensor unique_difference(torch::Tensor a, torch::Tensor b) {
  check_common(a, b, "a");
  const int64_t na = a.numel(), nb = b.numel();
  auto out = torch::empty({na}, a.options());
  int64_t total = 0;
  dispatch_index(a, [&](auto tag) {
    using I = decltype(tag);
    const I* x = a.data_ptr<I>();
    const I* y = b.data_ptr<I>();
    I* o = out.data_ptr<I>();
    const int nt = team_for(na + nb);
    const int64_t n_chunks = chunk_count(nt, na, 1 << 14);
    std::vector<int64_t> kept(n_chunks);
    bool unsorted = false;
    for (int64_t j = 1; j < nb && !unsorted; ++j) unsorted = y[j - 1] > y[j];
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(|| : unsorted)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t begin = na * c / n_chunks, end = na * (c + 1) / n_chunks;
      int64_t w = begin;
      if (begin < end) {
        int64_t j = std::lower_bound(y, y + nb, x[begin]) - y;
        for (int64_t i = begin; i < end; ++i) {
          const I v = x[i];
          if (i > 0 && x[i - 1] >= v) {
            unsorted = unsorted || x[i - 1] > v;
            continue;
          }
          while (j < nb && y[j] < v) ++j;
          if (j < nb && y[j] == v) continue;
          o[w++] = v;
        }
      }
      kept[c] = w - begin;
    }
    TORCH_CHECK_VALUE(!unsorted, "unique_difference needs both inputs sorted ascending");
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t begin = na * c / n_chunks;
      if (total != begin && kept[c] > 0) std::memmove(o + total, o + begin, kept[c] * sizeof(I));
      total += kept[c];
    }
  });
  return out.resize_({total});
}

torch::Tensor select_k(torch::Tensor scores, int64_t k, bool largest, bool absolute) {
  TORCH_CHECK(scores.device().is_cpu() && scores.dim() == 1 && scores.is_contiguous(),
              "scores must be a contiguous 1-D CPU tensor");
  const int64_t n = scores.numel();
  k = std::max<int64_t>(0, std::min(k, n));
  if (k == n) return torch::arange(n, scores.options().dtype(torch::kInt64));
  auto out = torch::empty({k}, scores.options().dtype(torch::kInt64));
  if (k == 0) return out;
  if (scores.scalar_type() == torch::kFloat32)
    select_k_impl<float>(scores.data_ptr<float>(), n, k, largest, absolute, out.data_ptr<int64_t>());
  else if (scores.scalar_type() == torch::kFloat64)
    select_k_impl<double>(scores.data_ptr<double>(), n, k, largest, absolute, out.data_ptr<int64_t>());
  else
    TORCH_CHECK(false, "select_k supports float32 and float64 scores, got ", scores.scalar_type());
  return out;
}

// Kept entries (row, col minus the sorted slots `drop`) merged with the sorted new linear indices, and every
// payload (a slot-ordered tensor: the values, optimizer state) carried to the new slot order with 0 at new
// entries. Chunks of old slots run in parallel (their new entries and output offset found by binary
// search). Inside a chunk, branch-free passes (a taken/not-taken choice per entry would mispredict about
// every fifth time): (1) flag the chunk's drops, then compact the kept entries (slot, row, col, linear
// index) into thread scratch, and split the chunk's new linear indices into row and column; (2) merge by a
// compare and conditional moves, writing row, col and source slot; (3) per payload, gather from the source
// slots while they are in cache. 20 + 2 x 7 ms (merge, then a gather per state) -> 16 ms at n = 16384, 98 %.
struct Payload {
  const char* src;
  char* dst;
  int64_t size;  // bytes per element: 1, 2, 4 or 8
};

template <typename E, typename I>
__attribute__((optimize("no-tree-vectorize")))  // scalar: the vectorised masked gather was 3x slower (Zen 4)
void carry_payload(const Payload& p, const I* source, int64_t w0, int64_t w1) {
  const E* from = reinterpret_cast<const E*>(p.src);
  E* to = reinterpret_cast<E*>(p.dst);
  for (int64_t w = w0; w < w1; ++w) {  // arithmetic masks: GCC turned the selects into a mispredicted branch
    const int64_t slot = source[w];
    const int64_t negative = slot >> 63;  // all ones for a new entry (-1)
    to[w] = from[slot & ~negative] & static_cast<E>(~negative);
  }
}

// Scratch of one thread, kept across chunks (growing only): allocating it per chunk cost more than the merge.
struct MergeScratch {
  std::vector<int64_t> klin, nlin, kslot, kcol, ncol;
  std::vector<uint8_t> flags;
};

template <typename I>
int64_t merge_chunk(const I* crow, int64_t n_rows, const I* c, int64_t n_cols, const Divider& div, const int64_t* d,
                    int64_t nd, const int64_t* nl, int64_t s0, int64_t s1, int64_t j0, int64_t j1, int64_t w0,
                    I* ocol, I* src, const std::vector<Payload>& payloads, MergeScratch& scratch) {
  const int64_t n_old = s1 - s0, n_new = j1 - j0;
  for (auto* v : {&scratch.klin, &scratch.kslot, &scratch.kcol})
    if (static_cast<int64_t>(v->size()) < n_old + 1) v->resize(n_old + 1);
  for (auto* v : {&scratch.nlin, &scratch.ncol})
    if (static_cast<int64_t>(v->size()) < n_new + 1) v->resize(n_new + 1);
  if (static_cast<int64_t>(scratch.flags.size()) < n_old + 1) scratch.flags.resize(n_old + 1);
  uint8_t* flags = scratch.flags.data();
  int64_t *klin = scratch.klin.data(), *kslot = scratch.kslot.data(), *kcol = scratch.kcol.data(),
          *nlin = scratch.nlin.data(), *ncol = scratch.ncol.data();
  // drop flags first (independent stores), so the compaction below has no load in its dependency chain
  std::fill(flags, flags + n_old, uint8_t(0));
  for (int64_t k = std::lower_bound(d, d + nd, s0) - d; k < nd && d[k] < s1; ++k) flags[d[k] - s0] = 1;
  int64_t nk = 0;
  int64_t ri = s0 < s1 ? row_of_slot(crow, n_rows, s0) : 0;
  for (int64_t i = s0; i < s1; ++i) {  // pass 1: kept entries (the row advances at each row pointer)
    while (static_cast<int64_t>(crow[ri + 1]) <= i) ++ri;
    const int64_t ci = c[i];
    kslot[nk] = i;
    kcol[nk] = ci;
    klin[nk] = ri * n_cols + ci;
    nk += 1 - flags[i - s0];
  }
  constexpr int64_t kEnd = std::numeric_limits<int64_t>::max();
  klin[nk] = kEnd;
  for (int64_t j = 0; j < n_new; ++j) {
    int64_t new_row;
    nlin[j] = nl[j0 + j];
    div.divmod(nlin[j], new_row, ncol[j]);
  }
  nlin[n_new] = kEnd;
  int64_t collisions = 0, i = 0, j = 0;
  const int64_t w_end = w0 + nk + n_new;
  for (int64_t w = w0; w < w_end; ++w) {  // pass 2: merge (GCC makes these selects conditional moves)
    const int64_t a = klin[i], b = nlin[j];
    const bool old = a <= b;
    collisions += a == b;
    ocol[w] = static_cast<I>(old ? kcol[i] : ncol[j]);
    src[w] = static_cast<I>(old ? kslot[i] : -1);
    i += old;
    j += !old;
  }
  for (const Payload& p : payloads) {  // pass 3: payloads
    switch (p.size) {
      case 8: carry_payload<uint64_t>(p, src, w0, w_end); break;
      case 4: carry_payload<uint32_t>(p, src, w0, w_end); break;
      case 2: carry_payload<uint16_t>(p, src, w0, w_end); break;
      default: carry_payload<uint8_t>(p, src, w0, w_end); break;
    }
  }
  return collisions;
}

// Row pointers after a merge: row r keeps its entries minus its dropped slots plus its new positions. Per
// row range (in parallel), two cursors walk the sorted drop slots and new positions; then a prefix sum.
template <typename I>
void merged_row_pointers(const I* crow, int64_t n_rows, int64_t n_cols, const int64_t* d, int64_t nd,
                         const int64_t* nl, int64_t nn, I* out) {
  std::vector<int64_t> count(n_rows);
  const int nt = team_for(n_rows + nd + nn);
  const int64_t n_chunks = chunk_count(nt, n_rows, 1 << 10);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t r0 = n_rows * ch / n_chunks, r1 = n_rows * (ch + 1) / n_chunks;
    int64_t k = std::lower_bound(d, d + nd, static_cast<int64_t>(crow[r0])) - d;
    int64_t j = std::lower_bound(nl, nl + nn, r0 * n_cols) - nl;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t slot_end = crow[r + 1], lin_end = (r + 1) * n_cols;
      int64_t dropped = 0, added = 0;
      for (; k < nd && d[k] < slot_end; ++k) ++dropped;
      for (; j < nn && nl[j] < lin_end; ++j) ++added;
      count[r] = static_cast<int64_t>(crow[r + 1]) - static_cast<int64_t>(crow[r]) - dropped + added;
    }
  }
  int64_t at = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    out[r] = static_cast<I>(at);
    at += count[r];
  }
  out[n_rows] = static_cast<I>(at);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, int64_t, std::vector<torch::Tensor>> merge_entries(
    torch::Tensor crow, torch::Tensor col, torch::Tensor drop, torch::Tensor new_lin, int64_t n_cols,
    std::vector<torch::Tensor> payloads) {
  check_common(crow, col, "crow");
  for (const auto* t : {&drop, &new_lin})
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 1 && t->is_contiguous() && t->scalar_type() == torch::kInt64,
                "drop and new_lin must be contiguous 1-D int64 CPU tensors");
  TORCH_CHECK_VALUE(n_cols >= 1, "n_cols must be >= 1, got ", n_cols);
  TORCH_CHECK_VALUE(crow.numel() >= 1, "crow must have at least one element");
  const int64_t n_rows = crow.numel() - 1, nnz = col.numel(), nd = drop.numel(), nn = new_lin.numel();
  for (const auto& t : payloads)
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() && t.numel() == nnz &&
                          (t.element_size() == 1 || t.element_size() == 2 || t.element_size() == 4 ||
                           t.element_size() == 8),
                      "payloads must be contiguous 1-D CPU tensors with one element per entry (", nnz, ")");
  const int64_t* d = drop.data_ptr<int64_t>();
  const int64_t* nl = new_lin.data_ptr<int64_t>();
  bool bad_drop = false, bad_new = false;
#pragma omp parallel for num_threads(team_for(nd)) schedule(static) reduction(|| : bad_drop)
  for (int64_t i = 0; i < nd; ++i) bad_drop = bad_drop || d[i] < 0 || d[i] >= nnz || (i > 0 && d[i - 1] >= d[i]);
#pragma omp parallel for num_threads(team_for(nn)) schedule(static) reduction(|| : bad_new)
  for (int64_t i = 0; i < nn; ++i)
    bad_new = bad_new || nl[i] < 0 || nl[i] >= n_rows * n_cols || (i > 0 && nl[i - 1] >= nl[i]);
  TORCH_CHECK_VALUE(!bad_drop, "drop must be strictly increasing slots in [0, ", nnz, ")");
  TORCH_CHECK_VALUE(!bad_new, "new_lin must be strictly increasing and in [0, n_rows * n_cols = ", n_rows * n_cols, ")");
  const int64_t n_out = nnz - nd + nn;
  auto out_crow = torch::empty({n_rows + 1}, crow.options());
  auto out_col = torch::empty({n_out}, col.options());
  auto source = torch::empty({n_out}, col.options());
  std::vector<torch::Tensor> carried;
  std::vector<Payload> views;
  for (const auto& t : payloads) {
    if (nnz == 0) {  // nothing to carry: every entry is new
      carried.push_back(torch::zeros({n_out}, t.options()));
      continue;
    }
    carried.push_back(torch::empty({n_out}, t.options()));
    views.push_back({static_cast<const char*>(t.data_ptr()), static_cast<char*>(carried.back().data_ptr()),
                     static_cast<int64_t>(t.element_size())});
  }
  int64_t collisions = 0;
  dispatch_index(col, [&](auto tag) {
    using I = decltype(tag);
    const I* cp = crow.data_ptr<I>();
    check_row_pointers(cp, n_rows, nnz);
    const I* c = col.data_ptr<I>();
    auto lin_at = [&](int64_t i) { return row_of_slot(cp, n_rows, i) * n_cols + static_cast<int64_t>(c[i]); };
    const Divider div(n_cols);
    const int nt = team_for(nnz + nn);
    const int64_t n_chunks = std::min<int64_t>(chunk_count(nt, nnz, 1 << 14), std::max<int64_t>(1, nnz));
    std::vector<int64_t> per_chunk(n_chunks, 0);
    std::vector<MergeScratch> scratch(nt);
    parallel_chunks(nt, n_chunks, [&](int64_t ch) {
      const int64_t s0 = nnz * ch / n_chunks, s1 = nnz * (ch + 1) / n_chunks;
      const int64_t j0 = ch == 0 ? 0 : std::lower_bound(nl, nl + nn, lin_at(s0)) - nl;
      const int64_t j1 = ch == n_chunks - 1 ? nn : std::lower_bound(nl, nl + nn, lin_at(s1)) - nl;
      const int64_t w0 = s0 - (std::lower_bound(d, d + nd, s0) - d) + j0;
      per_chunk[ch] = merge_chunk<I>(cp, n_rows, c, n_cols, div, d, nd, nl, s0, s1, j0, j1, w0,
                                     out_col.data_ptr<I>(), source.data_ptr<I>(), views, scratch[omp_get_thread_num()]);
    });
    for (int64_t v : per_chunk) collisions += v;
    merged_row_pointers<I>(cp, n_rows, n_cols, d, nd, nl, nn, out_crow.data_ptr<I>());
  });
  return {out_crow, out_col, source, collisions, carried};
}

// The remap of a merge under row-block storage, for CSR entries [p0, p1): out[new_slots[p]] =
// old_slots[source[p]], or -1 where source[p] < 0 (a grown entry); source: merge_entries' old CSR slot of each
// new CSR entry. Returns false on an index out of range.
template <typename I>
bool remap_range(const I* source, const I* old_slots, int64_t n_old, const I* new_slots, I* out, int64_t n,
                 int64_t p0, int64_t p1) {
  bool ok = true;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t q = new_slots[p], src = source[p];
    const int64_t o = src < 0 || src >= n_old ? -1 : static_cast<int64_t>(old_slots[src]);
    if (q < 0 || q >= n || src >= n_old || o >= n_old) { ok = false; continue; }
    out[q] = static_cast<I>(o);
  }
  return ok;
}

// Every payload (values, optimizer state, old storage order) at the new storage positions [q0, q1), through
// the remap (0 where it is -1): out read once per piece for all payloads, the stores stream, the loads stay
// inside the block's range. (Storing each payload where remap_range stores scatters three streams: 2x slower.)
template <typename E>
void carry_through(const Payload& p, const int64_t* from, int64_t q0, int64_t m) {
  const E* src = reinterpret_cast<const E*>(p.src);
  E* dst = reinterpret_cast<E*>(p.dst) + q0;
  for (int64_t q = 0; q < m; ++q) dst[q] = from[q] < 0 ? E(0) : src[from[q]];
}

template <typename I>
void carry_range(const std::vector<Payload>& payloads, const I* remap, int64_t q0, int64_t q1) {
  constexpr int64_t kPiece = 4096;
  int64_t from[kPiece];
  for (int64_t a = q0; a < q1; a += kPiece) {
    const int64_t m = std::min(kPiece, q1 - a);
    for (int64_t q = 0; q < m; ++q) from[q] = remap[a + q];
    for (const Payload& pl : payloads) {
      switch (pl.size) {
        case 8: carry_through<uint64_t>(pl, from, a, m); break;
        case 4: carry_through<uint32_t>(pl, from, a, m); break;
        case 2: carry_through<uint16_t>(pl, from, a, m); break;
        default: carry_through<uint8_t>(pl, from, a, m); break;
      }
    }
  }
}

// What a merge under row-block storage hands to the transpose that builds the new storage (merge_entries'
// source, the old storage position of every old CSR entry, the payloads in old storage order); the remap and
// the carried payloads come back in out and the payloads' dst.
template <typename I>
struct MergeCarry {
  const I* source;
  const I* old_slots;
  int64_t n_old;
  std::vector<Payload> payloads;
  I* out;
  std::atomic<bool> ok{true};
};

// Row-block storage of the values (CompressedLayout, value_block): the values of each block of `block_rows`
// rows keep the block's CSR range but are ordered by (column, row) inside it, which is the order in which
// the transposed walk reaches them, so that walk reads each block's values (and writes their gradients)
// as one forward stream: a few live lines per block instead of a random line per entry. `slots` receives
// the storage position of every CSR entry (what the row walk reads values through). Two ways to build it:
//
// By columns: the transposed CSR and the storage positions together, from the count of every (block,
// column). (1) Each block's column histogram, blocks in parallel, into a table of n_blocks x n_cols; (2) over
// that table, the column pointers and where each (block, column) run starts in the column-major order:
// block b's entries of column c follow those of blocks 0..b-1 (rows ascend within a column); (3) per block
// again, a counting sort by column inside the block's range gives each entry's storage position, and the
// block's storage, read in order, is written to the transposed CSR as one run per (block, column) instead
// of one scattered pair per entry (16384^2 at 98 %: 32 -> 21 ms). The table holds n_blocks x n_cols counts and
// costs that much work: "auto" takes it while that is at most half the entries, the walk beyond (medians,
// ms, by columns vs the walk: 0.25 of the entries 22.2 vs 40.6; 0.5: 10.8 vs 12.9, 21.1 vs 24.9, 26.5 vs
// 36.3, 31.1 vs 43.0; 1.0 (65536^2 at fan-in 64): 33.9 vs 29.3; 4.0 (262144^2): 254 vs 158).
template <typename I, typename F>
void blocked_transpose_by_columns(const I* cp, const I* col, int64_t n_rows, int64_t n_cols, int64_t block_rows,
                                  I* sl, SlotRow<I>* pairs, I* ccol, I* walk, F&& after_block) {
  const int64_t n_blocks = (n_rows + block_rows - 1) / block_rows, nnz = cp[n_rows];
  const int nt = team_for(nnz);
  std::unique_ptr<I[]> run(new I[static_cast<size_t>(n_blocks) * n_cols]);  // counts, then where each run starts
  auto block_range = [&](int64_t b, int64_t& p0, int64_t& p1) {
    p0 = cp[b * block_rows];
    p1 = cp[std::min(n_rows, (b + 1) * block_rows)];
  };
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    I* h = run.get() + b * n_cols;
    std::fill(h, h + n_cols, I(0));
    int64_t p0, p1;
    block_range(b, p0, p1);
    for (int64_t p = p0; p < p1; ++p) ++h[col[p]];
  }
  // column totals (per chunk of columns), their prefix, then run starts block after block
  const int64_t n_chunks = std::min<int64_t>(nt * kChunksPerThread, std::max<int64_t>(1, n_cols / 256));
  std::vector<int64_t> total(n_cols);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t c0 = n_cols * ch / n_chunks, c1 = n_cols * (ch + 1) / n_chunks;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const I* h = run.get() + b * n_cols;
      for (int64_t c = c0; c < c1; ++c) total[c] += h[c];
    }
  }
  int64_t at = 0;
  for (int64_t c = 0; c < n_cols; ++c) {
    ccol[c] = static_cast<I>(at);
    const int64_t n = total[c];
    total[c] = at;  // becomes the next run start of column c
    at += n;
  }
  ccol[n_cols] = static_cast<I>(at);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t c0 = n_cols * ch / n_chunks, c1 = n_cols * (ch + 1) / n_chunks;
    for (int64_t b = 0; b < n_blocks; ++b) {
      I* h = run.get() + b * n_cols;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t n = h[c];
        h[c] = static_cast<I>(total[c]);
        total[c] += n;
      }
    }
  }
#pragma omp parallel num_threads(nt)
  {
    std::vector<int64_t> next(n_cols);  // the block's next storage position per column
    std::vector<I> row_at;              // the row of each of the block's storage positions
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
      int64_t p0, p1;
      block_range(b, p0, p1);
      const I* start = run.get() + b * n_cols;
      auto run_end = [&](int64_t c) -> int64_t { return b + 1 < n_blocks ? start[c + n_cols] : ccol[c + 1]; };
      int64_t s = p0;
      for (int64_t c = 0; c < n_cols; ++c) {
        next[c] = s;
        s += run_end(c) - start[c];
      }
      row_at.resize(p1 - p0);
      const int64_t r0 = b * block_rows, r1 = std::min(n_rows, r0 + block_rows);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t p = cp[r], e = cp[r + 1]; p < e; ++p) {
          const int64_t q = next[col[p]]++;
          sl[p] = static_cast<I>(q);
          row_at[q - p0] = static_cast<I>(r);
        }
      s = p0;
      for (int64_t c = 0; c < n_cols; ++c)
        for (int64_t t = start[c], e = run_end(c); t < e; ++t, ++s) {
          pairs[t] = SlotRow<I>{static_cast<I>(s), row_at[s - p0]};
          if (walk != nullptr) {  // the storage walk, in storage order (a sequential stream)
            walk[2 * s] = static_cast<I>(c);
            walk[2 * s + 1] = row_at[s - p0];
          }
        }
      after_block(p0, p1);  // while the block is in cache
    }
  }
}

// By the walk: a stable bucket pass over the transposed CSR's (slot, row) pairs (column-major, rows ascending
// within a column) by block, per-thread counts per block, rewriting each pair's slot as its storage position.
// Inverting that directly (slots[csr slot] = s in the walk's order) writes a random line per entry; instead
// the CSR slot of every storage position is written first (each block's positions front to back: one live
// line per block), then slots in storage order, whose writes stay inside the current block's range.
template <typename I>
void block_slots_by_walk(const I* cp, SlotRow<I>* pr, int64_t n_rows, int64_t nnz, int64_t block_rows, I* sl,
                         I* csr_of) {
  const int64_t n_blocks = (n_rows + block_rows - 1) / block_rows;
  const int nt = team_for(nnz);
  std::vector<int64_t> next(static_cast<size_t>(nt) * n_blocks, 0);
  std::vector<int32_t> block_of(n_rows);  // a table instead of two integer divisions per entry
  for (int64_t r = 0; r < n_rows; ++r) block_of[r] = static_cast<int32_t>(r / block_rows);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    int64_t* h = next.data() + static_cast<size_t>(t) * n_blocks;
    for (int64_t k = nnz * t / nt, e = nnz * (t + 1) / nt; k < e; ++k) ++h[block_of[pr[k].row]];
  }
  for (int64_t b = 0; b < n_blocks; ++b) {  // thread t's first position in block b
    int64_t off = cp[b * block_rows];
    for (int t = 0; t < nt; ++t) {
      int64_t& h = next[static_cast<size_t>(t) * n_blocks + b];
      const int64_t n = h;
      h = off;
      off += n;
    }
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    int64_t* pos = next.data() + static_cast<size_t>(t) * n_blocks;
    for (int64_t k = nnz * t / nt, e = nnz * (t + 1) / nt; k < e; ++k) {
      const I s = static_cast<I>(pos[block_of[pr[k].row]]++);
      csr_of[s] = pr[k].slot;
      pr[k].slot = s;
    }
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t s = 0; s < nnz; ++s) sl[csr_of[s]] = static_cast<I>(s);
}

// Transposed CSR of a CSR in one counting sort: (pairs, ccol, slots), pairs the (nnz, 2) (slot, row) of each
// entry in column-major order. block_rows > 0: row-block value storage, the pairs' slots are storage
// positions and `slots` the storage position of each CSR entry (empty otherwise); method 0 picks the way to
// build it (above), 1 forces "by columns", 2 "by the walk" (both give the same result; tests compare them).
// bucket_bits: -1 picks one or two passes (auto_bucket_bits), 0 forces one, k > 0 two with 2^k columns per
// bucket (all give the same result). With `carry` (after a merge), the remap and the payloads follow: by
// columns, block by block inside the transpose while each block is in cache; else in one pass afterwards.
template <typename I>
void transpose_into(const torch::Tensor& crow, const torch::Tensor& col, int64_t n_cols, int64_t block_rows,
                    int64_t method, int64_t bucket_bits, torch::Tensor& pairs, torch::Tensor& ccol,
                    torch::Tensor& slots, MergeCarry<I>* carry, torch::Tensor* walk) {
  TORCH_CHECK_VALUE(n_cols >= 0, "n_cols must be >= 0, got ", n_cols);
  TORCH_CHECK_VALUE(crow.numel() >= 1, "crow must have at least one element");
  TORCH_CHECK_VALUE(block_rows >= 0, "block_rows must be >= 0, got ", block_rows);
  TORCH_CHECK_VALUE(method >= 0 && method <= 2, "method must be 0 (auto), 1 (by columns) or 2 (by the walk), got ", method);
  TORCH_CHECK_VALUE(bucket_bits >= -1 && bucket_bits <= 30, "bucket_bits must be -1 (auto), 0 (one pass) or 1..30, got ",
                    bucket_bits);
  const int64_t nnz = col.numel(), n_rows = crow.numel() - 1;
  const int bits = bucket_bits < 0 ? auto_bucket_bits(n_cols) : static_cast<int>(bucket_bits);
  pairs = torch::empty({nnz, 2}, col.options());
  ccol = torch::empty({n_cols + 1}, col.options());
  slots = torch::empty({block_rows > 0 ? nnz : 0}, col.options());
  const bool with_walk = walk != nullptr && block_rows > 0;
  if (walk != nullptr) *walk = torch::empty({with_walk ? nnz : 0, 2}, col.options());
  I* wk = with_walk ? walk->data_ptr<I>() : nullptr;
  const I* cp = crow.data_ptr<I>();
  check_row_pointers(cp, n_rows, nnz);
  auto* pr = reinterpret_cast<SlotRow<I>*>(pairs.data_ptr<I>());
  I* sl = slots.data_ptr<I>();
  const int64_t n_blocks = block_rows > 0 ? (n_rows + block_rows - 1) / block_rows : 0;
  const bool by_columns = block_rows > 0 && (method == 1 || (method == 0 && 2 * n_blocks * n_cols <= nnz));
  if (by_columns) {
    check_columns(col.data_ptr<I>(), nnz, n_cols);  // before the histograms index by column
    blocked_transpose_by_columns<I>(cp, col.data_ptr<I>(), n_rows, n_cols, block_rows, sl, pr, ccol.data_ptr<I>(), wk,
                                    [&](int64_t p0, int64_t p1) {
                                      if (carry == nullptr) return;
                                      // a block's storage range is its CSR range: remap, then carry, inside it
                                      // (the remap in storage order, through the CSR slot of each position,
                                      // measured 2x slower: random reads of source instead of stores)
                                      if (!remap_range<I>(carry->source, carry->old_slots, carry->n_old, sl,
                                                          carry->out, nnz, p0, p1))
                                        carry->ok = false;
                                      else
                                        carry_range<I>(carry->payloads, carry->out, p0, p1);
                                    });
    return;
  }
  if (bits > 0 && n_cols > 0) {
    auto scratch = torch::empty({nnz, 3}, col.options());  // the allocator's memory: no zeroing, no page faults
    bucketed_transpose<I>(col.data_ptr<I>(), nnz, n_cols, ccol.data_ptr<I>(), cp, n_rows, pr, bits,
                          reinterpret_cast<SlotRowCol<I>*>(scratch.data_ptr<I>()));
  } else {
    counting_transpose<I>(col.data_ptr<I>(), nnz, n_cols, nullptr, ccol.data_ptr<I>(), cp, n_rows, pr);
  }
  if (block_rows == 0) return;
  auto csr_of = torch::empty({nnz}, col.options());  // the allocator's memory: no zeroing, no page faults
  block_slots_by_walk<I>(cp, pr, n_rows, nnz, block_rows, sl, csr_of.data_ptr<I>());
  if (with_walk) storage_walk_impl<I>(cp, col.data_ptr<I>(), sl, wk, n_rows, block_rows);  // slots are ours: valid
  if (carry == nullptr) return;
  const int nt = team_for(nnz);
  const int64_t n_chunks = chunk_count(nt, nnz, 1 << 14);
  bool ok = true;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(&& : ok)
  for (int64_t ch = 0; ch < n_chunks; ++ch)
    ok = remap_range<I>(carry->source, carry->old_slots, carry->n_old, sl, carry->out, nnz, nnz * ch / n_chunks,
                        nnz * (ch + 1) / n_chunks) && ok;
  carry->ok = ok;
  if (!ok) return;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < n_chunks; ++ch)
    carry_range<I>(carry->payloads, carry->out, nnz * ch / n_chunks, nnz * (ch + 1) / n_chunks);
}

// with_walk (row blocks): also the storage walk ((nnz, 2) (column, row) of each storage position; else empty).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> transpose_csr(
    torch::Tensor crow, torch::Tensor col, int64_t n_cols, int64_t block_rows, int64_t method, int64_t bucket_bits,
    bool with_walk) {
  check_common(crow, col, "crow");
  torch::Tensor pairs, ccol, slots, walk;
  dispatch_index(col, [&](auto tag) {
    using I = decltype(tag);
    transpose_into<I>(crow, col, n_cols, block_rows, method, bucket_bits, pairs, ccol, slots, nullptr,
                      with_walk ? &walk : nullptr);
  });
  if (!walk.defined()) walk = torch::empty({0, 2}, col.options());
  return {pairs, ccol, slots, walk};
}

// The row-block storage after a merge (merge_entries on the indices only) in one call: the transposed CSR
// and storage slots of the merged CSR (transpose_csr), the remap (the old storage position of each new one, -1
// where grown: old_slots[source[p]] at the new position of entry p) and every payload (old storage order)
// carried into the new storage order, 0 at grown entries. By columns, the remap and the carry run block by
// block inside the transpose: storage_source and a gather per payload took 23 ms at n = 16384, 98 %.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, std::vector<torch::Tensor>, torch::Tensor>
transpose_after_merge(torch::Tensor crow, torch::Tensor col, int64_t n_cols, int64_t block_rows, int64_t method,
                      torch::Tensor source, torch::Tensor old_slots, std::vector<torch::Tensor> payloads,
                      bool with_walk) {
  check_common(crow, col, "crow");
  check_index_vector(source, "source");
  check_index_vector(old_slots, "old_slots");
  TORCH_CHECK_VALUE(block_rows >= 1, "block_rows must be >= 1, got ", block_rows);
  TORCH_CHECK_VALUE(source.scalar_type() == col.scalar_type() && old_slots.scalar_type() == col.scalar_type(),
                    "source and old_slots must have col's dtype");
  TORCH_CHECK_VALUE(source.numel() == col.numel(), "source must have one entry per new entry (", col.numel(), ")");
  const int64_t n = col.numel(), n_old = old_slots.numel();
  std::vector<torch::Tensor> carried;
  std::vector<Payload> views;
  for (const auto& t : payloads) {
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() && t.numel() == n_old &&
                          (t.element_size() == 1 || t.element_size() == 2 || t.element_size() == 4 ||
                           t.element_size() == 8),
                      "payloads must be contiguous 1-D CPU tensors with one element per old entry (", n_old, ")");
    carried.push_back(torch::empty({n}, t.options()));
    views.push_back({static_cast<const char*>(t.data_ptr()), static_cast<char*>(carried.back().data_ptr()),
                     static_cast<int64_t>(t.element_size())});
  }
  auto remap = torch::empty({n}, col.options());
  torch::Tensor pairs, ccol, slots, walk;
  bool ok = true;
  dispatch_index(col, [&](auto tag) {
    using I = decltype(tag);
    MergeCarry<I> carry{source.data_ptr<I>(), old_slots.data_ptr<I>(), n_old, views, remap.data_ptr<I>()};
    transpose_into<I>(crow, col, n_cols, block_rows, method, -1, pairs, ccol, slots, &carry,
                      with_walk ? &walk : nullptr);
    ok = carry.ok;
  });
  TORCH_CHECK_VALUE(ok, "transpose_after_merge: source and old_slots must lie below ", n_old);
  if (!walk.defined()) walk = torch::empty({0, 2}, col.options());
  return {pairs, ccol, slots, remap, carried, walk};
}

// out[i] = src[index[i]], or 0 where index[i] < 0 (a remap of parameter-shaped state across a slot change).
template <typename T, typename I>
bool gather_or_zero_impl(const T* sp, int64_t ns, const I* ix, T* o, int64_t n) {
  bool bad = false;
#pragma omp parallel for num_threads(team_for(n)) schedule(static) reduction(|| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = ix[i];
    if (j >= ns) bad = true;
    o[i] = (j >= 0 && j < ns) ? sp[j] : T(0);
  }
  return bad;
}

torch::Tensor gather_or_zero(torch::Tensor src, torch::Tensor index) {
  check_index_vector(index, "index");
  TORCH_CHECK(src.device().is_cpu() && src.dim() == 1, "src must be a 1-D CPU tensor");
  auto s = src.contiguous();
  const int64_t n = index.numel(), ns = s.numel();
  auto out = torch::empty({n}, s.options());
  bool bad = false;
  AT_DISPATCH_ALL_TYPES_AND3(torch::kHalf, torch::kBFloat16, torch::kBool, s.scalar_type(), "gather_or_zero", [&] {
    dispatch_index(index, [&](auto tag) {
      using I = decltype(tag);
      bad = gather_or_zero_impl<scalar_t, I>(s.data_ptr<scalar_t>(), ns, index.data_ptr<I>(), out.data_ptr<scalar_t>(), n);
    });
  });
  TORCH_CHECK_VALUE(!bad, "gather_or_zero: index has entries >= src length ", ns);
  return out;
}

// out[index[i]] = src[i] for a permutation `index` (CSR-ordered values into row-block storage, transpose_csr).
template <typename T, typename I>
bool scatter_permuted_impl(const T* sp, const I* ix, T* o, int64_t n) {
  bool bad = false;
#pragma omp parallel for num_threads(team_for(n)) schedule(static) reduction(|| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = ix[i];
    if (j < 0 || j >= n) { bad = true; continue; }
    o[j] = sp[i];
  }
  return bad;
}

torch::Tensor scatter_permuted(torch::Tensor src, torch::Tensor index) {
  check_index_vector(index, "index");
  TORCH_CHECK(src.device().is_cpu() && src.dim() == 1 && src.numel() == index.numel(),
              "src must be a 1-D CPU tensor of index's length");
  auto s = src.contiguous();
  const int64_t n = s.numel();
  auto out = torch::empty({n}, s.options());
  bool bad = false;
  AT_DISPATCH_ALL_TYPES_AND3(torch::kHalf, torch::kBFloat16, torch::kBool, s.scalar_type(), "scatter_permuted", [&] {
    dispatch_index(index, [&](auto tag) {
      using I = decltype(tag);
      bad = scatter_permuted_impl<scalar_t, I>(s.data_ptr<scalar_t>(), index.data_ptr<I>(), out.data_ptr<scalar_t>(), n);
    });
  });
  TORCH_CHECK_VALUE(!bad, "scatter_permuted: index has entries outside [0, ", n, ")");
  return out;
}

// Linear indices of (k, 2) (row, col) coordinates, with whether all are in range and strictly increasing.
std::tuple<torch::Tensor, bool, bool> coordinates_to_linear(torch::Tensor coords, int64_t n_rows, int64_t n_cols) {
  TORCH_CHECK(coords.device().is_cpu() && coords.dim() == 2 && coords.size(1) == 2 && coords.is_contiguous(),
              "coords must be a contiguous (k, 2) CPU tensor");
  TORCH_CHECK(coords.scalar_type() == torch::kInt32 || coords.scalar_type() == torch::kInt64,
              "coords dtype must be int32 or int64, got ", coords.scalar_type());
  const int64_t k = coords.size(0);
  auto lin = torch::empty({k}, coords.options().dtype(torch::kInt64));
  int64_t* o = lin.data_ptr<int64_t>();
  bool out_of_range = false, unordered = false;
  dispatch_index(coords, [&](auto tag) {
    using I = decltype(tag);
    const I* p = coords.data_ptr<I>();
#pragma omp parallel for num_threads(team_for(k)) schedule(static) reduction(|| : out_of_range, unordered)
    for (int64_t i = 0; i < k; ++i) {
      const int64_t r = p[2 * i], c = p[2 * i + 1];
      out_of_range = out_of_range || r < 0 || r >= n_rows || c < 0 || c >= n_cols;
      o[i] = r * n_cols + c;
      if (i > 0) {
        const int64_t pr = p[2 * i - 2], pc = p[2 * i - 1];
        unordered = unordered || pr > r || (pr == r && pc >= c);
      }
    }
  });
  return {lin, !out_of_range, !unordered};
}

// Whether every entry is in [0, high) and the sequence is strictly increasing.
std::tuple<bool, bool> order_check(torch::Tensor t, int64_t high) {
  check_index_vector(t, "t");
  const int64_t n = t.numel();
  bool out_of_range = false, unordered = false;
  dispatch_index(t, [&](auto tag) {
    using I = decltype(tag);
    const I* x = t.data_ptr<I>();
#pragma omp parallel for num_threads(team_for(n)) schedule(static) reduction(|| : out_of_range, unordered)
    for (int64_t i = 0; i < n; ++i) {
      out_of_range = out_of_range || x[i] < 0 || x[i] >= high;
      unordered = unordered || (i > 0 && x[i - 1] >= x[i]);
    }
  });
  return {!out_of_range, !unordered};
}

// --- growth candidates: sampled, de-duplicated, inactive and scored, row by row ------------------------
//
// GSE draws m (row, col) pairs with replacement (row ~ g, col ~ f, independent), keeps each inactive
// position once and scores it with the batch gradient <left[row], right[col]>. The same distribution,
// without a global sort: first the number of draws per row (m row draws, histogrammed), then, row by row,
// that many column draws from the row's own counter-based stream; the row's distinct inactive columns come
// out of a bitmap (wide rows of few draws: a small sort), and are scored in the same parallel pass.
// Every random number is a function of (seed, draw index) or (seed, row, draw index): the sample does not
// depend on the thread count.
namespace {

inline uint64_t mul_high(uint64_t x, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // stream stride between consecutive draws

// Walker's alias table over non-negative weights: O(n) to build, O(1) per draw. Units of weight 0 are left
// out of the table, so they are never drawn. No weights: uniform.
class UnitSampler {
 public:
  UnitSampler(int64_t n, const double* w) : n_(n) {
    if (w == nullptr) return;
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(w[i] >= 0.0 && std::isfinite(w[i]), "sampler weights must be finite and >= 0, got ", w[i],
                        " at unit ", i);
      if (w[i] > 0.0) { unit_.push_back(i); total += w[i]; }
    }
    TORCH_CHECK_VALUE(!unit_.empty(), "sampler weights must not all be 0 (pass None for uniform)");
    const int64_t s = static_cast<int64_t>(unit_.size());
    prob_.resize(s);
    alias_.resize(s);
    std::vector<double> p(s);
    std::vector<int64_t> small, large;
    for (int64_t j = 0; j < s; ++j) {
      p[j] = w[unit_[j]] * static_cast<double>(s) / total;
      (p[j] < 1.0 ? small : large).push_back(j);
    }
    while (!small.empty() && !large.empty()) {
      const int64_t a = small.back(), b = large.back();
      small.pop_back();
      prob_[a] = p[a];
      alias_[a] = b;
      p[b] = (p[b] + p[a]) - 1.0;
      if (p[b] < 1.0) { large.pop_back(); small.push_back(b); }
    }
    for (int64_t j : large) { prob_[j] = 1.0; alias_[j] = j; }
    for (int64_t j : small) { prob_[j] = 1.0; alias_[j] = j; }  // rounding leftovers: weight ~1 each
  }

  // One unit from 64 random bits: uniform by a multiply-high; alias: the table slot from the high 32 bits,
  // the coin from the low 32.
  inline int64_t draw(uint64_t x) const {
    if (unit_.empty()) return static_cast<int64_t>(mul_high(x, static_cast<uint64_t>(n_)));
    const int64_t j = static_cast<int64_t>(((x >> 32) * static_cast<uint64_t>(unit_.size())) >> 32);
    const double u = static_cast<double>(static_cast<uint32_t>(x)) * 0x1.0p-32;
    return unit_[u < prob_[j] ? j : alias_[j]];
  }

  // Uniform over at most 2^32 units: one 64-bit random number gives two draws (its 32-bit halves, by a
  // multiply-high each; bias below n / 2^32), halving the generator's cost, the larger part of a draw.
  bool draws_in_pairs() const { return unit_.empty() && n_ <= (int64_t(1) << 32); }

  // f(unit) for the `count` draws of stream `seed` (draw t from SplitMix64 of seed + t·golden, or of
  // seed + (t/2)·golden, half t%2, in pairs).
  template <typename F>
  inline void draws(uint64_t seed, int64_t first, int64_t count, F&& f) const {
    if (!draws_in_pairs()) {
      for (int64_t t = first; t < first + count; ++t) f(draw(splitmix64(seed + static_cast<uint64_t>(t) * kGolden)));
      return;
    }
    const uint64_t n = static_cast<uint64_t>(n_);
    auto half = [n](uint64_t x32) { return static_cast<int64_t>((x32 * n) >> 32); };
    int64_t t = first;
    const int64_t end = first + count;
    if (t < end && (t & 1)) {  // an odd start takes the high half of its pair
      f(half(splitmix64(seed + static_cast<uint64_t>(t >> 1) * kGolden) >> 32));
      ++t;
    }
    for (; t + 1 < end; t += 2) {
      const uint64_t x = splitmix64(seed + static_cast<uint64_t>(t >> 1) * kGolden);
      f(half(x & 0xFFFFFFFFull));
      f(half(x >> 32));
    }
    if (t < end) f(half(splitmix64(seed + static_cast<uint64_t>(t >> 1) * kGolden) & 0xFFFFFFFFull));
  }

 private:
  int64_t n_;
  std::vector<int64_t> unit_, alias_;
  std::vector<double> prob_;
};

// The distinct columns of `n_draws` draws of one row (stream `row_seed`), minus the active ones (sorted
// `active`), written ascending to `out` (room for n_draws + kFlagWord); returns how many. Bitmap when the
// row is narrow relative to its draws, else sort + merge.
template <typename I>
int64_t row_candidates(const UnitSampler& cols, uint64_t row_seed, int64_t n_draws, int64_t n_in, const I* active,
                       int64_t n_active, std::vector<uint64_t>& bits, int32_t* out) {
  const int64_t words = (n_in + 63) / 64;
  if (words <= 4 * n_draws) {
    bits.assign(words, 0);
    cols.draws(row_seed, 0, n_draws, [&](int64_t c) { bits[c >> 6] |= uint64_t(1) << (c & 63); });
    for (int64_t p = 0; p < n_active; ++p) {
      const int64_t c = active[p];
      bits[c >> 6] &= ~(uint64_t(1) << (c & 63));
    }
    // set bits to column numbers without a branch per bit: four slots written unconditionally per word
    // (the cursor advances by the popcount), a loop only for the rare word with more than four
    int32_t* o = out;
    for (int64_t wi = 0; wi < words; ++wi) {
      uint64_t word = bits[wi];
      const int count = __builtin_popcountll(word);
      const int32_t at = static_cast<int32_t>(wi * 64);
      for (int q = 0; q < 4; ++q) { o[q] = at + __builtin_ctzll(word | (uint64_t(1) << 63)); word &= word - 1; }
      for (int q = 4; q < count; ++q) { o[q] = at + __builtin_ctzll(word); word &= word - 1; }
      o += count;
    }
    return o - out;
  }
  int32_t* o = out;
  cols.draws(row_seed, 0, n_draws, [&](int64_t c) { *o++ = static_cast<int32_t>(c); });
  std::sort(out, out + n_draws);
  int64_t w = 0, p = 0;
  for (int64_t t = 0; t < n_draws; ++t) {  // in place: w <= t
    const int32_t c = out[t];
    if (t > 0 && out[t - 1] == c) continue;
    while (p < n_active && static_cast<int64_t>(active[p]) < c) ++p;
    if (p < n_active && static_cast<int64_t>(active[p]) == c) continue;
    out[w++] = c;
  }
  return w;
}

// Scores of candidate CSR rows [r_begin, r_end): score[e] = sum_p <left_p[row_e], right_p[col_e]> (|.| with
// `absolute`), the batch dimension in tiles of W as in sddmm_entries (register-resident dot products).
template <typename T, int W>
void score_rows(const int64_t* crow, const int32_t* col, int64_t r_begin, int64_t r_end,
                const std::vector<const T*>& lefts, const std::vector<const T*>& rights,
                const std::vector<int64_t>& widths, bool absolute, int64_t prefetch, acc_t<T>* score) {
  const int64_t n_parts = static_cast<int64_t>(lefts.size());
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t e0 = crow[r], e1 = crow[r + 1];
    for (int64_t p = 0; p < n_parts; ++p) {
      const int64_t R = widths[p];
      for (int64_t r0 = 0; r0 < R; r0 += W) {
        const int64_t w = std::min<int64_t>(W, R - r0);
        const bool first = p == 0 && r0 == 0;
        sddmm_run<T, int32_t, W>(lefts[p] + r * R + r0, col, rights[p] + r0, score, R, w, !first, e0, e1, kNoLimit,
                                 e1, prefetch);
      }
    }
    if (absolute)
      for (int64_t e = e0; e < e1; ++e) score[e] = std::abs(score[e]);
  }
}

}  // namespace

// Sampled growth candidates of a CSR layer and their gradient scores sum_p <left_p[row], right_p[col]>
// (absolute values with `absolute`): (candidate row pointers int64, columns int32 ascending per row, scores).
// Pass 1 draws the rows of all m draws (histogram); pass 2, per chunk of rows, draws each row's columns and
// writes its distinct inactive ones at the chunk's place in an m-long column array, which is then
// compacted; pass 3 scores them. Extra memory: the m-long column array and the row pointers.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> sample_and_score(
    torch::Tensor crow, torch::Tensor col, int64_t n_in, int64_t m, int64_t seed, c10::optional<torch::Tensor> row_weights,
    c10::optional<torch::Tensor> col_weights, std::vector<torch::Tensor> lefts, std::vector<torch::Tensor> rights,
    bool absolute, int64_t tile_bytes, int64_t prefetch) {
  check_common(crow, col, "crow");
  const int64_t n_out = crow.numel() - 1;
  TORCH_CHECK_VALUE(n_out >= 0 && n_in >= 1 && n_in < (int64_t(1) << 31),
                    "sample_and_score needs n_in in [1, 2^31), got ", n_in);
  TORCH_CHECK_VALUE(m >= 0, "m must be >= 0, got ", m);
  TORCH_CHECK(!lefts.empty() && lefts.size() == rights.size(), "need one (left, right) pair per observed part");
  for (size_t p = 0; p < lefts.size(); ++p) {
    check_dense(lefts[p], "left_fm");
    check_dense(rights[p], "right_fm");
    TORCH_CHECK(lefts[p].size(0) == n_out && rights[p].size(0) == n_in && lefts[p].size(1) == rights[p].size(1),
                "part ", p, ": left_fm must be (n_out, R) and right_fm (n_in, R)");
    TORCH_CHECK(lefts[p].scalar_type() == lefts[0].scalar_type() && rights[p].scalar_type() == lefts[0].scalar_type(),
                "all parts must have the same dtype");
  }
  auto weights_of = [](const c10::optional<torch::Tensor>& w, int64_t n, const char* name) -> torch::Tensor {
    if (!w.has_value()) return torch::Tensor();
    TORCH_CHECK(w->device().is_cpu() && w->dim() == 1 && w->numel() == n, name, " must be a 1-D CPU tensor of ", n,
                " weights");
    return w->to(torch::kFloat64).contiguous();
  };
  const torch::Tensor gw = weights_of(row_weights, n_out, "row_weights");
  const torch::Tensor fw = weights_of(col_weights, n_in, "col_weights");
  const UnitSampler rows(n_out, gw.defined() ? gw.data_ptr<double>() : nullptr);
  const UnitSampler cols(n_in, fw.defined() ? fw.data_ptr<double>() : nullptr);
  auto cand_crow = torch::zeros({n_out + 1}, crow.options().dtype(torch::kInt64));
  if (n_out == 0 || m == 0)
    return {cand_crow, torch::empty({0}, crow.options().dtype(torch::kInt32)), torch::empty({0}, lefts[0].options())};

  // 1. draws per row
  const uint64_t row_stream = splitmix64(static_cast<uint64_t>(seed) ^ 0x5851F42D4C957F2Dull);
  const uint64_t col_stream = splitmix64(static_cast<uint64_t>(seed) ^ 0x14057B7EF767814Full);
  const int nt = team_size(m * 16);
  std::vector<int64_t> hist(static_cast<size_t>(nt) * n_out, 0);
  const int64_t n_blocks = (m + kDrawBlock - 1) / kDrawBlock;
#pragma omp parallel num_threads(nt)
  {
    int64_t* h = hist.data() + static_cast<size_t>(omp_get_thread_num()) * n_out;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < n_blocks; ++b)
      rows.draws(row_stream, b * kDrawBlock, std::min(m, (b + 1) * kDrawBlock) - b * kDrawBlock,
                 [h](int64_t r) { ++h[r]; });
  }
  std::vector<int64_t> draws_before(n_out + 1, 0);
  for (int64_t r = 0; r < n_out; ++r) {
    int64_t c = 0;
    for (int t = 0; t < nt; ++t) c += hist[static_cast<size_t>(t) * n_out + r];
    hist[r] = c;
    draws_before[r + 1] = draws_before[r] + c;
  }

  // 2. each row's distinct inactive columns, at the chunk's place in an m (+ slack) long array
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(n_out, int64_t(nt) * kChunksPerThread * 4));
  const std::vector<int64_t> bounds = balanced_row_chunks(draws_before.data(), n_out, n_chunks);
  auto cand_col = torch::empty({m + 8}, crow.options().dtype(torch::kInt32));
  int32_t* cc = cand_col.data_ptr<int32_t>();
  int64_t* kept = cand_crow.data_ptr<int64_t>();  // kept[r + 1]: candidates of row r, then the prefix
  std::vector<int64_t> chunk_kept(n_chunks);
  dispatch_index(col, [&](auto tag) {
    using I = decltype(tag);
    const I* cp = crow.data_ptr<I>();
    const I* ci = col.data_ptr<I>();
#pragma omp parallel num_threads(nt)
    {
      std::vector<uint64_t> bits;
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < n_chunks; ++c) {
        int32_t* out = cc + draws_before[bounds[c]];
        int64_t w = 0;
        for (int64_t r = bounds[c]; r < bounds[c + 1]; ++r) {
          int64_t got = 0;
          if (hist[r] > 0) {
            const uint64_t row_seed = splitmix64(col_stream + static_cast<uint64_t>(r) * 0xD1B54A32D192ED03ull);
            got = row_candidates<I>(cols, row_seed, hist[r], n_in, ci + cp[r],
                                    static_cast<int64_t>(cp[r + 1]) - static_cast<int64_t>(cp[r]), bits, out + w);
          }
          kept[r + 1] = got;
          w += got;
        }
        chunk_kept[c] = w;
      }
    }
  });
  int64_t n_cand = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {  // in order: each chunk moves left, never over an unmoved one
    const int64_t from = draws_before[bounds[c]];
    if (from != n_cand && chunk_kept[c] > 0) std::memmove(cc + n_cand, cc + from, chunk_kept[c] * sizeof(int32_t));
    n_cand += chunk_kept[c];
  }
  for (int64_t r = 0; r < n_out; ++r) kept[r + 1] += kept[r];

  // 3. scores
  auto score = torch::empty({n_cand}, lefts[0].options().dtype(acc_dtype(lefts[0].scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, lefts[0].scalar_type(), "sparsetrain_sample_and_score", [&] {
    std::vector<const scalar_t*> left_ptrs, right_ptrs;
    std::vector<int64_t> widths;
    for (size_t p = 0; p < lefts.size(); ++p) {
      left_ptrs.push_back(lefts[p].data_ptr<scalar_t>());
      right_ptrs.push_back(rights[p].data_ptr<scalar_t>());
      widths.push_back(lefts[p].size(1));
    }
    const std::vector<int64_t> score_bounds = balanced_row_chunks(kept, n_out, n_chunks);
    acc_t<scalar_t>* so = score.data_ptr<acc_t<scalar_t>>();
    with_tile<scalar_t>(tile_bytes, [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      parallel_chunks(nt, n_chunks, [&](int64_t c) {
        score_rows<scalar_t, W>(kept, cc, score_bounds[c], score_bounds[c + 1], left_ptrs, right_ptrs, widths,
                                absolute, prefetch, so);
      });
    });
  });
  return {cand_crow, cand_col.narrow(0, 0, n_cand), score.to(lefts[0].scalar_type())};
}

// Linear positions row * n_cols + col of the entries `slots` (ascending) of a CSR (int64 row pointers).
torch::Tensor csr_linear(torch::Tensor crow, torch::Tensor col, torch::Tensor slots, int64_t n_cols) {
  TORCH_CHECK(crow.device().is_cpu() && crow.dim() == 1 && crow.is_contiguous() && crow.scalar_type() == torch::kInt64,
              "crow must be a contiguous 1-D int64 CPU tensor");
  check_index_vector(col, "col");
  check_index_vector(slots, "slots");
  TORCH_CHECK(slots.scalar_type() == torch::kInt64, "slots must be int64");
  const int64_t n_rows = crow.numel() - 1, k = slots.numel(), nnz = col.numel();
  const int64_t* cp = crow.data_ptr<int64_t>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  TORCH_CHECK(n_rows >= 0 && cp[n_rows] == nnz, "crow must end at len(col)");
  auto out = torch::empty({k}, slots.options());
  int64_t* o = out.data_ptr<int64_t>();
  const int nt = team_for(k);
  const int64_t n_chunks = chunk_count(nt, k, 1 << 14);
  bool bad = false;
  dispatch_index(col, [&](auto tag) {
    using I = decltype(tag);
    const I* ci = col.data_ptr<I>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(|| : bad)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t b = k * c / n_chunks, e = k * (c + 1) / n_chunks;
      if (b == e) continue;
      if (sp[b] < 0 || sp[b] >= nnz) { bad = true; continue; }
      int64_t row = std::upper_bound(cp, cp + n_rows + 1, sp[b]) - cp - 1;
      for (int64_t i = b; i < e; ++i) {
        const int64_t slot = sp[i];
        if (slot < 0 || slot >= nnz || (i > b && slot <= sp[i - 1])) { bad = true; break; }
        while (cp[row + 1] <= slot) ++row;
        o[i] = row * n_cols + static_cast<int64_t>(ci[slot]);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad, "slots must be strictly increasing entries in [0, ", nnz, ")");
  return out;
}


// ---------------------------------------------------------------------------------------------------------
// Diagonal layers (DynaDiag, kernels/diagonal.py): K wrap-around diagonals of an M x N weight. The long side
// (P = max(M, N)) is the wrapped side, the short one (D = min(M, N)) the straight side; diagonal k pairs
// straight index t with wrapped index (t + off[k]) mod P. Operands are batch-major rows (B, P) and (B, D).
//
// All three primitives are one register-tiled loop: kDiagLanes accumulator rows of a span of contiguous
// outputs stay in registers while a reduction index runs (the diagonals for gather and scatter, the batch
// for correlate); each step loads one shared operand span and one span per lane, unaligned, so a
// multiply-add costs one load and no store. The scatter is computed in gather form, out[b, s] =
// sum_k w[k, t] u[b, t] with t = (s - off[k]) mod P where t < D, so its outputs stay in registers too and
// every output is written by one thread. Locality: diagonals are taken in bands whose offsets span at most
// kDiagBand, so while the output spans of a band advance, the operand rows a band reads form a sliding
// window of (band + span) entries per lane, which stays in L1. Spans that wrap past P, run past D or end
// a row take a scalar path into a side buffer (a few per diagonal).
constexpr int kDiagLanes = 4;
#if defined(__AVX512F__)
constexpr int kDiagVecs = 2;  // 4 x 2 zmm accumulators: enough independent chains to cover FMA latency
#else
constexpr int kDiagVecs = 1;  // 4 x 1 x (2 ymm): 8 of the 16 AVX2 registers
#endif
constexpr int64_t kDiagBand = 1024;      // widest offset range of the diagonals one band holds
constexpr int64_t kDiagRowGroup = 32;    // batch rows per parallel chunk (gather, scatter)
constexpr int64_t kDiagOutRange = 1024;  // output indices per parallel chunk
constexpr int64_t kDiagBatchBlock = 8;   // batch rows summed per pass (correlate)

template <typename T>
struct DiagTile {
  using V = typename Simd<T>::V;
  using U = typename Simd<T>::Unaligned;
  static constexpr int kW = sizeof(V) / sizeof(T);
  static constexpr int kSpan = kDiagVecs * kW;  // contiguous outputs per lane
  V acc[kDiagLanes][kDiagVecs];
  T side[kDiagLanes][kSpan];

  // lane l starts from src[0, n): in the registers for a full span, else on the side
  inline void load(int l, const T* src, int64_t n) {
    for (int i = 0; i < kSpan; ++i) side[l][i] = T(0);
    if (n == kSpan) {
#pragma GCC unroll 4
      for (int v = 0; v < kDiagVecs; ++v) acc[l][v] = *reinterpret_cast<const U*>(src + v * kW);
    } else {
#pragma GCC unroll 4
      for (int v = 0; v < kDiagVecs; ++v) acc[l][v] = V{};
      for (int64_t i = 0; i < n; ++i) side[l][i] = src[i];
    }
  }
  // acc[l] += a[0, kSpan) * z[l][0, kSpan)
  inline void fma(const T* a, const T* const* z) {
    V av[kDiagVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kDiagVecs; ++v) av[v] = *reinterpret_cast<const U*>(a + v * kW);
#pragma GCC unroll 4
    for (int l = 0; l < kDiagLanes; ++l)
#pragma GCC unroll 4
      for (int v = 0; v < kDiagVecs; ++v) acc[l][v] += av[v] * *reinterpret_cast<const U*>(z[l] + v * kW);
  }
  // dst[0, n) = (acc + side)[l][0, n)
  inline void store(int l, T* dst, int64_t n) const {
    T buf[kSpan];
    for (int v = 0; v < kDiagVecs; ++v) {
      V tmp = acc[l][v];
      std::memcpy(buf + v * kW, &tmp, sizeof(V));
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = buf[i] + side[l][i];
  }
};

static void check_diagonal_offsets(const torch::Tensor& offsets, int64_t p) {
  TORCH_CHECK_VALUE(offsets.device().is_cpu() && offsets.dim() == 1 && offsets.scalar_type() == torch::kInt64,
                    "offsets must be a 1-D int64 CPU tensor");
  auto o = offsets.data_ptr<int64_t>();
  for (int64_t k = 0; k < offsets.numel(); ++k)
    TORCH_CHECK_VALUE(o[k] >= 0 && o[k] < p, "offsets must lie in [0, P=", p, ")");
}

static void check_diagonal_weight(const torch::Tensor& offsets, const torch::Tensor& w, int64_t p) {
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(0) == offsets.numel(), "w must be (K, D) with K = offsets.numel()");
  TORCH_CHECK_VALUE(w.size(1) <= p, "the diagonal length D must not exceed P");
  check_diagonal_offsets(offsets, p);
}

// Boundaries of the bands: consecutive diagonals whose offsets span at most kDiagBand (any order is
// correct; sorted offsets, as layouts keep them, make the bands dense) and at most `max_count` of them.
static std::vector<int64_t> diagonal_bands(const int64_t* op, int64_t k, int64_t max_count) {
  std::vector<int64_t> bounds{0};
  int64_t lo = 0, hi = 0;
  for (int64_t q = 0; q < k; ++q) {
    if (q == bounds.back()) { lo = hi = op[q]; continue; }
    lo = std::min(lo, op[q]);
    hi = std::max(hi, op[q]);
    if (hi - lo > kDiagBand || q - bounds.back() >= max_count) { bounds.push_back(q); lo = hi = op[q]; }
  }
  if (k > 0) bounds.push_back(k);
  return bounds;
}

// Gather (kScatter = false): out (B, D), out[b, t] = sum_k w[k, t] * x[b, (t + off[k]) mod P], x (B, P).
// Scatter (kScatter = true):  out (B, P), out[b, s] += w[k, t] * x[b, t] at s = (t + off[k]) mod P, x (B, D).
template <typename T, bool kScatter>
void diagonal_rows(const T* xp, const T* wp, const int64_t* op, T* outp, int64_t b, int64_t k, int64_t p,
                   int64_t d) {
  using Tile = DiagTile<T>;
  const int64_t width = kScatter ? p : d, x_width = kScatter ? d : p;
  const auto bands = diagonal_bands(op, k, k);
  const int64_t ranges = (width + kDiagOutRange - 1) / kDiagOutRange;
  const int64_t groups = (b + kDiagRowGroup - 1) / kDiagRowGroup;
  parallel_chunks(team_size(b * k * d), ranges * groups, [&](int64_t c) {
    const int64_t x_lo = (c % ranges) * kDiagOutRange, x_hi = std::min(width, x_lo + kDiagOutRange);
    const int64_t g0 = (c / ranges) * kDiagRowGroup, g1 = std::min(b, g0 + kDiagRowGroup);
    for (int64_t r0 = g0; r0 < g1; r0 += kDiagLanes) {
      const T* rows[kDiagLanes];
      for (int l = 0; l < kDiagLanes; ++l) rows[l] = xp + std::min(r0 + l, g1 - 1) * x_width;  // dead lanes repeat
      const int lanes = int(std::min<int64_t>(kDiagLanes, g1 - r0));
      for (size_t band = 0; band + 1 < bands.size(); ++band) {
        for (int64_t x0 = x_lo; x0 < x_hi; x0 += Tile::kSpan) {
          const int64_t n = std::min<int64_t>(Tile::kSpan, x_hi - x0);
          Tile tile;
          for (int l = 0; l < kDiagLanes; ++l) tile.load(l, outp + std::min(r0 + l, g1 - 1) * width + x0, n);
          for (int64_t q = bands[band]; q < bands[band + 1]; ++q) {
            const T* zs[kDiagLanes];
            if constexpr (!kScatter) {
              const T* a = wp + q * d + x0;
              const int64_t s = x0 + op[q], start = s >= p ? s - p : s;  // s < P + D <= 2P
              if (n == Tile::kSpan && start + n <= p) {
                for (int l = 0; l < kDiagLanes; ++l) zs[l] = rows[l] + start;
                tile.fma(a, zs);
              } else {
                for (int l = 0; l < kDiagLanes; ++l)
                  for (int64_t i = 0; i < n; ++i) tile.side[l][i] += a[i] * rows[l][start + i >= p ? start + i - p : start + i];
              }
            } else {
              const int64_t t = x0 >= op[q] ? x0 - op[q] : x0 - op[q] + p;  // straight index of output x0
              if (n == Tile::kSpan && t + n <= d) {
                for (int l = 0; l < kDiagLanes; ++l) zs[l] = rows[l] + t;
                tile.fma(wp + q * d + t, zs);
              } else if (!(t >= d && t + n <= p)) {  // else the span lies where this diagonal has no entry
                const T* a = wp + q * d;
                for (int64_t i = 0; i < n; ++i) {
                  const int64_t ti = t + i >= p ? t + i - p : t + i;
                  if (ti < d)
                    for (int l = 0; l < kDiagLanes; ++l) tile.side[l][i] += a[ti] * rows[l][ti];
                }
              }
            }
          }
          for (int l = 0; l < lanes; ++l) tile.store(l, outp + (r0 + l) * width + x0, n);
        }
      }
    }
  });
}

// out (B, D): out[b, t] = sum_k w[k, t] * z[b, (t + off[k]) mod P]
torch::Tensor diag_gather(torch::Tensor z, torch::Tensor offsets, torch::Tensor w) {
  TORCH_CHECK_VALUE(z.device().is_cpu() && z.dim() == 2, "z must be a 2-D CPU tensor");
  TORCH_CHECK_VALUE(w.scalar_type() == z.scalar_type(), "z and w must have one dtype");
  const int64_t b = z.size(0), p = z.size(1), d = w.size(1), k = w.size(0);
  check_diagonal_weight(offsets, w, p);
  auto zc = z.contiguous(), wc = w.contiguous(), oc = offsets.contiguous();
  auto out = torch::zeros({b, d}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "diag_gather", [&] {
    diagonal_rows<scalar_t, false>(zc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), oc.data_ptr<int64_t>(),
                                   out.data_ptr<scalar_t>(), b, k, p, d);
  });
  return out;
}

// out (B, P): out[b, (t + off[k]) mod P] += w[k, t] * u[b, t]
torch::Tensor diag_scatter(torch::Tensor u, torch::Tensor offsets, torch::Tensor w, int64_t p) {
  TORCH_CHECK_VALUE(u.device().is_cpu() && u.dim() == 2 && u.size(1) == w.size(1), "u must be a (B, D) CPU tensor");
  TORCH_CHECK_VALUE(w.scalar_type() == u.scalar_type(), "u and w must have one dtype");
  const int64_t b = u.size(0), d = w.size(1), k = w.size(0);
  check_diagonal_weight(offsets, w, p);
  auto uc = u.contiguous(), wc = w.contiguous(), oc = offsets.contiguous();
  auto out = torch::zeros({b, p}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "diag_scatter", [&] {
    diagonal_rows<scalar_t, true>(uc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), oc.data_ptr<int64_t>(),
                                  out.data_ptr<scalar_t>(), b, k, p, d);
  });
  return out;
}

// out (K, D): out[k, t] = sum_b u[b, t] * z[b, (t + off[k]) mod P]. Chunks are (band, output range); in a
// chunk, blocks of kDiagBatchBlock batch rows are summed into the band's outputs, span by span, 4
// diagonals (lanes) at a time sharing each u span.
torch::Tensor diag_correlate(torch::Tensor z, torch::Tensor u, torch::Tensor offsets) {
  TORCH_CHECK_VALUE(z.device().is_cpu() && u.device().is_cpu() && z.dim() == 2 && u.dim() == 2 && z.size(0) == u.size(0),
                    "z (B, P) and u (B, D) must be 2-D CPU tensors with one batch size");
  TORCH_CHECK_VALUE(z.scalar_type() == u.scalar_type(), "z and u must have one dtype");
  const int64_t b = z.size(0), p = z.size(1), d = u.size(1), k = offsets.numel();
  TORCH_CHECK_VALUE(d <= p, "the diagonal length D must not exceed P");
  check_diagonal_offsets(offsets, p);
  auto zc = z.contiguous(), uc = u.contiguous(), oc = offsets.contiguous();
  auto out = torch::zeros({k, d}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "diag_correlate", [&] {
    using Tile = DiagTile<scalar_t>;
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const scalar_t* up = uc.data_ptr<scalar_t>();
    const int64_t* op = oc.data_ptr<int64_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    const auto bands = diagonal_bands(op, k, 64);
    const int64_t n_bands = int64_t(bands.size()) - 1, ranges = (d + kDiagOutRange - 1) / kDiagOutRange;
    parallel_chunks(team_size(b * k * d), std::max<int64_t>(0, n_bands) * ranges, [&](int64_t c) {
      const int64_t t_lo = (c % ranges) * kDiagOutRange, t_hi = std::min(d, t_lo + kDiagOutRange);
      const int64_t band = c / ranges;
      for (int64_t r0 = 0; r0 < b; r0 += kDiagBatchBlock) {
        const int64_t r1 = std::min(b, r0 + kDiagBatchBlock);
        for (int64_t t0 = t_lo; t0 < t_hi; t0 += Tile::kSpan) {
          const int64_t n = std::min<int64_t>(Tile::kSpan, t_hi - t0);
          for (int64_t q0 = bands[band]; q0 < bands[band + 1]; q0 += kDiagLanes) {
            // A lane is fast when its window neither wraps nor is a short last span; the others (and dead
            // lanes past the band) read window 0 in the tiled loop (valid: kSpan <= D <= P there), are
            // not stored from it, and are summed on the scalar path.
            int64_t start[kDiagLanes];
            bool fast[kDiagLanes];
            const int lanes = int(std::min<int64_t>(kDiagLanes, bands[band + 1] - q0));
            Tile tile;
            for (int l = 0; l < kDiagLanes; ++l) {
              const int64_t s = l < lanes ? t0 + op[q0 + l] : 0;
              start[l] = s >= p ? s - p : s;
              fast[l] = l < lanes && n == Tile::kSpan && start[l] + n <= p;
              tile.load(l, outp + (q0 + std::min(l, lanes - 1)) * d + t0, n);
            }
            if (n == Tile::kSpan) {
              const scalar_t* zs[kDiagLanes];
              for (int64_t r = r0; r < r1; ++r) {
                for (int l = 0; l < kDiagLanes; ++l) zs[l] = zp + r * p + (fast[l] ? start[l] : 0);
                tile.fma(up + r * d + t0, zs);
              }
            }
            for (int l = 0; l < lanes; ++l) {
              scalar_t* dst = outp + (q0 + l) * d + t0;
              if (fast[l]) { tile.store(l, dst, n); continue; }
              for (int64_t r = r0; r < r1; ++r)
                for (int64_t i = 0; i < n; ++i)
                  dst[i] += up[r * d + t0 + i] * zp[r * p + (start[l] + i >= p ? start[l] + i - p : start[l] + i)];
            }
          }
        }
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm", &spmm, "feature-major CSR SpMM: (n_rows, R) = CSR @ (n_cols, R), values optionally read through perm");
  m.def("sddmm", &sddmm, "SDDMM at CSR (coo=false) or COO (coo=true) coordinates");
  m.def("spmm_storage", &spmm_storage, "SpMM of a row-block layout walked in storage order (its storage walk)");
  m.def("storage_walk", &storage_walk, "(column, row) of each storage position of a row-block layout");
  m.def("grads_storage", &grads_storage, "(grad_x, grad_values) of a row-block layer walked in storage order");
  m.def("grads_transposed", &grads_transposed, "(grad_x, grad_values) of a CSR layer from one walk of its transposed CSR");
  m.def("transpose", &transpose, "contiguous transpose of a contiguous 2-D tensor (cache-blocked, parallel)");
  m.def("transpose_order", &transpose_order, "stable counting sort of column indices: (perm, ccol)");
  // topology operations
  m.def("linear_index", &linear_index, "int64 row * n_cols + col");
  m.def("rows_to_crow", &rows_to_crow, "CSR row pointers of sorted row indices");
  m.def("linear_to_csr", &linear_to_csr, "CSR (crow, col) of sorted int64 linear indices");
  m.def("sorted_uniform_draws", &sorted_uniform_draws, "m sorted uniform draws from [0, total), seeded");
  m.def("unique_difference", &unique_difference, "sorted unique values of a that are not in sorted b");
  m.def("select_k", &select_k, "ascending positions of the k largest/smallest scores, ties to the lower position");
  m.def("merge_entries", &merge_entries, "kept CSR entries merged with sorted new ones, payloads carried: (crow, col, source, collisions, carried)");
  m.def("transpose_csr", &transpose_csr, "transposed CSR by counting sort: ((slot, row) pairs, ccol, row-block storage slots)");
  m.def("transpose_after_merge", &transpose_after_merge, "row-block storage after a merge: transposed CSR, slots, remap, carried payloads");
  m.def("scatter_permuted", &scatter_permuted, "out[index[i]] = src[i] for a permutation index");
  m.def("gather_or_zero", &gather_or_zero, "src[index], 0 where index < 0");
  m.def("coordinates_to_linear", &coordinates_to_linear, "(lin, all in range, strictly increasing)");
  m.def("order_check", &order_check, "(all in [0, high), strictly increasing)");
  m.def("sample_and_score", &sample_and_score, "sampled inactive positions of a CSR layer and their gradient scores");
  m.def("csr_linear", &csr_linear, "linear positions of CSR entries");
  m.def("diag_gather", &diag_gather, "diagonal layer: out[b, t] = sum_k w[k, t] z[b, (t + off[k]) mod P]");
  m.def("diag_scatter", &diag_scatter, "diagonal layer: out[b, (t + off[k]) mod P] += w[k, t] u[b, t]");
  m.def("diag_correlate", &diag_correlate, "diagonal layer: out[k, t] = sum_b u[b, t] z[b, (t + off[k]) mod P]");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
