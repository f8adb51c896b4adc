// CPU kernels for the sparse TopK path, compiled on first use by saeops.kernels.cpu_ext.
//
// topk_bias(scores, bias, k): per row, the k largest of `scores[b, :] + bias` (values and
// indices, unordered; `bias` may be None). The encoder GEMM then needs no bias pass over the [B, d_sae] matrix,
// and the selection reads each row from memory once instead of in four torch passes:
//   1. group maxima: the row as `members` strided slices of width W = n / members, maxed
//      elementwise (group c = {c, c + W, ...}; vectorised, one sequential read of the row);
//   2. thr = a value that at least k group maxima reach (bisection on the value). Those k
//      groups each hold an element >= thr, so the k-th largest element is >= thr: every
//      top-k element is >= thr, and lies in a group whose maximum is >= thr;
//   3. collect the members >= thr of those groups (the row is now in L2) and select the k
//      largest of them.
// A row holding a NaN takes an exact full-row path that ranks NaN above everything, as
// torch.topk does.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {


// fp32 vector helpers (GCC/Clang vector extensions: AVX-512 or AVX2 code under -march=native).
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline bool any_lane(v8i m) {
  uint64_t w[4];
  std::memcpy(w, &m, sizeof(w));
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

template <typename T>
int64_t count_ge(const T* x, int64_t n, T t) {
  int64_t cnt = 0, c = 0;
  if constexpr (std::is_same_v<T, float>) {
    v8i acc = {0, 0, 0, 0, 0, 0, 0, 0};
    const v8f tv = {t, t, t, t, t, t, t, t};
    for (; c + 8 <= n; c += 8) acc -= (load8(x + c) >= tv);  // true lanes are -1
    for (int l = 0; l < 8; ++l) cnt += acc[l];
  }
  for (; c < n; ++c) cnt += x[c] >= t;
  return cnt;
}

template <typename T>
struct Scratch {
  std::vector<T> gm;
  std::vector<std::pair<T, int64_t>> cand;
};

template <typename T>
bool nan_last_greater(const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
  // Descending, NaN first (torch.topk treats NaN as the largest value).
  if (std::isnan(a.first)) return !std::isnan(b.first);
  if (std::isnan(b.first)) return false;
  return a.first > b.first;
}

// Element j of a row plus its bias (no bias: the element itself, with no extra add).
template <typename T, bool HasBias>
inline T biased(const T* row, const T* bias, int64_t j) {
  if constexpr (HasBias) {
    return row[j] + bias[j];
  } else {
    return row[j];
  }
}

template <typename T, bool HasBias>
void full_row(const T* row, const T* bias, int64_t n, int64_t k, T* out_v, int64_t* out_i, Scratch<T>& sc) {
  sc.cand.clear();
  for (int64_t j = 0; j < n; ++j) sc.cand.emplace_back(biased<T, HasBias>(row, bias, j), j);
  std::nth_element(sc.cand.begin(), sc.cand.begin() + (k - 1), sc.cand.end(), nan_last_greater<T>);
  for (int64_t t = 0; t < k; ++t) {
    out_v[t] = sc.cand[t].first;
    out_i[t] = sc.cand[t].second;
  }
}

template <typename T, bool HasBias>
void topk_row(const T* row, const T* bias, int64_t n, int64_t k, int64_t members, T* out_v, int64_t* out_i,
              Scratch<T>& sc) {
  const int64_t W = n / members;
  T* gm = sc.gm.data();
  for (int64_t c = 0; c < W; ++c) gm[c] = biased<T, HasBias>(row, bias, c);
  for (int64_t m = 1; m < members; ++m) {
    const T* r = row + m * W;
    const T* b = HasBias ? bias + m * W : nullptr;
    for (int64_t c = 0; c < W; ++c) {
      const T v = biased<T, HasBias>(r, b, c);
      gm[c] = gm[c] < v ? v : gm[c];
    }
  }
  // thr: a value with at least k (ideally not many more) group maxima >= thr, by bisection
  // on the value with vectorised counts (a heap or nth_element over the maxima costs several
  // times more: their branches depend on the data). NaN maxima never count.
  T lo = gm[0], hi = gm[0];
  for (int64_t c = 1; c < W; ++c) {
    lo = gm[c] < lo ? gm[c] : lo;
    hi = gm[c] > hi ? gm[c] : hi;
  }
  auto count_ge = [&](T t) { return ::count_ge(gm, W, t); };
  // Every group maximum is >= lo unless one is NaN: then the row takes the exact path.
  if (std::isnan(lo) || std::isnan(hi) || count_ge(lo) != W) {
    full_row<T, HasBias>(row, bias, n, k, out_v, out_i, sc);
    return;
  }
  for (int it = 0; it < 40 && lo < hi; ++it) {
    const T mid = lo + (hi - lo) / 2;
    if (!(mid > lo)) break;  // no representable value in between
    const int64_t cnt = count_ge(mid);
    if (cnt >= k) {
      lo = mid;
      if (cnt <= 2 * k) break;
    } else {
      hi = mid;
    }
  }
  const T thr = lo;

  sc.cand.clear();
  auto take = [&](int64_t j) {
    const T v = biased<T, HasBias>(row, bias, j);
    if (v >= thr) sc.cand.emplace_back(v, j);
  };
  if constexpr (std::is_same_v<T, float>) {
    // The row is in L2 after pass 1: a vectorised scan, 16 elements per test.
    const v8f tv = {thr, thr, thr, thr, thr, thr, thr, thr};
    auto load = [&](int64_t j) {
      if constexpr (HasBias) {
        return load8(row + j) + load8(bias + j);
      } else {
        return load8(row + j);
      }
    };
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const v8i m = (load(j) >= tv) | (load(j + 8) >= tv);
      if (any_lane(m)) {
        for (int64_t t = 0; t < 16; ++t) take(j + t);
      }
    }
    for (; j < n; ++j) take(j);
  } else {
    // Only groups whose maximum reaches thr can hold elements >= thr: visit their members.
    for (int64_t c = 0; c < W; ++c) {
      if (gm[c] >= thr) {
        for (int64_t m = 0; m < members; ++m) take(m * W + c);
      }
    }
  }
  if (static_cast<int64_t>(sc.cand.size()) < k) {  // cannot happen; kept as a safety net
    full_row<T, HasBias>(row, bias, n, k, out_v, out_i, sc);
    return;
  }
  std::nth_element(sc.cand.begin(), sc.cand.begin() + (k - 1), sc.cand.end(), nan_last_greater<T>);
  for (int64_t t = 0; t < k; ++t) {
    out_v[t] = sc.cand[t].first;
    out_i[t] = sc.cand[t].second;
  }
}

