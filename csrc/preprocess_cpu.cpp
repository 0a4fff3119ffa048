// CPU kernel of the CLIP preprocessing (interface and math: preprocess.h, fastgrpo/reference/preprocess.py).
//
// One task per (image, channel) plane, spread over threads by at::parallel_for; the plane's horizontal results
// (window rows x crop columns, uint8 with quantize) stay in a per-thread buffer that fits in L2.
// Horizontal pass: kRows input rows are converted to levels and stored transposed (x-major, kRows lanes), so each
// tap is one multiply-add over kRows rows with the same weight: vector code without gathers. Vertical pass: each
// tap adds a weighted row of the horizontal results, contiguous across the crop's columns.
// With quantize the sums are Pillow's integer ones (int32, weights in units of 2^-22), so the result equals PIL's
// bit for bit; the hot loops are compiled for AVX2, SSE4.1 (pmulld) and baseline x86-64 and picked at load time.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "preprocess.h"

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define FG_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#endif
#endif
#ifndef FG_CLONES
#define FG_CLONES
#endif

namespace {

constexpr int kRows = 16;
constexpr int kBits = 22;
constexpr int32_t kHalf = 1 << (kBits - 1);

inline int32_t clip8(int32_t acc) {
  const int32_t v = acc >> kBits;  // arithmetic shift: floor, as Pillow's
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

}  // namespace

// Hot loops: plain functions (function multiversioning does not apply to templates). The horizontal ones keep
// the kRows accumulators in two 8-lane GCC/clang vectors: one AVX2 register each, or two SSE ones.
#if defined(__GNUC__)
#define FG_VECTORS 1
typedef int32_t fg_i32x8 __attribute__((vector_size(32)));
typedef float fg_f32x8 __attribute__((vector_size(32)));
#endif

FG_CLONES void fg_hpass_fixed(const int32_t* __restrict__ block, const fg_axis* a, int rows,
                              uint8_t* __restrict__ tmp) {
  static_assert(kRows == 16, "two 8-lane accumulators");
  const int32_t* weight = static_cast<const int32_t*>(a->weight);
  const int64_t tap_stride = a->w_stride_tap;
  const int n_out = a->n_out;
  for (int o = 0; o < n_out; ++o) {
    const int32_t* src = block + static_cast<int64_t>(a->start[o]) * kRows;
    const int32_t* w = weight + o * a->w_stride_out;
    const int taps = a->count[o];
    int32_t lanes[kRows];
#ifdef FG_VECTORS
    fg_i32x8 lo = fg_i32x8{} + kHalf, hi = lo;
    for (int k = 0; k < taps; ++k) {
      fg_i32x8 v0, v1;
      std::memcpy(&v0, src + k * kRows, sizeof(v0));
      std::memcpy(&v1, src + k * kRows + 8, sizeof(v1));
      const int32_t wk = w[k * tap_stride];
      lo += wk * v0;
      hi += wk * v1;
    }
    lo >>= kBits;
    hi >>= kBits;
    lo = lo < 0 ? 0 : (lo > 255 ? 255 : lo);
    hi = hi < 0 ? 0 : (hi > 255 ? 255 : hi);
    std::memcpy(lanes, &lo, sizeof(lo));
    std::memcpy(lanes + 8, &hi, sizeof(hi));
#else
    for (int r = 0; r < kRows; ++r) lanes[r] = kHalf;
    for (int k = 0; k < taps; ++k) {
      for (int r = 0; r < kRows; ++r) lanes[r] += w[k * tap_stride] * src[k * kRows + r];
    }
    for (int r = 0; r < kRows; ++r) lanes[r] = clip8(lanes[r]);
#endif
    for (int r = 0; r < rows; ++r) tmp[static_cast<int64_t>(r) * n_out + o] = static_cast<uint8_t>(lanes[r]);
  }
}

FG_CLONES void fg_hpass_float(const float* __restrict__ block, const fg_axis* a, int rows, float* __restrict__ tmp) {
  const float* weight = static_cast<const float*>(a->weight);
  const int64_t tap_stride = a->w_stride_tap;
  const int n_out = a->n_out;
  for (int o = 0; o < n_out; ++o) {
    const float* src = block + static_cast<int64_t>(a->start[o]) * kRows;
    const float* w = weight + o * a->w_stride_out;
    const int taps = a->count[o];
    float lanes[kRows];
#ifdef FG_VECTORS
    fg_f32x8 lo = fg_f32x8{}, hi = lo;
    for (int k = 0; k < taps; ++k) {
      fg_f32x8 v0, v1;
      std::memcpy(&v0, src + k * kRows, sizeof(v0));
      std::memcpy(&v1, src + k * kRows + 8, sizeof(v1));
      const float wk = w[k * tap_stride];
      lo += wk * v0;
      hi += wk * v1;
    }
    std::memcpy(lanes, &lo, sizeof(lo));
    std::memcpy(lanes + 8, &hi, sizeof(hi));
#else
    for (int r = 0; r < kRows; ++r) lanes[r] = 0.0f;
    for (int k = 0; k < taps; ++k) {
      for (int r = 0; r < kRows; ++r) lanes[r] += w[k * tap_stride] * src[k * kRows + r];
    }
#endif
    for (int r = 0; r < rows; ++r) tmp[static_cast<int64_t>(r) * n_out + o] = lanes[r];
  }
}

FG_CLONES void fg_vpass_fixed(const uint8_t* __restrict__ tmp, int n_cols, const int32_t* __restrict__ w,
                              int64_t w_stride_tap, int taps, int32_t* __restrict__ acc) {
  for (int x = 0; x < n_cols; ++x) acc[x] = kHalf;
  for (int k = 0; k < taps; ++k) {
    const int32_t wk = w[k * w_stride_tap];
    const uint8_t* row = tmp + static_cast<int64_t>(k) * n_cols;
    for (int x = 0; x < n_cols; ++x) acc[x] += wk * static_cast<int32_t>(row[x]);
  }
}

FG_CLONES void fg_vpass_float(const float* __restrict__ tmp, int n_cols, const float* __restrict__ w,
                              int64_t w_stride_tap, int taps, float* __restrict__ acc) {
  for (int x = 0; x < n_cols; ++x) acc[x] = 0.0f;
  for (int k = 0; k < taps; ++k) {
    const float wk = w[k * w_stride_tap];
    const float* row = tmp + static_cast<int64_t>(k) * n_cols;
    for (int x = 0; x < n_cols; ++x) acc[x] += wk * row[x];
  }
}

// Pixels in [0, 1] (or [-1, 1] with minus_one) -> levels 0..255; NaN counts as 0 and is reported. The same float
// operations as reference.to_levels, written branch-free so that they vectorise: (v > 0 ? v : 0) is maxps with
// NaN -> 0, and (v + 1.5*2^23) - 1.5*2^23 rounds 0 <= v < 2^22 to the nearest integer, ties to even, as
// torch.round does (-ffp-contract=off keeps the two roundings).
FG_CLONES int fg_levels_fixed(const float* __restrict__ in, int len, int minus_one, int32_t* __restrict__ out) {
  constexpr float kRoundMagic = 12582912.0f;
  int nan = 0;
  for (int x = 0; x < len; ++x) {
    float v = minus_one ? (in[x] + 1.0f) * 0.5f : in[x];
    nan |= v != v;
    v = v > 0.0f ? v : 0.0f;
    v = v < 1.0f ? v : 1.0f;
    out[x] = static_cast<int32_t>((v * 255.0f + kRoundMagic) - kRoundMagic);
  }
  return nan;
}

FG_CLONES int fg_levels_float(const float* __restrict__ in, int len, int minus_one, float* __restrict__ out) {
  int nan = 0;
  for (int x = 0; x < len; ++x) {
    float v = minus_one ? (in[x] + 1.0f) * 0.5f : in[x];
    nan |= v != v;
    v = v > 0.0f ? v : 0.0f;
    v = v < 1.0f ? v : 1.0f;
    out[x] = v * 255.0f;
  }
  return nan;
}

namespace {

template <bool Q> struct Types;
template <> struct Types<true> { using Level = int32_t; using Tmp = uint8_t; using Acc = int32_t; };
template <> struct Types<false> { using Level = float; using Tmp = float; using Acc = float; };

// One row of pixels (any dtype, stride) -> levels; returns 1 when a pixel was NaN.
template <typename T, bool Q>
int row_levels(const T* src, int64_t stride, int len, int minus_one, float* line, typename Types<Q>::Level* out) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (int x = 0; x < len; ++x) out[x] = static_cast<typename Types<Q>::Level>(src[x * stride]);
    return 0;
  } else {
    const float* values = line;
    if (std::is_same_v<T, float> && stride == 1) {
      values = reinterpret_cast<const float*>(src);
    } else {
      for (int x = 0; x < len; ++x) line[x] = static_cast<float>(src[x * stride]);
    }
    if constexpr (Q) {
      return fg_levels_fixed(values, len, minus_one, out);
    } else {
      return fg_levels_float(values, len, minus_one, out);
    }
  }
}

