// Instance Mask Projection (IMP): operator schema and CPU kernels.
//
// IMP paper (../shared/papers/imp-panoptic-fpn-imp.txt), Sec. 3.1 and Algorithm 1: every cell of every instance
// mask, scaled by its detection score, is projected onto the canvas plane of its class over the pixels the cell
// reaches inside the detection box; where projections overlap the canvas keeps the maximum. The exact rules (pixel
// centres, ties, invalid detections) are documented in panoptic_ros/ops/imp.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "imp.h"
#include "imp_geometry.h"

namespace panoptic_ros {
namespace imp {
namespace {

template <typename scalar_t, bool kWithWinner>
void forward_cpu_kernel(const at::Tensor& masks, const at::Tensor& scores, const at::Tensor& classes,
                        const at::Tensor& boxes, float box_scale, bool overlap, at::Tensor& canvas,
                        at::Tensor& winner) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_inst = masks.size(0), mask_h = masks.size(1), mask_w = masks.size(2);
  const int64_t n_cls = canvas.size(0), height = canvas.size(1), width = canvas.size(2);
  const scalar_t* m = masks.const_data_ptr<scalar_t>();
  const scalar_t* p = scores.const_data_ptr<scalar_t>();
  const int64_t* cls = classes.const_data_ptr<int64_t>();
  const float* b = boxes.const_data_ptr<float>();
  acc_t* out = canvas.mutable_data_ptr<acc_t>();
  int64_t* win = kWithWinner ? winner.mutable_data_ptr<int64_t>() : nullptr;
  const acc_t none = -std::numeric_limits<acc_t>::infinity();