template <typename T, bool HasBias>
void topk_rows(const T* s, const T* b, int64_t B, int64_t n, int64_t k, int64_t members, bool grouped, T* v,
               int64_t* ix) {
  at::parallel_for(0, B, 16, [&](int64_t r0, int64_t r1) {
    Scratch<T> sc;
    sc.gm.resize(grouped ? n / members : 0);
    sc.cand.reserve(grouped ? 8 * k : n);
    for (int64_t r = r0; r < r1; ++r) {
      if (grouped) {
        topk_row<T, HasBias>(s + r * n, b, n, k, members, v + r * k, ix + r * k, sc);
      } else {
        full_row<T, HasBias>(s + r * n, b, n, k, v + r * k, ix + r * k, sc);
      }
    }
  });
}

// Vector loops live outside the dispatch macros (a #pragma cannot sit in a macro argument).
template <typename T>
inline void axpy(T* __restrict a, const T* __restrict x, T w, int64_t d) {
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) a[c] += w * x[c];
}

template <typename T>
inline T dot(const T* __restrict x, const T* __restrict y, int64_t d) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < d; ++c) acc += x[c] * y[c];
  return acc;
}

}  // namespace

std::vector<torch::Tensor> topk_bias(const torch::Tensor& scores, const c10::optional<torch::Tensor>& bias,
                                     int64_t k, int64_t members) {
  TORCH_CHECK(scores.device().is_cpu(), "topk_bias runs on CPU tensors");
  TORCH_CHECK(scores.dim() == 2 && scores.is_contiguous(), "scores must be a contiguous [B, n] tensor");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->device().is_cpu(), "topk_bias runs on CPU tensors");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == scores.size(1) && bias->is_contiguous(),
                "bias must be a contiguous [n] tensor");
    TORCH_CHECK(scores.scalar_type() == bias->scalar_type(), "scores and bias dtypes differ");
  }
  const int64_t B = scores.size(0), n = scores.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "k must be in [1, n]");
  TORCH_CHECK(members >= 1, "members must be >= 1");
  // Grouping needs whole groups and enough of them (k * members * 4 <= n keeps thr selective).
  const bool grouped = members > 1 && n % members == 0 && k * members * 4 <= n;
  auto values = torch::empty({B, k}, scores.options());
  auto indices = torch::empty({B, k}, scores.options().dtype(torch::kLong));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "topk_bias", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* v = values.data_ptr<scalar_t>();
    int64_t* ix = indices.data_ptr<int64_t>();
    if (has_bias) {
      topk_rows<scalar_t, true>(s, bias->data_ptr<scalar_t>(), B, n, k, members, grouped, v, ix);
    } else {
      topk_rows<scalar_t, false>(s, nullptr, B, n, k, members, grouped, v, ix);
    }
  });
  return {values, indices};
}

