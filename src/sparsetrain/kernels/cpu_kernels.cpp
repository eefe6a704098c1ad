// CPU kernels of a compressed sparse layer: CSR SpMM, SDDMM (CSR and COO) and a counting-sort transpose.
//
// Dense operands are feature-major: row c of an (n, R) tensor holds one feature for all R batch rows,
// so every inner loop is a contiguous SIMD axpy (SpMM) or dot (SDDMM) over R.
//
// Locality: the batch dimension is processed in tiles of W elements (at most 512 bytes) whose accumulators
// live in registers; the gathered rows of the dense operand are software-prefetched a fixed number of
// entries ahead, which is what pays once that operand no longer fits in L3. (Narrower tiles sized so the
// gathered working set fits in cache were measured and lost everywhere: see docs/kernels.md.)
//
// Parallelism: SpMM splits rows into chunks of equal (nnz + rows) cost, SDDMM splits entries into equal
// ranges; chunks are scheduled dynamically (the machine is shared, a static split stalls on the slowest).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kChunksPerThread = 8;
constexpr int kCacheLine = 64;
// Below this many multiply-adds a call runs on one thread: waking a team costs more than it saves, and on
// a shared (oversubscribed) machine a barrier can stall for a whole scheduler time slice.
constexpr int64_t kSerialWork = int64_t(1) << 18;

inline int team_size(int64_t work) { return work < kSerialWork ? 1 : std::max(1, at::get_num_threads()); }

template <typename I>
inline void prefetch_tile(const void* base, int64_t bytes) {
  const char* p = static_cast<const char*>(base);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 0, 1);
}

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

// out[i, r0:r0+w] = sum_p val[p] * x[col[p], r0:r0+w] for rows [row_begin, row_end). W is the tile width;
// w == W takes the fixed-width (fully vectorised, register-resident) path, w < W the tail path.
template <typename T, typename I, int W>
void spmm_rows(const I* crow, const I* col, const T* val, const T* x, T* out, int64_t R, int64_t r0, int64_t w,
               int64_t row_begin, int64_t row_end, int64_t prefetch) {
  const int64_t last = crow[row_end];
  for (int64_t i = row_begin; i < row_end; ++i) {
    T acc[W];
    for (int k = 0; k < W; ++k) acc[k] = T(0);
    const int64_t end = crow[i + 1];
    for (int64_t p = crow[i]; p < end; ++p) {
      if (prefetch > 0 && p + prefetch < last)
        prefetch_tile<I>(x + static_cast<int64_t>(col[p + prefetch]) * R + r0, w * sizeof(T));
      const T v = val[p];
      const T* xr = x + static_cast<int64_t>(col[p]) * R + r0;
      if (w == W) {
#pragma omp simd
        for (int k = 0; k < W; ++k) acc[k] += v * xr[k];
      } else {
        for (int64_t k = 0; k < w; ++k) acc[k] += v * xr[k];
      }
    }
    T* o = out + i * R + r0;
    for (int64_t k = 0; k < w; ++k) o[k] = acc[k];
  }
}

template <typename T, typename I, int W>
void spmm_impl(const I* crow, const I* col, const T* val, const T* x, T* out, int64_t n_rows, int64_t R,
               int64_t prefetch) {
  const int nt = team_size(static_cast<int64_t>(crow[n_rows]) * R);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(n_rows, int64_t(nt) * kChunksPerThread));
  const std::vector<int64_t> bounds = balanced_row_chunks(crow, n_rows, n_chunks);
#pragma omp parallel num_threads(nt)
  for (int64_t r0 = 0; r0 < R; r0 += W) {
    const int64_t w = std::min<int64_t>(W, R - r0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c)
      spmm_rows<T, I, W>(crow, col, val, x, out, R, r0, w, bounds[c], bounds[c + 1], prefetch);
  }
}

