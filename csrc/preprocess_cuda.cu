// CUDA kernel of the CLIP preprocessing (interface and math: preprocess.h, fastgrpo/reference/preprocess.py).
// No torch headers: this translation unit compiles with plain nvcc, which is how CI checks it without a GPU
// (csrc/check_cuda_compiles.sh).
//
// One launch, both passes, no intermediate in device memory. A block owns one image plane, a tile of up to
// kTileRows output rows and up to kMaxThreads crop columns (one per thread), and streams the window rows that the
// tile's vertical taps cover, kChunkRows at a time:
//   stage      the chunk's rows → levels in shared memory (16-byte loads where the layout allows, kLoadBatch in
//              flight per thread, no division per item; uint8 levels with quantize), plus the chunk's band of
//              vertical weights (tile rows × chunk rows, zero outside each output row's taps);
//   horizontal each thread filters the chunk's rows for its column: kChunkRows sums in registers, one weight load
//              per tap for all of them, rounded and clipped to uint8 with quantize;
//   vertical   the same thread adds band × its kChunkRows results to its kTileRows accumulators (registers): a
//              dense update without bounds logic, skipping output rows with no taps in the chunk. The zeros add
//              nothing, and the non-zero terms come in increasing row order: the two-pass kernel's sums.
// After the last chunk the sums are clipped and normalised (with quantize through a 256-entry table per channel:
// 256 correctly rounded divisions per block instead of one per output) and stored in the output dtype at any
// strides. Tiles of a plane overlap by the vertical support (~4 input rows per unit of scale); neighbouring tiles
// run together (adjacent block indices), so the overlap comes from L2 and each pixel from DRAM about once.
// With quantize the sums are Pillow's int32 fixed-point ones, so CPU, CUDA and PIL agree bit for bit; float
// operations that feed a rounding use the _rn intrinsics so that nvcc cannot fuse them into an FMA.
//
// Prediction (before measuring; H100, float32 input, 224² crop, B = 24). The two-pass kernel took 152 µs at 512²
// (20% of copy bandwidth) and 349 µs at 1024² (30%). Floor: (75.5 MB read + 14.5 MB written) / 3.0 TB/s = 30 µs at
// 512², 105 µs at 1024². Fusing kills the uint8 intermediate's round trip and the 36,864 tiny blocks, so I
// expected 45-60 µs at 512² (2.5-3.4×; 4.5-6× the interpolate chain's 273 µs without the NaN check's host sync,
// ~3× with it) and 120-140 µs at 1024² (2.5-2.9×), i.e. 55-75% of copy bandwidth.
// Measured (H100; GPU time per call from CUDA graphs; benchmarks/results/h100/preprocess.md). The first fused
// version kept the horizontal results and the vertical sums in shared memory and looped over the tile's output rows
// with their tap bounds in every chunk: 127-144 µs at 512², B = 24. ncu showed it issue-bound, not memory-bound
// (103 M warp instructions, 69% of issue slots busy, DRAM 15%), half of the instructions in the vertical pass's
// per-(row, chunk) bounds and pointer arithmetic. The register-resident vertical pass over a zero-padded weight
// band, the normalisation table, division-free staging and 4 blocks per SM brought it to:
//   512², B = 24: 73 µs (two-pass 152 µs: 2.1×; 41% of copy bandwidth); B = 96: 253 µs (2.3×)
//   1024², B = 24: 210 µs (two-pass 349 µs: 1.7×; 50%); B = 96: 746 µs (1.8×, 57%)
// and, per call of the op, 2.7× (with the NaN check's host sync) to 3.4× (check=False) the interpolate chain at
// 512², B = 24, 4.5-5.0× at 1024². Short of the prediction: staging and filtering alternate within a block behind
// two barriers per chunk, so only the other 3 blocks of an SM overlap a block's loads; kChunkRows = 16, kTileRows =
// 8 or 24, and 2 blocks of 100 registers each measured slower.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "preprocess.h"