// Entries sorted by latent (`order`: flat entry ids b * k + j; `bounds[i] .. bounds[i + 1]`: the
// entries of latent i) drive the two backward kernels below; each walks latent by latent, so
// every output row is produced once, in order, with no atomics and a fixed summation order.

// scatter_t: out[:, i] = sum over latent i's entries e of w[e] * rows[e / k], written straight
// into a [d, n] (row-major W_enc) gradient, 16 latents at a time: their sums stay in a small
// tile while they accumulate and leave as whole 64-byte lines.
torch::Tensor scatter_t(const torch::Tensor& order, const torch::Tensor& bounds, const torch::Tensor& w,
                        const torch::Tensor& rows, int64_t k, int64_t n) {
  TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous() && w.is_contiguous() && order.is_contiguous() &&
                  bounds.is_contiguous() && bounds.numel() == n + 1,
              "scatter_t: bad arguments");
  TORCH_CHECK(w.scalar_type() == rows.scalar_type(), "scatter_t: weights and rows dtypes differ");
  const int64_t d = rows.size(1);
  auto out = torch::empty({d, n}, rows.options());
  constexpr int64_t T = 16;
  const int64_t tiles = (n + T - 1) / T;
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* bnd = bounds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "scatter_t", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* rp = rows.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, tiles, 4, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> acc(T * d);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t * T, width = std::min(T, n - i0);
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        for (int64_t li = 0; li < width; ++li) {
          scalar_t* a = acc.data() + li * d;
          const int64_t p_end = bnd[i0 + li + 1];
          for (int64_t p = bnd[i0 + li]; p < p_end; ++p) {
            const int64_t e = ord[p];
            const scalar_t we = wp[e];
            const scalar_t* r = rp + (e / k) * d;
            axpy(a, r, we, d);
          }
        }
        for (int64_t c = 0; c < d; ++c) {
          scalar_t* o = op + c * n + i0;
          for (int64_t li = 0; li < width; ++li) o[li] = acc[li * d + c];
        }
      }
    });
  });
  return out;
}

// decode_backward: for the decoder out[b] = sum_j v[b, j] W_dec[idx[b, j]], given grad_out:
//   g_values[e] = <grad_out[e / k], W_dec[i]>   and   g_W_dec[i] = sum_e v[e] grad_out[e / k]
// over latent i's entries e, in one pass: each gathered grad_out row serves both, and W_dec
// is read row by row in order instead of at random.
std::vector<torch::Tensor> decode_backward(const torch::Tensor& order, const torch::Tensor& bounds,
                                           const torch::Tensor& values, const torch::Tensor& grad_out,
                                           const torch::Tensor& W_dec, int64_t k, bool need_values,
                                           bool need_weight) {
  const int64_t n = W_dec.size(0), d = W_dec.size(1);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(1) == d && grad_out.is_contiguous() && W_dec.is_contiguous() &&
                  values.is_contiguous() && order.is_contiguous() && bounds.is_contiguous() &&
                  bounds.numel() == n + 1,
              "decode_backward: bad arguments");
  TORCH_CHECK(values.scalar_type() == grad_out.scalar_type() && W_dec.scalar_type() == grad_out.scalar_type(),
              "decode_backward: dtypes differ");
  auto g_values = torch::empty({values.numel()}, values.options());
  auto g_W = need_weight ? torch::empty({n, d}, W_dec.options()) : torch::empty({0}, W_dec.options());
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* bnd = bounds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "decode_backward", [&] {
    const scalar_t* vp = values.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* wd = W_dec.data_ptr<scalar_t>();
    scalar_t* gv = g_values.data_ptr<scalar_t>();
    scalar_t* gw = need_weight ? g_W.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const scalar_t* wi = wd + i * d;
        scalar_t* a = need_weight ? gw + i * d : nullptr;
        if (need_weight) std::fill(a, a + d, scalar_t(0));
        for (int64_t p = bnd[i]; p < bnd[i + 1]; ++p) {
          const int64_t e = ord[p];
          const scalar_t* g = gp + (e / k) * d;
          if (need_values) {
            gv[e] = dot(g, wi, d);
          }
          if (need_weight) {
            axpy(a, g, vp[e], d);
          }
        }
      }
    });
  });
  return {g_values, g_W};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk_bias", &topk_bias, "per-row top-k of scores (+ bias): (values, indices)");
  m.def("scatter_t", &scatter_t, "latent-sorted weighted row sums, written as [d, n]");
  m.def("decode_backward", &decode_backward, "sparse decoder backward: (g_values, g_W_dec)");
}
