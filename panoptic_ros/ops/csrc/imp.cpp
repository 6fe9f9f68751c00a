// Instance Mask Projection (IMP): operator schema and CPU kernels.
//
// IMP paper (../shared/papers/imp-panoptic-fpn-imp.txt), Sec. 3.1 and Algorithm 1: every cell of every instance
// mask, scaled by its detection score, is projected onto the canvas plane of its class over the pixels the cell
// covers inside the detection box; where projections overlap the canvas keeps the maximum. The exact rules (pixel
// centres, ties, invalid detections) are documented in panoptic_ros/ops/imp.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <vector>

#include "imp.h"
#include "imp_geometry.h"

namespace panoptic_ros {
namespace imp {
namespace {

template <typename scalar_t, bool kWithWinner>
void forward_cpu_kernel(const at::Tensor& masks, const at::Tensor& scores, const at::Tensor& classes,
                        const at::Tensor& boxes, float box_scale, at::Tensor& canvas, at::Tensor& winner) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_inst = masks.size(0), mask_h = masks.size(1), mask_w = masks.size(2);
  const int64_t n_cls = canvas.size(0), height = canvas.size(1), width = canvas.size(2);
  const scalar_t* m = masks.const_data_ptr<scalar_t>();
  const scalar_t* p = scores.const_data_ptr<scalar_t>();
  const int64_t* cls = classes.const_data_ptr<int64_t>();
  const float* b = boxes.const_data_ptr<float>();
  acc_t* out = canvas.mutable_data_ptr<acc_t>();
  int64_t* win = kWithWinner ? winner.mutable_data_ptr<int64_t>() : nullptr;

