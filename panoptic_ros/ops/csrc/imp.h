// Instance Mask Projection (IMP): argument checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

namespace panoptic_ros {
namespace imp {

inline void check_forward_args(const at::Tensor& masks, const at::Tensor& scores, const at::Tensor& classes,
                               const at::Tensor& boxes, int64_t num_classes, int64_t height, int64_t width) {
  TORCH_CHECK(masks.dim() == 3, "imp: masks must be [N, S_h, S_w], got shape ", masks.sizes());
  const int64_t n = masks.size(0);
  TORCH_CHECK(at::isFloatingType(masks.scalar_type()), "imp: masks must be floating point, got ",
              masks.scalar_type());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n, "imp: scores must be [N] with N = ", n, ", got shape ",
              scores.sizes());
  TORCH_CHECK(scores.scalar_type() == masks.scalar_type(), "imp: scores dtype ", scores.scalar_type(),
              " differs from masks dtype ", masks.scalar_type());
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) == n, "imp: classes must be [N] with N = ", n,
              ", got shape ", classes.sizes());
  TORCH_CHECK(classes.scalar_type() == at::kLong, "imp: classes must be int64, got ", classes.scalar_type());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == n && boxes.size(1) == 4, "imp: boxes must be [N, 4] with N = ",
              n, ", got shape ", boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "imp: boxes must be floating point, got ",
              boxes.scalar_type());
  TORCH_CHECK(num_classes >= 0 && height >= 0 && width >= 0, "imp: canvas size must be non-negative, got (",
              num_classes, ", ", height, ", ", width, ")");
  for (const at::Tensor* t : {&scores, &classes, &boxes}) {
    TORCH_CHECK(t->device() == masks.device(), "imp: all inputs must be on one device; masks on ", masks.device(),
                ", another input on ", t->device());
  }
}

// Inputs as the kernels read them: contiguous, boxes in float32 (the geometry's precision).
struct Inputs {
  at::Tensor masks, scores, classes, boxes;
};

inline Inputs kernel_inputs(const at::Tensor& masks, const at::Tensor& scores, const at::Tensor& classes,
                            const at::Tensor& boxes) {
  return {masks.contiguous(), scores.contiguous(), classes.contiguous(), boxes.to(at::kFloat).contiguous()};
}

// The canvas accumulates in the op-math type (float for half types) and is rounded once at the end.
inline at::Tensor empty_canvas(const at::Tensor& masks, int64_t num_classes, int64_t height, int64_t width) {
  return at::zeros({num_classes, height, width}, masks.options().dtype(at::toOpMathType(masks.scalar_type())));
}

// The winner-index output of imp_forward: -1 everywhere when requested, else an empty tensor.
inline at::Tensor winner_like(const at::Tensor& canvas, bool with_winner) {
  const auto options = canvas.options().dtype(at::kLong);
  return with_winner ? at::full(canvas.sizes(), -1, options) : at::empty({0}, options);
}

inline void check_backward_args(const at::Tensor& grad_canvas, const at::Tensor& winner, const at::Tensor& masks) {
  TORCH_CHECK(winner.scalar_type() == at::kLong, "imp: winner must be int64");
  TORCH_CHECK(winner.numel() > 0 || grad_canvas.numel() == 0,
              "imp: backward needs the winner index; call imp_forward with with_winner=True");
  TORCH_CHECK(grad_canvas.dim() == 3 && grad_canvas.sizes() == winner.sizes(), "imp: grad_canvas shape ",
              grad_canvas.sizes(), " must equal the canvas shape ", winner.sizes());
  TORCH_CHECK(grad_canvas.device() == masks.device() && winner.device() == masks.device(),
              "imp: backward inputs must be on the device of masks");
}

// Backward inputs as the kernels read them: grad_canvas in the dtype of masks, all contiguous.
struct BackwardInputs : Inputs {
  at::Tensor grad_canvas, winner;
};

inline BackwardInputs backward_inputs(const at::Tensor& grad_canvas, const at::Tensor& winner, const at::Tensor& masks,
                                      const at::Tensor& scores, const at::Tensor& classes, const at::Tensor& boxes) {
  check_backward_args(grad_canvas, winner, masks);
  const Inputs in = kernel_inputs(masks, scores, classes, boxes);
  return {in, grad_canvas.to(masks.scalar_type()).contiguous(), winner.contiguous()};
}

}  // namespace imp
}  // namespace panoptic_ros