// out[e] (+)= <left[row_e, r0:r0+w], right[col_e, r0:r0+w]> for entries e in [e_begin, e_end).
// The row of an entry comes from CSR pointers (walked) or from an explicit COO row array.
template <typename T, typename I, int W, bool COO>
void sddmm_entries(const I* crow_or_rows, int64_t n_rows, const I* col, const T* left, const T* right, T* out,
                   int64_t R, int64_t r0, int64_t w, bool accumulate, int64_t e_begin, int64_t e_end,
                   int64_t prefetch) {
  int64_t row = 0;
  if (!COO) {  // row of e_begin: last i with crow[i] <= e_begin
    const I* it = std::upper_bound(crow_or_rows, crow_or_rows + n_rows + 1, static_cast<I>(e_begin));
    row = (it - crow_or_rows) - 1;
  }
  for (int64_t e = e_begin; e < e_end; ++e) {
    if (COO) {
      row = crow_or_rows[e];
    } else {
      while (static_cast<int64_t>(crow_or_rows[row + 1]) <= e) ++row;
    }
    if (prefetch > 0 && e + prefetch < e_end)
      prefetch_tile<I>(right + static_cast<int64_t>(col[e + prefetch]) * R + r0, w * sizeof(T));
    const T* a = left + row * R + r0;
    const T* b = right + static_cast<int64_t>(col[e]) * R + r0;
    T s = T(0);
    if (w == W) {
#pragma omp simd reduction(+ : s)
      for (int k = 0; k < W; ++k) s += a[k] * b[k];
    } else {
      for (int64_t k = 0; k < w; ++k) s += a[k] * b[k];
    }
    out[e] = accumulate ? out[e] + s : s;
  }
}

template <typename T, typename I, int W, bool COO>
void sddmm_impl(const I* crow_or_rows, int64_t n_rows, const I* col, const T* left, const T* right, T* out,
                int64_t nnz, int64_t R, int64_t prefetch) {
  const int nt = team_size(nnz * R);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(nnz / 64 + 1, int64_t(nt) * kChunksPerThread));
#pragma omp parallel num_threads(nt)
  for (int64_t r0 = 0; r0 < R; r0 += W) {
    const int64_t w = std::min<int64_t>(W, R - r0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c)
      sddmm_entries<T, I, W, COO>(crow_or_rows, n_rows, col, left, right, out, R, r0, w, r0 > 0,
                                  nnz * c / n_chunks, nnz * (c + 1) / n_chunks, prefetch);
  }
}

// Calls f.template operator()<W>() with W = tile_bytes / sizeof(T) from a fixed set of instantiations.
template <typename T, typename F>
void with_tile(int64_t tile_bytes, F&& f) {
  const int64_t w = tile_bytes / static_cast<int64_t>(sizeof(T));
  switch (w) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "sparsetrain cpu kernels: tile of ", tile_bytes, " bytes gives ", w,
                         " elements; allowed are 8, 16, 32, 64 or 128 elements");
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
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kFloat64, name,
              " dtype must be float32 or float64, got ", t.scalar_type());
}

template <typename F>
void dispatch_index(const torch::Tensor& col, F&& f) {
  if (col.scalar_type() == torch::kInt32) f(int32_t{}); else f(int64_t{});
}

}  // namespace

torch::Tensor spmm(torch::Tensor crow, torch::Tensor col, torch::Tensor values, torch::Tensor x_fm,
                   int64_t tile_bytes, int64_t prefetch) {
  check_common(crow, col, "crow");
  check_dense(x_fm, "dense_fm");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous() && values.scalar_type() == x_fm.scalar_type(),
              "values must be 1-D contiguous with the dtype of dense_fm");
  TORCH_CHECK(values.numel() == col.numel(), "values and col must have the same length");
  const int64_t n_rows = crow.numel() - 1, R = x_fm.size(1);
  TORCH_CHECK(n_rows >= 0, "crow must have at least one element");
  auto out = torch::empty({n_rows, R}, x_fm.options());
  if (n_rows == 0 || R == 0) return out;
  if (col.numel() == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(x_fm.scalar_type(), "sparsetrain_spmm", [&] {
    using T = scalar_t;
    dispatch_index(col, [&](auto index_tag) {
      using I = decltype(index_tag);
      with_tile<T>(tile_bytes, [&](auto wc) {
        spmm_impl<T, I, decltype(wc)::value>(crow.data_ptr<I>(), col.data_ptr<I>(), values.data_ptr<T>(),
                                             x_fm.data_ptr<T>(), out.data_ptr<T>(), n_rows, R, prefetch);
      });
    });
  });
  return out;
}