template <bool Q>
struct Scratch {
  std::vector<typename Types<Q>::Level> rows, block;
  std::vector<float> line;
  std::vector<typename Types<Q>::Tmp> tmp;
  std::vector<typename Types<Q>::Acc> acc;
  explicit Scratch(const fg_preprocess_params& p)
      : rows(static_cast<size_t>(p.cols.len) * kRows), block(static_cast<size_t>(p.cols.len) * kRows),
        line(p.cols.len), tmp(static_cast<size_t>(p.rows.len) * p.cols.n_out), acc(p.cols.n_out) {}
};

// rows (n_rows x len, row-major) -> block (len x kRows): each tap of the horizontal pass becomes one vector.
template <typename L>
void interleave(const L* __restrict__ rows, int len, int n_rows, L* __restrict__ block) {
  constexpr int kTile = 64;  // columns per tile: the tile's rows and block stay in L1
  for (int x0 = 0; x0 < len; x0 += kTile) {
    const int x1 = std::min(len, x0 + kTile);
    for (int r = 0; r < n_rows; ++r) {
      const L* src = rows + static_cast<int64_t>(r) * len;
      for (int x = x0; x < x1; ++x) block[static_cast<int64_t>(x) * kRows + r] = src[x];
    }
  }
}

// Horizontal pass of plane n into s.tmp (window rows x crop columns); returns 1 when a pixel read was NaN.
template <typename T, bool Q>
int horizontal(const fg_preprocess_params& p, int64_t n, Scratch<Q>& s) {
  const fg_axis& R = p.rows;
  const fg_axis& C = p.cols;
  const int64_t* st = p.in_stride;
  const T* src = static_cast<const T*>(p.in) + (n / 3) * st[0] + (n % 3) * st[1] + R.lo * st[2] + C.lo * st[3];
  const int minus_one = p.input_mode == FG_RANGE_M1_1;
  int nan = 0;
  for (int y0 = 0; y0 < R.len; y0 += kRows) {
    const int rows = std::min(kRows, R.len - y0);
    for (int r = 0; r < rows; ++r) {
      nan |= row_levels<T, Q>(src + (y0 + r) * st[2], st[3], C.len, minus_one, s.line.data(),
                              s.rows.data() + static_cast<int64_t>(r) * C.len);
    }
    interleave(s.rows.data(), C.len, rows, s.block.data());
    if constexpr (Q) {
      fg_hpass_fixed(s.block.data(), &C, rows, s.tmp.data() + static_cast<int64_t>(y0) * C.n_out);
    } else {
      fg_hpass_float(s.block.data(), &C, rows, s.tmp.data() + static_cast<int64_t>(y0) * C.n_out);
    }
  }
  return nan;
}

