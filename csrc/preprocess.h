/* CLIP preprocessing kernels of fastgrpo._C: plain C interface, no torch types.
 *
 * One call maps images (B, 3, H, W), any dtype code and strides, to (B, 3, crop_h, crop_w): pixels -> levels
 * (0..255, rounded when quantize) -> horizontal pass -> vertical pass -> (v/255 - mean)/std. The per-axis weight
 * tables come precomputed (fastgrpo.reference.preprocess.resize_table): for each output of the crop, its first
 * tap (relative to the axis window [lo, lo + len) that the crop reads), its tap count, and its weights:
 * int32 in units of 2^-22 with quantize (Pillow's fixed point, each pass rounds and clips to uint8), float32 without.
 * The CPU kernel lives in preprocess_cpu.cpp, the CUDA one in preprocess_cuda.cu (compiled without torch headers);
 * bindings.cpp checks the tensors and fills this struct.
 */
#pragma once
#include <stdint.h>

enum { FG_U8 = 0, FG_F16 = 1, FG_BF16 = 2, FG_F32 = 3, FG_F64 = 4 };    /* pixel / output dtypes */
enum { FG_LEVELS = 0, FG_RANGE_0_1 = 1, FG_RANGE_M1_1 = 2 };            /* uint8, [0, 1], [-1, 1] */

typedef struct {
  const int32_t* start;   /* (n_out,) first tap, relative to lo */
  const int32_t* count;   /* (n_out,) taps */
  const void* weight;     /* weight[o * w_stride_out + k * w_stride_tap], k < count[o] */
  int64_t w_stride_out, w_stride_tap;
  int32_t n_out;          /* outputs of this axis = the crop */
  int32_t lo, len;        /* input window of the axis */
} fg_axis;

typedef struct {
  const void* in;
  int32_t in_dtype;
  int64_t in_stride[4];   /* elements, (b, c, y, x) */
  int32_t batch;
  void* out;
  int32_t out_dtype;      /* FG_F32, FG_F16 or FG_BF16 */
  int64_t out_stride[4];
  fg_axis rows, cols;
  int32_t input_mode;     /* FG_LEVELS for uint8 */
  int32_t quantize;
  float mean[3], std[3];
  int32_t* nan_flag;      /* set to 1 when a pixel read is NaN (it then counts as 0) */
  void* stream;           /* CUDA: cudaStream_t */
} fg_preprocess_params;

#ifdef __cplusplus
extern "C" {
#endif

void fg_preprocess_cpu(const fg_preprocess_params* p);
/* Returns 0 or a cudaError_t; launches on p->stream and does not synchronise. */
int fg_preprocess_cuda(const fg_preprocess_params* p);
const char* fg_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif
