// Instance Mask Projection (IMP): CUDA kernels (IMP paper, Algorithm 1).
//
// Forward runs over (detection, box pixel) in one pass, or two when the winner index is wanted. Each thread takes
// the maximum of score * mask over the cells its pixel reads (one under the centre rule, every overlapping one under
// the overlap rule), the first in row-major order on ties. The first pass writes it with an atomicMax on the float's
// bits (all values written are > 0, and positive IEEE floats order like their bit patterns); the second records,
// with an atomicMin, the smallest flat cell index that reached the maximum. That is the earliest detection, the same
// tie rule as the sequential CPU kernel, so both produce identical canvases and winners. Backward gathers per mask cell (no float atomics): deterministic and bit-identical to the CPU kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../imp.h"
#include "../imp_geometry.h"

namespace panoptic_ros {
namespace imp {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void atomic_max_positive(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}

__device__ __forceinline__ void atomic_max_positive(double* address, double value) {
  atomicMax(reinterpret_cast<unsigned long long*>(address),
            static_cast<unsigned long long>(__double_as_longlong(value)));
}

// Loads the placement of detection n into shared memory; returns false for detections that project nothing.
__device__ __forceinline__ bool load_placement(const int64_t* classes, const float* boxes, float box_scale,
                                               int64_t n, int64_t n_cls, int64_t mask_h, int64_t mask_w,
                                               int64_t height, int64_t width, bool overlap, Placement* shared,
                                               bool* valid) {
  if (threadIdx.x == 0) {
    const int64_t c = classes[n];
    *valid = c >= 0 && c < n_cls &&
             place_box(boxes + 4 * n, box_scale, mask_h, mask_w, height, width, overlap, shared);
  }
  __syncthreads();
  return *valid;
}

// grid = (N, chunks): blocks of one detection share its box pixels. kRecordWinner selects the second pass.
template <typename scalar_t, typename acc_t, bool kRecordWinner>
__global__ void imp_forward_kernel(const scalar_t* __restrict__ masks, const scalar_t* __restrict__ scores,
                                   const int64_t* __restrict__ classes, const float* __restrict__ boxes,
                                   float box_scale, bool overlap, int64_t mask_h, int64_t mask_w, int64_t n_cls,
                                   int64_t height, int64_t width, acc_t* __restrict__ canvas,
                                   int64_t* __restrict__ winner) {
  __shared__ Placement g;
  __shared__ bool valid;
  const int64_t n = blockIdx.x;
  if (!load_placement(classes, boxes, box_scale, n, n_cls, mask_h, mask_w, height, width, overlap, &g, &valid)) {
    return;
  }
  const int64_t c = classes[n];
  const int64_t box_w = g.c1 - g.c0;
  const int64_t pixels = (g.r1 - g.r0) * box_w;
  const acc_t score = static_cast<acc_t>(scores[n]);
  for (int64_t k = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; k < pixels;
       k += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t i = g.r0 + k / box_w;
    const int64_t j = g.c0 + k % box_w;
    const int64_t u_hi = high_cell(i, g.y_lo, g.y_len, mask_h, overlap);
    const int64_t v_lo = low_cell(j, g.x_lo, g.x_len, mask_w, overlap);
    const int64_t v_hi = high_cell(j, g.x_lo, g.x_len, mask_w, overlap);
    acc_t v = 0;  // negative and NaN values never beat the empty canvas (0)
    int64_t cell = -1;
    for (int64_t u = low_cell(i, g.y_lo, g.y_len, mask_h, overlap); u <= u_hi; ++u) {
      for (int64_t x = v_lo; x <= v_hi; ++x) {
        const int64_t flat = (n * mask_h + u) * mask_w + x;
        const acc_t value = static_cast<acc_t>(masks[flat]) * score;
        if (value > v) {
          v = value;
          cell = flat;
        }
      }
    }
    if (cell < 0) continue;
    const int64_t pix = (c * height + i) * width + j;
    if (kRecordWinner) {
      if (v == canvas[pix]) {
        // winner starts at -1, the largest value as unsigned, so any cell index replaces it.
        atomicMin(reinterpret_cast<unsigned long long*>(winner + pix), static_cast<unsigned long long>(cell));
      }
    } else {
      atomic_max_positive(canvas + pix, v);
    }
  }
}

// grid = N blocks; thread t sums the gradient of the pixels won by cells t, t + blockDim, ... of detection n.
template <typename scalar_t, typename acc_t>
__global__ void imp_backward_kernel(const scalar_t* __restrict__ grad_canvas, const int64_t* __restrict__ winner,
                                    const scalar_t* __restrict__ masks, const scalar_t* __restrict__ scores,
                                    const int64_t* __restrict__ classes, const float* __restrict__ boxes,
                                    float box_scale, bool overlap, int64_t mask_h, int64_t mask_w, int64_t n_cls,
                                    int64_t height, int64_t width, scalar_t* __restrict__ grad_masks,
                                    acc_t* __restrict__ partial, scalar_t* __restrict__ grad_scores) {
  __shared__ Placement g;
  __shared__ bool valid;
  const int64_t n = blockIdx.x;
  const int64_t cells = mask_h * mask_w;
  const bool placed =
      load_placement(classes, boxes, box_scale, n, n_cls, mask_h, mask_w, height, width, overlap, &g, &valid);
  const acc_t score = static_cast<acc_t>(scores[n]);
  for (int64_t k = threadIdx.x; k < cells; k += blockDim.x) {
    acc_t sum = 0;
    if (placed) {
      const int64_t c = classes[n];
      const int64_t u = k / mask_w, v = k % mask_w;
      // The pixels that read cell (u, v); always inside the placement's [r0, r1) x [c0, c1).
      const int64_t r0 = first_pixel<true>(u, g.y_lo, g.y_len, mask_h, height, overlap);
      const int64_t r1 = first_pixel<false>(u + 1, g.y_lo, g.y_len, mask_h, height, overlap);
      const int64_t c0 = first_pixel<true>(v, g.x_lo, g.x_len, mask_w, width, overlap);
      const int64_t c1 = first_pixel<false>(v + 1, g.x_lo, g.x_len, mask_w, width, overlap);
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t pix_base = (c * height + i) * width;
        for (int64_t j = c0; j < c1; ++j) {
          if (winner[pix_base + j] == n * cells + k) sum += static_cast<acc_t>(grad_canvas[pix_base + j]);
        }
      }
    }
    grad_masks[n * cells + k] = static_cast<scalar_t>(sum * score);
    partial[n * cells + k] = sum * static_cast<acc_t>(masks[n * cells + k]);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // Sequential, in cell order, as on the CPU: deterministic and identical across devices.
    acc_t total = 0;
    for (int64_t k = 0; k < cells; ++k) total += partial[n * cells + k];
    grad_scores[n] = static_cast<scalar_t>(total);
  }
}

int chunks_for(int64_t height, int64_t width) {
  // Enough blocks per detection to cover a large box in a few strides; small boxes leave extra blocks idle.
  const int64_t want = (height * width + kThreads * 16 - 1) / (kThreads * 16);
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(want, 1), 32));
}