  // Class planes are disjoint, so each thread owns a range of classes and walks the detections in order:
  // the strict '>' keeps the earliest detection on ties, as the CUDA kernel's atomicMin on the index does.
  at::parallel_for(0, n_cls, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<int64_t> col_lo, col_hi, row_arg;
    std::vector<acc_t> row_max;
    for (int64_t n = 0; n < n_inst; ++n) {
      const int64_t c = cls[n];
      Placement g;
      if (c < c_begin || c >= c_end ||
          !place_box(b + 4 * n, box_scale, mask_h, mask_w, height, width, overlap, &g)) {
        continue;
      }
      const int64_t box_w = g.c1 - g.c0;
      col_lo.resize(box_w);
      col_hi.resize(box_w);
      for (int64_t j = 0; j < box_w; ++j) {
        col_lo[j] = low_cell(g.c0 + j, g.x_lo, g.x_len, mask_w, overlap);
        col_hi[j] = high_cell(g.c0 + j, g.x_lo, g.x_len, mask_w, overlap);
      }
      // The maximum over the cells a pixel reads is separable: first over its cell columns in every mask row
      // the box reads (row_max, the first column on ties), then over its cell rows (the first row on ties). The
      // winner is the first cell in row-major order that holds the maximum, as in the CUDA kernel.
      const int64_t u_first = low_cell(g.r0, g.y_lo, g.y_len, mask_h, overlap);
      const int64_t u_last = high_cell(g.r1 - 1, g.y_lo, g.y_len, mask_h, overlap);
      const acc_t score = static_cast<acc_t>(p[n]);
      row_max.assign((u_last - u_first + 1) * box_w, none);
      row_arg.assign((u_last - u_first + 1) * box_w, -1);
      for (int64_t u = u_first; u <= u_last; ++u) {
        const scalar_t* mask_row = m + (n * mask_h + u) * mask_w;
        acc_t* best = row_max.data() + (u - u_first) * box_w;
        int64_t* arg = row_arg.data() + (u - u_first) * box_w;
        for (int64_t j = 0; j < box_w; ++j) {
          for (int64_t v = col_lo[j]; v <= col_hi[j]; ++v) {
            const acc_t value = static_cast<acc_t>(mask_row[v]) * score;
            if (value > best[j]) {  // NaN never wins
              best[j] = value;
              arg[j] = v;
            }
          }
        }
      }
      for (int64_t i = g.r0; i < g.r1; ++i) {
        const int64_t u_lo = low_cell(i, g.y_lo, g.y_len, mask_h, overlap);
        const int64_t u_hi = high_cell(i, g.y_lo, g.y_len, mask_h, overlap);
        acc_t* dst = out + (c * height + i) * width + g.c0;
        int64_t* dst_win = kWithWinner ? win + (c * height + i) * width + g.c0 : nullptr;
        for (int64_t j = 0; j < box_w; ++j) {
          acc_t value = none;
          int64_t cell = -1;
          for (int64_t u = u_lo; u <= u_hi; ++u) {
            const int64_t k = (u - u_first) * box_w + j;
            if (row_max[k] > value) {
              value = row_max[k];
              cell = u * mask_w + row_arg[k];
            }
          }
          if (value > dst[j]) {  // the canvas starts at 0: negative values never land
            dst[j] = value;
            if (kWithWinner) dst_win[j] = n * mask_h * mask_w + cell;
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_cpu_kernel(const at::Tensor& grad_canvas, const at::Tensor& winner, const at::Tensor& masks,
                         const at::Tensor& scores, const at::Tensor& classes, const at::Tensor& boxes,
                         float box_scale, bool overlap, at::Tensor& grad_masks, at::Tensor& grad_scores) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_inst = masks.size(0), mask_h = masks.size(1), mask_w = masks.size(2);
  const int64_t n_cls = winner.size(0), height = winner.size(1), width = winner.size(2);
  const int64_t cells = mask_h * mask_w;
  const scalar_t* g_out = grad_canvas.const_data_ptr<scalar_t>();
  const int64_t* win = winner.const_data_ptr<int64_t>();
  const scalar_t* m = masks.const_data_ptr<scalar_t>();
  const scalar_t* p = scores.const_data_ptr<scalar_t>();
  const int64_t* cls = classes.const_data_ptr<int64_t>();
  const float* b = boxes.const_data_ptr<float>();
  scalar_t* gm = grad_masks.mutable_data_ptr<scalar_t>();
  scalar_t* gp = grad_scores.mutable_data_ptr<scalar_t>();

  // Each detection gathers the gradient of the pixels it won, inside its own placement (no scatter, so threads
  // never collide). Per cell, pixels are summed in row-major order, the same order the CUDA kernel uses, so both
  // give identical results.
  at::parallel_for(0, n_inst, 1, [&](int64_t n_begin, int64_t n_end) {
    std::vector<acc_t> cell_sum(cells);
    for (int64_t n = n_begin; n < n_end; ++n) {
      std::fill(cell_sum.begin(), cell_sum.end(), acc_t(0));
      const int64_t c = cls[n];
      Placement g;
      if (c >= 0 && c < n_cls && place_box(b + 4 * n, box_scale, mask_h, mask_w, height, width, overlap, &g)) {
        for (int64_t i = g.r0; i < g.r1; ++i) {
          const int64_t pix_base = (c * height + i) * width;
          for (int64_t j = g.c0; j < g.c1; ++j) {
            const int64_t cell = win[pix_base + j] - n * cells;
            if (cell >= 0 && cell < cells) cell_sum[cell] += static_cast<acc_t>(g_out[pix_base + j]);
          }
        }
      }
      const acc_t score = static_cast<acc_t>(p[n]);
      acc_t score_grad = 0;
      for (int64_t k = 0; k < cells; ++k) {
        gm[n * cells + k] = static_cast<scalar_t>(cell_sum[k] * score);
        score_grad += cell_sum[k] * static_cast<acc_t>(m[n * cells + k]);
      }
      gp[n] = static_cast<scalar_t>(score_grad);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> imp_forward_cpu(const at::Tensor& masks_in, const at::Tensor& scores_in,
                                                   const at::Tensor& classes_in, const at::Tensor& boxes_in,
                                                   int64_t num_classes, int64_t height, int64_t width,
                                                   double box_scale, bool overlap, bool with_winner) {
  check_forward_args(masks_in, scores_in, classes_in, boxes_in, num_classes, height, width);
  const Inputs in = kernel_inputs(masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  at::Tensor canvas = empty_canvas(masks, num_classes, height, width);
  at::Tensor winner = winner_like(canvas, with_winner);
  if (masks.numel() > 0 && canvas.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_forward_cpu", [&] {
      const float scale = static_cast<float>(box_scale);
      if (with_winner) {
        forward_cpu_kernel<scalar_t, true>(masks, scores, classes, boxes, scale, overlap, canvas, winner);
      } else {
        forward_cpu_kernel<scalar_t, false>(masks, scores, classes, boxes, scale, overlap, canvas, winner);
      }
    });
  }
  return {canvas.to(masks.scalar_type()), winner};
}

std::tuple<at::Tensor, at::Tensor> imp_backward_cpu(const at::Tensor& grad_canvas_in, const at::Tensor& winner_in,
                                                    const at::Tensor& masks_in, const at::Tensor& scores_in,
                                                    const at::Tensor& classes_in, const at::Tensor& boxes_in,
                                                    double box_scale, bool overlap) {
  const BackwardInputs in = backward_inputs(grad_canvas_in, winner_in, masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  const at::Tensor &grad_canvas = in.grad_canvas, &winner = in.winner;
  at::Tensor grad_masks = at::zeros_like(masks), grad_scores = at::zeros_like(scores);
  if (masks.numel() > 0 && winner.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_backward_cpu", [&] {
      backward_cpu_kernel<scalar_t>(grad_canvas, winner, masks, scores, classes, boxes,
                                    static_cast<float>(box_scale), overlap, grad_masks, grad_scores);
    });
  }
  return {grad_masks, grad_scores};
}

}  // namespace

TORCH_LIBRARY(panoptic_ros, m) {
  // Returns (canvas [C, H, W] in the dtype of masks, winner). overlap selects the sampling rule (true: every cell
  // overlapping a pixel, Algorithm 1; false: the cell under the pixel centre). With with_winner, winner is
  // [C, H, W] int64: the flat index n * S_h * S_w + cell of the mask cell that set each pixel, -1 where none did;
  // it routes the gradient in imp_backward. Without (inference), winner is empty and is neither allocated nor
  // computed.
  m.def(
      "imp_forward(Tensor masks, Tensor scores, Tensor classes, Tensor boxes, int num_classes, int height, "
      "int width, float box_scale, bool overlap, bool with_winner) -> (Tensor, Tensor)");
  m.def(
      "imp_backward(Tensor grad_canvas, Tensor winner, Tensor masks, Tensor scores, Tensor classes, Tensor boxes, "
      "float box_scale, bool overlap) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(panoptic_ros, CPU, m) {
  m.impl("imp_forward", &imp_forward_cpu);
  m.impl("imp_backward", &imp_backward_cpu);
}

}  // namespace imp
}  // namespace panoptic_ros

// Importing panoptic_ros.ops._C runs the static registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