namespace {

constexpr int kBits = 22;
constexpr int kTileRows = 16;    // output rows per block: the vertical sums each thread keeps in registers
constexpr int kChunkRows = 8;    // input rows per step: the horizontal pass keeps one accumulator per row
constexpr int kLoadBatch = 2;    // loads each thread issues before using the first (staging)
constexpr int kMaxThreads = 256;
constexpr int kBudget = 32 * 1024;  // shared-memory bytes aimed at for the staged rows

template <bool Q> struct Types;
template <> struct Types<true> { using Level = uint8_t; using Weight = int32_t; using Acc = int32_t; };
template <> struct Types<false> { using Level = float; using Weight = float; using Acc = float; };

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<double>(double v) { return __double2float_rn(v); }

__device__ __forceinline__ void store(void* out, int dtype, int64_t i, float v) {
  switch (dtype) {
    case FG_F16: static_cast<__half*>(out)[i] = __float2half_rn(v); break;
    case FG_BF16: static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(out)[i] = v;
  }
}

__device__ __forceinline__ int32_t clip8(int32_t acc) {
  const int32_t v = acc >> kBits;  // arithmetic shift: floor, as Pillow's
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

// Pixel -> level in 0..255; NaN counts as 0 and is reported. The same values as reference.to_levels: with quantize
// clamp, ×255 (rounded once) and round half to even (__float2uint_rn, as torch.round); __saturatef clamps to [0, 1]
// and sends NaN to 0.
template <typename T, int MODE, bool Q>
__device__ __forceinline__ typename Types<Q>::Level level(T x, bool& nan) {
  using L = typename Types<Q>::Level;
  if constexpr (MODE == FG_LEVELS) {
    return static_cast<L>(x);  // uint8 images are levels
  } else {
    float v = to_float(x);
    if (MODE == FG_RANGE_M1_1) v = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);
    nan |= isnan(v);
    if constexpr (Q) {
      return static_cast<L>(__float2uint_rn(__fmul_rn(__saturatef(v), 255.0f)));
    } else {
      return __fmul_rn(fminf(fmaxf(v, 0.0f), 1.0f), 255.0f);  // fmaxf: NaN -> 0
    }
  }
}

// V levels stored with one vector store (or a few 16-byte ones).
template <typename L, int V>
struct alignas(sizeof(L) * V < 16 ? sizeof(L) * V : 16) Pack {
  L v[V];
};

// Launch geometry, computed on the host (make_geometry).
struct Geometry {
  int tile_rows;   // output rows per block, <= kTileRows
  int tiles;       // row tiles per plane
  int col_tiles;   // column tiles per plane: blockDim.x columns each
  int chunk_rows;  // input rows staged per step, <= kChunkRows
  int pitch;       // levels per staged row: a multiple of 16
  int shift;       // staged column of the window's first column (window lo mod the vector width)
  int head, vecs;  // per row: scalar columns before the first 16-byte-aligned one, then 16-byte vectors
  size_t band_offset, bounds_offset, live_offset, lut_offset, smem;  // shared-memory layout, bytes (see the kernel)
};

// A thread's items (row r, item i of n per row) of a chunk: i = threadIdx.x, threadIdx.x + nt, ... flattened over
// rows, walked without a division per item.
struct Walk {
  int r, i, dr, di, n;
  __device__ Walk(int n_per_row, int nt) : n(n_per_row) {
    if (n == 0) {  // no items: a row past every chunk
      r = 1 << 30;
      i = dr = di = 0;
      return;
    }
    r = static_cast<int>(threadIdx.x) / n;
    i = static_cast<int>(threadIdx.x) - r * n;
    dr = nt / n;
    di = nt - dr * n;
  }
  __device__ __forceinline__ void next() {
    r += dr;
    i += di;
    if (i >= n) {
      i -= n;
      ++r;
    }
  }
};

// Stages window rows [r0, r0 + rows) of a plane as levels: staged[r * pitch + shift + i] = level of window column i.
// VEC: the row starts are 16-byte aligned and the columns contiguous, so the aligned middle of each row is read with
// 16-byte loads (vecs per row), the ragged ends with scalar ones (scalars.n per row). Loads bypass L1 (__ldcg):
// the tiles that overlap these rows read them from L2, and L1 keeps the weights.
template <typename T, int MODE, bool Q, bool VEC>
__device__ __forceinline__ bool stage(const fg_preprocess_params& p, const Geometry& g, const T* plane, int r0,
                                      int rows, const Walk& vectors, const Walk& scalars,
                                      typename Types<Q>::Level* staged) {
  using L = typename Types<Q>::Level;
  const int64_t row_stride = p.in_stride[2];
  bool nan = false;
  if constexpr (VEC) {
    constexpr int V = 16 / sizeof(T);
    const T* first = plane + p.cols.lo + g.head;  // 16-byte aligned
    for (Walk w = vectors; w.r < rows;) {
      uint4 raw[kLoadBatch];
      int dst[kLoadBatch];
#pragma unroll
      for (int u = 0; u < kLoadBatch; ++u) {
        dst[u] = -1;
        if (w.r < rows) {
          raw[u] = __ldcg(reinterpret_cast<const uint4*>(first + (r0 + w.r) * row_stride) + w.i);
          dst[u] = w.r * g.pitch + g.shift + g.head + w.i * V;
        }
        w.next();
      }
#pragma unroll
      for (int u = 0; u < kLoadBatch; ++u) {
        if (dst[u] >= 0) {
          T x[V];
          memcpy(x, &raw[u], sizeof(raw[u]));
          Pack<L, V> levels;
#pragma unroll
          for (int k = 0; k < V; ++k) levels.v[k] = level<T, MODE, Q>(x[k], nan);
          *reinterpret_cast<Pack<L, V>*>(staged + dst[u]) = levels;
        }
      }
    }
  }
  const int64_t col_stride = p.in_stride[3];
  for (Walk w = scalars; w.r < rows;) {
    T x[kLoadBatch];
    int dst[kLoadBatch];
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      dst[u] = -1;
      if (w.r < rows) {
        // VEC: the head's columns, then the tail's after the vectors
        const int c = VEC && w.i >= g.head ? w.i + g.vecs * (16 / static_cast<int>(sizeof(T))) : w.i;
        x[u] = __ldcg(plane + (r0 + w.r) * row_stride + (p.cols.lo + c) * col_stride);
        dst[u] = w.r * g.pitch + g.shift + c;
      }
      w.next();
    }
#pragma unroll
    for (int u = 0; u < kLoadBatch; ++u) {
      if (dst[u] >= 0) staged[dst[u]] = level<T, MODE, Q>(x[u], nan);
    }
  }
  return nan;
}

