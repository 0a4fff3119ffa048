// fastgrpo._C: the one translation unit that includes torch. It checks the tensors, fills fg_preprocess_params
// and calls the CPU or CUDA launcher (preprocess.h). Geometry, weight tables and argument validation for users
// live in fastgrpo/ops/preprocess.py; the checks here guard the raw pointers.
#include <torch/extension.h>

#ifdef FASTGRPO_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <vector>

#include "preprocess.h"

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kByte: return FG_U8;
    case at::kHalf: return FG_F16;
    case at::kBFloat16: return FG_BF16;
    case at::kFloat: return FG_F32;
    case at::kDouble: return FG_F64;
    default: TORCH_CHECK_VALUE(false, "fastgrpo._C.clip_preprocess: unsupported dtype ", t);
  }
  return -1;
}

fg_axis make_axis(const char* name, const at::Tensor& start, const at::Tensor& count, const at::Tensor& weight,
                  int64_t lo, int64_t len, bool quantize, const at::Device& device) {
  const int64_t n_out = start.numel();
  TORCH_CHECK_VALUE(start.scalar_type() == at::kInt && count.scalar_type() == at::kInt, name,
                    " start/count must be int32");
  TORCH_CHECK_VALUE(start.is_contiguous() && count.is_contiguous() && count.numel() == n_out, name,
                    " start/count must be contiguous and of equal length");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == n_out && weight.size(1) >= 1, name,
                    " weight must be (outputs, taps)");
  TORCH_CHECK_VALUE(weight.scalar_type() == (quantize ? at::kInt : at::kFloat), name,
                    " weight must be int32 with quantize, float32 without");
  TORCH_CHECK_VALUE(start.device() == device && count.device() == device && weight.device() == device, name,
                    " tables must be on the images' device");
  TORCH_CHECK_VALUE(n_out >= 1 && lo >= 0 && len >= 1, name, " table is empty");
  fg_axis a;
  a.start = start.data_ptr<int32_t>();
  a.count = count.data_ptr<int32_t>();
  a.weight = weight.data_ptr();
  a.w_stride_out = weight.stride(0);
  a.w_stride_tap = weight.stride(1);
  a.n_out = static_cast<int32_t>(n_out);
  a.lo = static_cast<int32_t>(lo);
  a.len = static_cast<int32_t>(len);
  return a;
}

// images (B, 3, H, W) -> out (B, 3, crop_h, crop_w), written in place; nan_flag (1,) int32 set to 1 when a pixel
// read is NaN. Tables: see fastgrpo.reference.preprocess.ResizeTable.tensors. input_mode: FG_LEVELS (uint8) or
// FG_RANGE_0_1 / FG_RANGE_M1_1 (floating point).
void clip_preprocess(const at::Tensor& images, at::Tensor& out, at::Tensor& nan_flag, const at::Tensor& row_start,
                     const at::Tensor& row_count, const at::Tensor& row_weight, int64_t row_lo, int64_t row_len,
                     const at::Tensor& col_start, const at::Tensor& col_count, const at::Tensor& col_weight,
                     int64_t col_lo, int64_t col_len, std::vector<double> mean, std::vector<double> std,
                     int64_t input_mode, bool quantize) {
  TORCH_CHECK_VALUE(images.dim() == 4 && images.size(1) == 3, "images must be (B, 3, H, W), got ", images.sizes());
  TORCH_CHECK_VALUE(out.dim() == 4 && out.size(0) == images.size(0) && out.size(1) == 3,
                    "out must be (B, 3, h, w), got ", out.sizes());
  TORCH_CHECK_VALUE(out.size(2) == row_start.numel() && out.size(3) == col_start.numel(),
                    "out must be (B, 3, row outputs, column outputs)");
  TORCH_CHECK_VALUE(row_lo + row_len <= images.size(2) && col_lo + col_len <= images.size(3),
                    "the tables' window exceeds the image");
  TORCH_CHECK_VALUE(mean.size() == 3 && std.size() == 3, "mean and std need 3 values");
  const int in_dtype = dtype_code(images.scalar_type());
  const int out_dtype = dtype_code(out.scalar_type());
  TORCH_CHECK_VALUE(out_dtype == FG_F32 || out_dtype == FG_F16 || out_dtype == FG_BF16,
                    "out must be float32, float16 or bfloat16");
  TORCH_CHECK_VALUE((in_dtype == FG_U8) == (input_mode == FG_LEVELS) &&
                        input_mode >= FG_LEVELS && input_mode <= FG_RANGE_M1_1,
                    "input_mode must be FG_LEVELS for uint8 images and a range for floating point ones");
  const at::Device device = images.device();
  TORCH_CHECK_VALUE(out.device() == device && nan_flag.device() == device, "out and nan_flag must be on ", device);
  TORCH_CHECK_VALUE(nan_flag.scalar_type() == at::kInt && nan_flag.numel() == 1, "nan_flag must be one int32");
  TORCH_CHECK_VALUE(images.numel() > 0, "images is empty");

  fg_preprocess_params p;
  p.in = images.data_ptr();
  p.in_dtype = in_dtype;
  p.out = out.data_ptr();
  p.out_dtype = out_dtype;
  for (int d = 0; d < 4; ++d) {
    p.in_stride[d] = images.stride(d);
    p.out_stride[d] = out.stride(d);
  }
  p.batch = static_cast<int32_t>(images.size(0));
  p.rows = make_axis("row", row_start, row_count, row_weight, row_lo, row_len, quantize, device);
  p.cols = make_axis("column", col_start, col_count, col_weight, col_lo, col_len, quantize, device);
  p.input_mode = static_cast<int32_t>(input_mode);
  p.quantize = quantize ? 1 : 0;
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = static_cast<float>(mean[c]);
    p.std[c] = static_cast<float>(std[c]);
  }
  p.nan_flag = nan_flag.data_ptr<int32_t>();
  p.stream = nullptr;

  if (device.is_cpu()) {
    fg_preprocess_cpu(&p);
    return;
  }
#ifdef FASTGRPO_WITH_CUDA
  TORCH_CHECK_VALUE(device.is_cuda(), "images must be on CPU or CUDA, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  p.stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const int err = fg_preprocess_cuda(&p);
  TORCH_CHECK(err == 0, "fastgrpo._C.clip_preprocess: CUDA error: ", fg_cuda_error_string(err));
#else
  TORCH_CHECK_VALUE(false, "fastgrpo._C was built without CUDA; images are on ", device);
#endif
}

bool has_cuda() {
#ifdef FASTGRPO_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgrpo C++/CUDA kernels (CLIP-style image preprocessing); use fastgrpo.ops.clip_preprocess";
  m.def("clip_preprocess", &clip_preprocess, "CLIP preprocessing into a preallocated output (see bindings.cpp)");
  m.def("has_cuda", &has_cuda, "whether the CUDA kernels were compiled in");
}