  // Class planes are disjoint, so each thread owns a range of classes and walks the detections in order:
  // the strict '>' keeps the earliest detection on ties, as the CUDA kernel's atomicMin on the index does.
  at::parallel_for(0, n_cls, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<int64_t> col_cell, row_cells;
    std::vector<acc_t> row_values;
    for (int64_t n = 0; n < n_inst; ++n) {
      const int64_t c = cls[n];
      Placement g;
      if (c < c_begin || c >= c_end || !place_box(b + 4 * n, box_scale, mask_h, mask_w, height, width, &g)) {
        continue;
      }
      const int64_t box_w = g.c1 - g.c0;
      col_cell.resize(box_w);
      row_cells.resize(box_w);
      row_values.resize(box_w);
      for (int64_t j = 0; j < box_w; ++j) col_cell[j] = cell_of(g.c0 + j, g.x_lo, g.x_len, mask_w);
      const acc_t score = static_cast<acc_t>(p[n]);
      int64_t last_u = -1;
      for (int64_t i = g.r0; i < g.r1; ++i) {
        const int64_t u = cell_of(i, g.y_lo, g.y_len, mask_h);
        if (u != last_u) {  // canvas rows inside one mask row see the same projected values
          const int64_t row_base = (n * mask_h + u) * mask_w;
          for (int64_t j = 0; j < box_w; ++j) {
            row_cells[j] = row_base + col_cell[j];
            row_values[j] = static_cast<acc_t>(m[row_cells[j]]) * score;
          }
          last_u = u;
        }
        acc_t* dst = out + (c * height + i) * width + g.c0;
        if (kWithWinner) {
          int64_t* dst_win = win + (c * height + i) * width + g.c0;
          for (int64_t j = 0; j < box_w; ++j) {
            if (row_values[j] > dst[j]) {
              dst[j] = row_values[j];
              dst_win[j] = row_cells[j];
            }
          }
        } else {
          for (int64_t j = 0; j < box_w; ++j) dst[j] = row_values[j] > dst[j] ? row_values[j] : dst[j];
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_cpu_kernel(const at::Tensor& grad_canvas, const at::Tensor& winner, const at::Tensor& masks,
                         const at::Tensor& scores, const at::Tensor& classes, const at::Tensor& boxes,
                         float box_scale, at::Tensor& grad_masks, at::Tensor& grad_scores) {
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

  // Each detection gathers the gradient of the pixels it won (no scatter, so threads never collide). Per cell,
  // pixels are summed in row-major order, the same order the CUDA kernel uses, so both give identical results.
  at::parallel_for(0, n_inst, 1, [&](int64_t n_begin, int64_t n_end) {
    std::vector<acc_t> cell_sum(cells);
    for (int64_t n = n_begin; n < n_end; ++n) {
      std::fill(cell_sum.begin(), cell_sum.end(), acc_t(0));
      const int64_t c = cls[n];
      Placement g;
      if (c >= 0 && c < n_cls && place_box(b + 4 * n, box_scale, mask_h, mask_w, height, width, &g)) {
        for (int64_t i = g.r0; i < g.r1; ++i) {
          const int64_t row_cell = cell_of(i, g.y_lo, g.y_len, mask_h) * mask_w;
          const int64_t pix_base = (c * height + i) * width;
          for (int64_t j = g.c0; j < g.c1; ++j) {
            const int64_t cell = row_cell + cell_of(j, g.x_lo, g.x_len, mask_w);
            if (win[pix_base + j] == n * cells + cell) cell_sum[cell] += static_cast<acc_t>(g_out[pix_base + j]);
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
                                                   double box_scale, bool with_winner) {
  check_forward_args(masks_in, scores_in, classes_in, boxes_in, num_classes, height, width);
  const Inputs in = kernel_inputs(masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  at::Tensor canvas = empty_canvas(masks, num_classes, height, width);
  at::Tensor winner = winner_like(canvas, with_winner);
  if (masks.numel() > 0 && canvas.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_forward_cpu", [&] {
      const float scale = static_cast<float>(box_scale);
      if (with_winner) {
        forward_cpu_kernel<scalar_t, true>(masks, scores, classes, boxes, scale, canvas, winner);
      } else {
        forward_cpu_kernel<scalar_t, false>(masks, scores, classes, boxes, scale, canvas, winner);
      }
    });
  }
  return {canvas.to(masks.scalar_type()), winner};
}

std::tuple<at::Tensor, at::Tensor> imp_backward_cpu(const at::Tensor& grad_canvas_in, const at::Tensor& winner_in,
                                                    const at::Tensor& masks_in, const at::Tensor& scores_in,
                                                    const at::Tensor& classes_in, const at::Tensor& boxes_in,
                                                    double box_scale) {
  const BackwardInputs in = backward_inputs(grad_canvas_in, winner_in, masks_in, scores_in, classes_in, boxes_in);
  const at::Tensor &masks = in.masks, &scores = in.scores, &classes = in.classes, &boxes = in.boxes;
  const at::Tensor &grad_canvas = in.grad_canvas, &winner = in.winner;
  at::Tensor grad_masks = at::zeros_like(masks), grad_scores = at::zeros_like(scores);
  if (masks.numel() > 0 && winner.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "imp_backward_cpu", [&] {
      backward_cpu_kernel<scalar_t>(grad_canvas, winner, masks, scores, classes, boxes,
                                    static_cast<float>(box_scale), grad_masks, grad_scores);
    });
  }
  return {grad_masks, grad_scores};
}

}  // namespace

TORCH_LIBRARY(panoptic_ros, m) {
  // Returns (canvas [C, H, W] in the dtype of masks, winner). With with_winner, winner is [C, H, W] int64: the
  // flat index n * S_h * S_w + cell of the mask cell that set each pixel, -1 where none did; it routes the
  // gradient in imp_backward. Without (inference), winner is empty and is neither allocated nor computed.
  m.def(
      "imp_forward(Tensor masks, Tensor scores, Tensor classes, Tensor boxes, int num_classes, int height, "
      "int width, float box_scale, bool with_winner) -> (Tensor, Tensor)");
  m.def(
      "imp_backward(Tensor grad_canvas, Tensor winner, Tensor masks, Tensor scores, Tensor classes, Tensor boxes, "
      "float box_scale) -> (Tensor, Tensor)");
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