// at most 64 registers, so that 4 blocks share an SM: measured faster than 2 blocks of 100 registers, though the
// 16-byte-load variants then spill a few bytes
template <typename T, int MODE, bool Q, bool VEC>
__global__ void __launch_bounds__(kMaxThreads, 4) preprocess_kernel(const fg_preprocess_params p, const Geometry g) {
  using L = typename Types<Q>::Level;
  using W = typename Types<Q>::Weight;
  using A = typename Types<Q>::Acc;
  extern __shared__ __align__(16) unsigned char smem[];
  L* staged = reinterpret_cast<L*>(smem);                          // (chunk_rows, pitch) levels
  W* band = reinterpret_cast<W*>(smem + g.band_offset);            // (kTileRows, kChunkRows) vertical weights
  int2* bounds = reinterpret_cast<int2*>(smem + g.bounds_offset);  // (tile_rows) window rows [first, end) of taps
  unsigned int* live = reinterpret_cast<unsigned int*>(smem + g.live_offset);  // bit t: row t has taps in the chunk
  float* lut = reinterpret_cast<float*>(smem + g.lut_offset);      // quantize: level -> normalised value
  const fg_axis& R = p.rows;
  const fg_axis& C = p.cols;
  const int nt = blockDim.x;
  // block = (image, row tile, column tile, channel), channel fastest: the three planes of a channels-last image
  // share its lines in L2, and neighbouring row tiles (which overlap by the vertical support) run together
  const int c = static_cast<int>(blockIdx.x % 3);
  unsigned int rest = blockIdx.x / 3;
  const int x = static_cast<int>(rest % g.col_tiles) * nt + static_cast<int>(threadIdx.x);  // this thread's column
  rest /= g.col_tiles;
  const int oy0 = static_cast<int>(rest % g.tiles) * g.tile_rows;
  const int64_t b = rest / g.tiles;
  const int tile_rows = min(g.tile_rows, R.n_out - oy0);
  const T* plane = static_cast<const T*>(p.in) + b * p.in_stride[0] + c * p.in_stride[1] +
                   static_cast<int64_t>(R.lo) * p.in_stride[2];
  const float mean = p.mean[c], std = p.std[c];

  if (threadIdx.x < tile_rows) {
    const int s = __ldg(R.start + oy0 + threadIdx.x);
    bounds[threadIdx.x] = make_int2(s, s + __ldg(R.count + oy0 + threadIdx.x));
  }
  if constexpr (Q) {  // 256 correctly rounded normalisations instead of one per output
    for (int v = threadIdx.x; v < 256; v += nt) {
      lut[v] = __fdiv_rn(__fsub_rn(__fdiv_rn(static_cast<float>(v), 255.0f), mean), std);
    }
  }
  __syncthreads();
  int rs = R.len, re = 0;  // window rows that the tile's vertical taps read
  for (int t = 0; t < tile_rows; ++t) {
    rs = min(rs, bounds[t].x);
    re = max(re, bounds[t].y);
  }

  constexpr int V = VEC ? 16 / sizeof(T) : 1;
  const Walk vectors(VEC ? g.vecs : 0, nt);
  const Walk scalars(VEC ? C.len - g.vecs * V : C.len, nt);
  const bool has_col = x < C.n_out;
  const L* taps = staged + g.shift + (has_col ? __ldg(C.start + x) : 0);
  const int count = has_col ? __ldg(C.count + x) : 0;
  const W* hweight = static_cast<const W*>(C.weight) + x * C.w_stride_out;
  const int64_t htap = C.w_stride_tap;
  const W* vweight = static_cast<const W*>(R.weight);
  A acc[kTileRows];  // the vertical sums of this thread's column, in registers for the whole tile
#pragma unroll
  for (int t = 0; t < kTileRows; ++t) acc[t] = Q ? (1 << (kBits - 1)) : 0;
  bool nan = false;
  for (int r0 = rs; r0 < re; r0 += g.chunk_rows) {
    const int rows = min(g.chunk_rows, re - r0);
    nan |= stage<T, MODE, Q, VEC>(p, g, plane, r0, rows, vectors, scalars, staged);
    // the chunk's band of vertical weights, zero outside each output row's taps: the vertical pass becomes a dense
    // (tile rows × chunk rows) update without bounds checks, and adding zeros leaves every sum (and the order of
    // its non-zero terms) as it was
    for (int e = threadIdx.x; e < kTileRows * kChunkRows; e += nt) {
      const int t = e / kChunkRows;
      const int y = r0 + e % kChunkRows;
      W w = 0;
      if (t < tile_rows && y < r0 + rows && y >= bounds[t].x && y < bounds[t].y) {
        w = __ldg(vweight + (oy0 + t) * R.w_stride_out + (y - bounds[t].x) * R.w_stride_tap);
      }
      band[e] = w;
    }
    if (threadIdx.x < 32) {
      const int t = threadIdx.x;
      const bool hit = t < tile_rows && bounds[t].x < r0 + rows && bounds[t].y > r0;
      const unsigned int mask = __ballot_sync(0xffffffffu, hit);
      if (t == 0) *live = mask;
    }
    __syncthreads();

    if (has_col) {
      // horizontal: kChunkRows sums of this column; rows past the chunk re-read its last row (their vertical
      // weights are zero), so the unrolled loops need no guards and each tap's address is a register plus a constant
      int row[kChunkRows];
      A sum[kChunkRows];
#pragma unroll
      for (int r = 0; r < kChunkRows; ++r) {
        row[r] = min(r, rows - 1) * g.pitch;
        sum[r] = Q ? (1 << (kBits - 1)) : 0;
      }
      int k = 0;
      for (; k + 4 <= count; k += 4) {
        A wk[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) wk[j] = __ldg(hweight + (k + j) * htap);
#pragma unroll
        for (int r = 0; r < kChunkRows; ++r) {
#pragma unroll
          for (int j = 0; j < 4; ++j) sum[r] += wk[j] * static_cast<A>(taps[row[r] + k + j]);  // in tap order
        }
      }
      for (; k < count; ++k) {
        const A wk = __ldg(hweight + k * htap);
#pragma unroll
        for (int r = 0; r < kChunkRows; ++r) sum[r] += wk * static_cast<A>(taps[row[r] + k]);
      }
      A h[kChunkRows];  // the horizontal results, rounded and clipped to uint8 with quantize
#pragma unroll
      for (int r = 0; r < kChunkRows; ++r) {
        if constexpr (Q) {
          h[r] = clip8(sum[r]);
        } else {
          h[r] = sum[r];
        }
      }
      const unsigned int mask = *live;
#pragma unroll
      for (int t = 0; t < kTileRows; ++t) {
        if (mask >> t & 1u) {
#pragma unroll
          for (int r = 0; r < kChunkRows; ++r) acc[t] += band[t * kChunkRows + r] * h[r];  // in row order
        }
      }
    }
    __syncthreads();  // before the next chunk overwrites `staged`, `band` and `live`
  }
  if (nan) *p.nan_flag = 1;
  if (!has_col) return;

  const int64_t* st = p.out_stride;
#pragma unroll
  for (int t = 0; t < kTileRows; ++t) {
    if (t < tile_rows) {
      float v;
      if constexpr (Q) {
        v = lut[clip8(acc[t])];
      } else {
        v = __fdiv_rn(__fsub_rn(__fdiv_rn(acc[t], 255.0f), mean), std);
      }
      store(p.out, p.out_dtype, b * st[0] + c * st[1] + (oy0 + t) * st[2] + x * st[3], v);
    }
  }
}