// Vertical pass of plane n from s.tmp, normalised into the output.
template <typename O, bool Q>
void vertical(const fg_preprocess_params& p, int64_t n, Scratch<Q>& s) {
  const fg_axis& R = p.rows;
  const int W = p.cols.n_out;
  const int c = static_cast<int>(n % 3);
  const float mean = p.mean[c], std = p.std[c];
  const int64_t* st = p.out_stride;
  O* dst = static_cast<O*>(p.out) + (n / 3) * st[0] + c * st[1];
  for (int oy = 0; oy < R.n_out; ++oy) {
    const auto* rows = s.tmp.data() + static_cast<int64_t>(R.start[oy]) * W;
    if constexpr (Q) {
      const int32_t* w = static_cast<const int32_t*>(R.weight) + oy * R.w_stride_out;
      fg_vpass_fixed(rows, W, w, R.w_stride_tap, R.count[oy], s.acc.data());
    } else {
      const float* w = static_cast<const float*>(R.weight) + oy * R.w_stride_out;
      fg_vpass_float(rows, W, w, R.w_stride_tap, R.count[oy], s.acc.data());
    }
    O* out = dst + oy * st[2];
    for (int x = 0; x < W; ++x) {
      const float v = Q ? static_cast<float>(clip8(static_cast<int32_t>(s.acc[x]))) : static_cast<float>(s.acc[x]);
      out[x * st[3]] = static_cast<O>((v / 255.0f - mean) / std);
    }
  }
}

template <bool Q>
using HorizontalFn = int (*)(const fg_preprocess_params&, int64_t, Scratch<Q>&);
template <bool Q>
using VerticalFn = void (*)(const fg_preprocess_params&, int64_t, Scratch<Q>&);

template <bool Q>
HorizontalFn<Q> pick_horizontal(const fg_preprocess_params& p) {
  switch (p.in_dtype) {
    case FG_U8: return &horizontal<uint8_t, Q>;
    case FG_F16: return &horizontal<c10::Half, Q>;
    case FG_BF16: return &horizontal<c10::BFloat16, Q>;
    case FG_F32: return &horizontal<float, Q>;
    default: return &horizontal<double, Q>;
  }
}

template <bool Q>
VerticalFn<Q> pick_vertical(const fg_preprocess_params& p) {
  switch (p.out_dtype) {
    case FG_F16: return &vertical<c10::Half, Q>;
    case FG_BF16: return &vertical<c10::BFloat16, Q>;
    default: return &vertical<float, Q>;
  }
}

template <bool Q>
void run(const fg_preprocess_params& p) {
  const HorizontalFn<Q> h = pick_horizontal<Q>(p);
  const VerticalFn<Q> v = pick_vertical<Q>(p);
  std::atomic<int> nan{0};
  at::parallel_for(0, static_cast<int64_t>(p.batch) * 3, 1, [&](int64_t begin, int64_t end) {
    Scratch<Q> scratch(p);
    int any = 0;
    for (int64_t n = begin; n < end; ++n) {
      any |= h(p, n, scratch);
      v(p, n, scratch);
    }
    if (any) nan.store(1);
  });
  if (nan.load()) *p.nan_flag = 1;
}

}  // namespace

extern "C" void fg_preprocess_cpu(const fg_preprocess_params* p) {
  if (p->quantize) {
    run<true>(*p);
  } else {
    run<false>(*p);
  }
}
