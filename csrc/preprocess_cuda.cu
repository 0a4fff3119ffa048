// CUDA kernels of the CLIP preprocessing (interface and math: preprocess.h, fastgrpo/reference/preprocess.py).
// No torch headers: this translation unit compiles with plain nvcc, which is how CI checks it without a GPU
// (csrc/check_cuda_compiles.sh).
//
// Two launches. Horizontal: one block per (plane, window row); the block converts the row's window to levels in
// shared memory (coalesced loads, each pixel read from DRAM once, NaN flagged), then each thread filters one or
// more crop columns from shared memory into the intermediate buffer (uint8 with quantize: the image is read at
// 1, 2 or 4 bytes per pixel, the intermediate written at 1 per window row and crop column). Vertical: one thread per
// output pixel; neighbouring threads read neighbouring columns of the intermediate (coalesced, L2-resident), and
// write the normalised value in the output dtype at any strides.
// With quantize the sums are Pillow's int32 fixed-point ones, so CPU, CUDA and PIL agree bit for bit; float
// operations that feed a rounding use the _rn intrinsics so that nvcc cannot fuse them into an FMA.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "preprocess.h"

namespace {

constexpr int kThreads = 256;
constexpr int kBits = 22;

template <bool Q> struct Types;
template <> struct Types<true> { using Level = uint8_t; using Weight = int32_t; using Acc = int32_t; };
template <> struct Types<false> { using Level = float; using Weight = float; using Acc = float; };

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<uint8_t>(uint8_t v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<double>(double v) { return __double2float_rn(v); }

template <typename O> __device__ __forceinline__ O from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ int32_t clip8(int32_t acc) {
  const int32_t v = acc >> kBits;  // arithmetic shift: floor, as Pillow's
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

// Pixel -> level in 0..255; NaN counts as 0 and is reported. Same float operations as reference.to_levels.
template <int MODE, bool Q>
__device__ __forceinline__ float level(float v, bool& nan) {
  if (MODE == FG_LEVELS) return v;
  if (MODE == FG_RANGE_M1_1) v = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);
  if (isnan(v)) {
    nan = true;
    v = 0.0f;
  }
  v = __fmul_rn(fminf(fmaxf(v, 0.0f), 1.0f), 255.0f);
  return Q ? rintf(v) : v;  // rintf: nearest, ties to even (torch.round)
}

template <typename T, int MODE, bool Q>
__global__ void __launch_bounds__(kThreads) horizontal_kernel(const fg_preprocess_params p) {
  using L = typename Types<Q>::Level;
  using W = typename Types<Q>::Weight;
  using A = typename Types<Q>::Acc;
  extern __shared__ __align__(16) unsigned char smem[];
  L* line = reinterpret_cast<L*>(smem);
  const fg_axis& R = p.rows;
  const fg_axis& C = p.cols;
  const int64_t task = blockIdx.x;
  const int64_t n = task / R.len;
  const int y = static_cast<int>(task - n * R.len);
  const int64_t* st = p.in_stride;
  const T* src = static_cast<const T*>(p.in) + (n / 3) * st[0] + (n % 3) * st[1] +
                 static_cast<int64_t>(R.lo + y) * st[2] + static_cast<int64_t>(C.lo) * st[3];
  bool nan = false;
  for (int x = threadIdx.x; x < C.len; x += blockDim.x) {
    line[x] = static_cast<L>(level<MODE, Q>(to_float(src[x * st[3]]), nan));
  }
  if (nan) *p.nan_flag = 1;
  __syncthreads();
  const W* weight = static_cast<const W*>(C.weight);
  L* dst = static_cast<L*>(p.tmp) + (n * R.len + y) * C.n_out;
  for (int o = threadIdx.x; o < C.n_out; o += blockDim.x) {
    const L* taps = line + C.start[o];
    const W* w = weight + o * C.w_stride_out;
    A acc = Q ? (1 << (kBits - 1)) : 0;
    for (int k = 0, count = C.count[o]; k < count; ++k) {
      acc += __ldg(w + k * C.w_stride_tap) * static_cast<A>(taps[k]);
    }
    if constexpr (Q) {
      dst[o] = static_cast<L>(clip8(acc));
    } else {
      dst[o] = acc;
    }
  }
}

template <typename O, bool Q>
__global__ void __launch_bounds__(kThreads) vertical_kernel(const fg_preprocess_params p, int64_t total) {
  using L = typename Types<Q>::Level;
  using W = typename Types<Q>::Weight;
  using A = typename Types<Q>::Acc;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const fg_axis& R = p.rows;
  const int n_cols = p.cols.n_out;
  const int x = static_cast<int>(i % n_cols);
  const int64_t t = i / n_cols;
  const int oy = static_cast<int>(t % R.n_out);
  const int64_t n = t / R.n_out;
  const int c = static_cast<int>(n % 3);
  const L* col = static_cast<const L*>(p.tmp) + (n * R.len + R.start[oy]) * n_cols + x;
  const W* w = static_cast<const W*>(R.weight) + oy * R.w_stride_out;
  A acc = Q ? (1 << (kBits - 1)) : 0;
  for (int k = 0, count = R.count[oy]; k < count; ++k) {
    acc += __ldg(w + k * R.w_stride_tap) * static_cast<A>(col[static_cast<int64_t>(k) * n_cols]);
  }
  float v;
  if constexpr (Q) {
    v = static_cast<float>(clip8(acc));
  } else {
    v = acc;
  }
  v = __fdiv_rn(__fsub_rn(__fdiv_rn(v, 255.0f), p.mean[c]), p.std[c]);
  const int64_t* st = p.out_stride;
  static_cast<O*>(p.out)[(n / 3) * st[0] + c * st[1] + oy * st[2] + x * st[3]] = from_float<O>(v);
}

typedef void (*HorizontalKernel)(const fg_preprocess_params);
typedef void (*VerticalKernel)(const fg_preprocess_params, int64_t);

template <typename T, bool Q>
HorizontalKernel horizontal_for_range(int mode) {
  return mode == FG_RANGE_M1_1 ? horizontal_kernel<T, FG_RANGE_M1_1, Q> : horizontal_kernel<T, FG_RANGE_0_1, Q>;
}

template <bool Q>
HorizontalKernel pick_horizontal(const fg_preprocess_params& p) {
  switch (p.in_dtype) {
    case FG_U8: return horizontal_kernel<uint8_t, FG_LEVELS, Q>;
    case FG_F16: return horizontal_for_range<__half, Q>(p.input_mode);
    case FG_BF16: return horizontal_for_range<__nv_bfloat16, Q>(p.input_mode);
    case FG_F32: return horizontal_for_range<float, Q>(p.input_mode);
    default: return horizontal_for_range<double, Q>(p.input_mode);
  }
}

template <bool Q>
VerticalKernel pick_vertical(const fg_preprocess_params& p) {
  switch (p.out_dtype) {
    case FG_F16: return vertical_kernel<__half, Q>;
    case FG_BF16: return vertical_kernel<__nv_bfloat16, Q>;
    default: return vertical_kernel<float, Q>;
  }
}

template <bool Q>
int launch(const fg_preprocess_params& p) {
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const HorizontalKernel h = pick_horizontal<Q>(p);
  const size_t smem = static_cast<size_t>(p.cols.len) * sizeof(typename Types<Q>::Level);
  if (smem > 48 * 1024) {  // very wide images: opt in to more shared memory (an error past the device's limit)
    const cudaError_t err =
        cudaFuncSetAttribute(reinterpret_cast<const void*>(h), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const int64_t planes = static_cast<int64_t>(p.batch) * 3;
  h<<<static_cast<unsigned int>(planes * p.rows.len), kThreads, smem, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t total = planes * p.rows.n_out * p.cols.n_out;
  pick_vertical<Q>(p)<<<static_cast<unsigned int>((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      p, total);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int fg_preprocess_cuda(const fg_preprocess_params* p) {
  return p->quantize ? launch<true>(*p) : launch<false>(*p);
}

extern "C" const char* fg_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