typedef void (*Kernel)(const fg_preprocess_params, const Geometry);

size_t round16(size_t n) { return (n + 15) / 16 * 16; }

int in_size(int dtype) {
  switch (dtype) {
    case FG_U8: return 1;
    case FG_F16:
    case FG_BF16: return 2;
    case FG_F32: return 4;
    default: return 8;
  }
}

// 16-byte loads need every staged row to start 16-byte aligned: an aligned base, contiguous columns and the other
// strides multiples of the vector.
bool can_vectorise(const fg_preprocess_params& p) {
  const int size = in_size(p.in_dtype);
  const int64_t V = 16 / size;
  return reinterpret_cast<uintptr_t>(p.in) % 16 == 0 && p.in_stride[3] == 1 && p.in_stride[0] % V == 0 &&
         p.in_stride[1] % V == 0 && p.in_stride[2] % V == 0;
}

template <bool Q>
Geometry make_geometry(const fg_preprocess_params& p, bool vec, int threads) {
  using L = typename Types<Q>::Level;
  using W = typename Types<Q>::Weight;
  const fg_axis& C = p.cols;
  Geometry g;
  g.tile_rows = p.rows.n_out < kTileRows ? p.rows.n_out : kTileRows;
  g.tiles = (p.rows.n_out + g.tile_rows - 1) / g.tile_rows;
  g.col_tiles = (C.n_out + threads - 1) / threads;
  g.shift = 0;
  g.head = 0;
  g.vecs = 0;
  if (vec) {
    const int V = 16 / in_size(p.in_dtype);
    g.shift = C.lo % V;
    g.head = (V - g.shift) % V;
    if (g.head > C.len) g.head = C.len;
    g.vecs = (C.len - g.head) / V;
  }
  g.pitch = static_cast<int>(round16(static_cast<size_t>(g.shift) + C.len));
  g.chunk_rows = static_cast<int>(kBudget / (static_cast<size_t>(g.pitch) * sizeof(L)));
  g.chunk_rows = g.chunk_rows < 1 ? 1 : (g.chunk_rows > kChunkRows ? kChunkRows : g.chunk_rows);
  g.band_offset = round16(static_cast<size_t>(g.chunk_rows) * g.pitch * sizeof(L));
  g.bounds_offset = g.band_offset + round16(kTileRows * kChunkRows * sizeof(W));
  g.live_offset = g.bounds_offset + round16(kTileRows * 2 * sizeof(int));
  g.lut_offset = g.live_offset + 16;
  g.smem = g.lut_offset + (Q ? 256 * sizeof(float) : 0);
  return g;
}