std::tuple<at::Tensor, at::Tensor> imp_forward_cuda(const at::Tensor& masks_in, const at::Tensor& scores_in,
                                                    const at::Tensor& classes_in, const at::Tensor& boxes_in,
                                                    int64_t num_classes, int64_t height, int64_t width,
                                                    double box_scale, bool overlap, bool with_winner) {
  check_forward_args(masks_in, scores_in, classes_in, boxes_in, num_classes, height, width);
  const c10::cuda::CUDAGuard guard(masks_in.device());
  const Inputs in = kernel_inputs(masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  at::Tensor canvas = empty_canvas(masks, num_classes, height, width);
  at::Tensor winner = winner_like(canvas, with_winner);
  const int64_t n_inst = masks.size(0);
  if (n_inst > 0 && masks.numel() > 0 && canvas.numel() > 0) {
    const dim3 grid(static_cast<unsigned>(n_inst), chunks_for(height, width));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* m = masks.const_data_ptr<scalar_t>();
      const scalar_t* p = scores.const_data_ptr<scalar_t>();
      const int64_t* cls = classes.const_data_ptr<int64_t>();
      const float* b = boxes.const_data_ptr<float>();
      acc_t* out = canvas.mutable_data_ptr<acc_t>();
      int64_t* win = with_winner ? winner.mutable_data_ptr<int64_t>() : nullptr;
      const float scale = static_cast<float>(box_scale);
      imp_forward_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
          m, p, cls, b, scale, overlap, masks.size(1), masks.size(2), num_classes, height, width, out, win);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (with_winner) {
        imp_forward_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(
            m, p, cls, b, scale, overlap, masks.size(1), masks.size(2), num_classes, height, width, out, win);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {canvas.to(masks.scalar_type()), winner};
}

std::tuple<at::Tensor, at::Tensor> imp_backward_cuda(const at::Tensor& grad_canvas_in, const at::Tensor& winner_in,
                                                     const at::Tensor& masks_in, const at::Tensor& scores_in,
                                                     const at::Tensor& classes_in, const at::Tensor& boxes_in,
                                                     double box_scale, bool overlap) {
  const c10::cuda::CUDAGuard guard(masks_in.device());
  const BackwardInputs in = backward_inputs(grad_canvas_in, winner_in, masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  const at::Tensor &grad_canvas = in.grad_canvas, &winner = in.winner;
  at::Tensor grad_masks = at::zeros_like(masks), grad_scores = at::zeros_like(scores);
  const int64_t n_inst = masks.size(0);
  if (n_inst > 0 && masks.numel() > 0) {
    const auto acc_type = at::toOpMathType(masks.scalar_type());
    at::Tensor partial = at::empty({n_inst, masks.size(1) * masks.size(2)}, masks.options().dtype(acc_type));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      imp_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(n_inst), kThreads, 0, stream>>>(
          grad_canvas.const_data_ptr<scalar_t>(), winner.const_data_ptr<int64_t>(), masks.const_data_ptr<scalar_t>(),
          scores.const_data_ptr<scalar_t>(), classes.const_data_ptr<int64_t>(), boxes.const_data_ptr<float>(),
          static_cast<float>(box_scale), overlap, masks.size(1), masks.size(2), winner.size(0), winner.size(1),
          winner.size(2), grad_masks.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
          grad_scores.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_masks, grad_scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(panoptic_ros, CUDA, m) {
  m.impl("imp_forward", &imp_forward_cuda);
  m.impl("imp_backward", &imp_backward_cuda);
}

}  // namespace imp
}  // namespace panoptic_ros