torch::Tensor sddmm(torch::Tensor crow_or_rows, torch::Tensor col, torch::Tensor left_fm, torch::Tensor right_fm,
                    bool coo, int64_t tile_bytes, int64_t prefetch) {
  check_common(crow_or_rows, col, coo ? "rows" : "crow");
  check_dense(left_fm, "left_fm");
  check_dense(right_fm, "right_fm");
  TORCH_CHECK(left_fm.scalar_type() == right_fm.scalar_type(), "left_fm and right_fm must have the same dtype");
  TORCH_CHECK(left_fm.size(1) == right_fm.size(1), "left_fm and right_fm must have the same number of columns R");
  const int64_t nnz = col.numel(), R = left_fm.size(1);
  const int64_t n_rows = coo ? left_fm.size(0) : crow_or_rows.numel() - 1;
  if (coo) TORCH_CHECK(crow_or_rows.numel() == nnz, "rows and cols must have the same length");
  auto out = torch::empty({nnz}, left_fm.options());
  if (nnz == 0) return out;
  if (R == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(left_fm.scalar_type(), "sparsetrain_sddmm", [&] {
    using T = scalar_t;
    dispatch_index(col, [&](auto index_tag) {
      using I = decltype(index_tag);
      with_tile<T>(tile_bytes, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        const I* idx = crow_or_rows.data_ptr<I>();
        if (coo)
          sddmm_impl<T, I, W, true>(idx, n_rows, col.data_ptr<I>(), left_fm.data_ptr<T>(), right_fm.data_ptr<T>(),
                                    out.data_ptr<T>(), nnz, R, prefetch);
        else
          sddmm_impl<T, I, W, false>(idx, n_rows, col.data_ptr<I>(), left_fm.data_ptr<T>(), right_fm.data_ptr<T>(),
                                     out.data_ptr<T>(), nnz, R, prefetch);
      });
    });
  });
  return out;
}

// Stable counting sort of col: perm lists entry ids in column-major order, ccol are the column pointers.
// Per-thread histograms over contiguous entry ranges keep it stable and parallel: O(nnz + T * n_cols).
std::tuple<torch::Tensor, torch::Tensor> transpose_order(torch::Tensor col, int64_t n_cols) {
  TORCH_CHECK(col.device().is_cpu() && col.dim() == 1 && col.is_contiguous(), "col must be a contiguous 1-D CPU tensor");
  TORCH_CHECK(col.scalar_type() == torch::kInt32 || col.scalar_type() == torch::kInt64,
              "col dtype must be int32 or int64, got ", col.scalar_type());
  TORCH_CHECK(n_cols >= 0, "n_cols must be >= 0, got ", n_cols);
  const int64_t nnz = col.numel();
  auto perm = torch::empty({nnz}, col.options());
  auto ccol = torch::empty({n_cols + 1}, col.options());
  dispatch_index(col, [&](auto index_tag) {
    using I = decltype(index_tag);
    const I* c = col.data_ptr<I>();
    I* pm = perm.data_ptr<I>();
    I* cp = ccol.data_ptr<I>();
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
    TORCH_CHECK(!bad, "col has entries outside [0, n_cols=", n_cols, ")");
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
      for (int64_t j = b; j < e; ++j) pm[pos[c[j]]++] = static_cast<I>(j);
    }
  });
  return {perm, ccol};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm", &spmm, "feature-major CSR SpMM: (n_rows, R) = CSR @ (n_cols, R)");
  m.def("sddmm", &sddmm, "SDDMM at CSR (coo=false) or COO (coo=true) coordinates");
  m.def("transpose_order", &transpose_order, "stable counting sort of column indices: (perm, ccol)");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