template <typename T, int MODE, bool Q>
Kernel pick_vec(bool vec) {
  return vec ? preprocess_kernel<T, MODE, Q, true> : preprocess_kernel<T, MODE, Q, false>;
}

template <typename T, bool Q>
Kernel pick_mode(const fg_preprocess_params& p, bool vec) {
  return p.input_mode == FG_RANGE_M1_1 ? pick_vec<T, FG_RANGE_M1_1, Q>(vec) : pick_vec<T, FG_RANGE_0_1, Q>(vec);
}

template <bool Q>
Kernel pick(const fg_preprocess_params& p, bool vec) {
  switch (p.in_dtype) {
    case FG_U8: return pick_vec<uint8_t, FG_LEVELS, Q>(vec);
    case FG_F16: return pick_mode<__half, Q>(p, vec);
    case FG_BF16: return pick_mode<__nv_bfloat16, Q>(p, vec);
    case FG_F32: return pick_mode<float, Q>(p, vec);
    default: return pick_mode<double, Q>(p, vec);
  }
}

template <bool Q>
int launch(const fg_preprocess_params& p) {
  // one thread per crop column (at least 64, so that small crops still stage rows quickly); crops wider than
  // kMaxThreads columns are split into column tiles of equal width
  const int n_cols = p.cols.n_out;
  const int col_tiles = (n_cols + kMaxThreads - 1) / kMaxThreads;
  int threads = ((n_cols + col_tiles - 1) / col_tiles + 31) / 32 * 32;
  if (threads < 64) threads = 64;
  const bool vec = can_vectorise(p);
  const Geometry g = make_geometry<Q>(p, vec, threads);
  const Kernel kernel = pick<Q>(p, vec);
  if (g.smem > 48 * 1024) {  // very wide rows: opt in to more shared memory (an error past the device's limit)
    const cudaError_t err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(g.smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const int64_t blocks = static_cast<int64_t>(p.batch) * 3 * g.tiles * g.col_tiles;
  if (blocks > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
  kernel<<<static_cast<unsigned int>(blocks), threads, g.smem, static_cast<cudaStream_t>(p.stream)>>>(p, g);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int fg_preprocess_cuda(const fg_preprocess_params* p) {
  return p->quantize ? launch<true>(*p) : launch<false>(*p);
}

extern "C" const char* fg_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
