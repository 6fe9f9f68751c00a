// Geometry shared by the CPU and CUDA kernels of Instance Mask Projection (IMP).
//
// Every quantity that decides which canvas pixels a mask cell reaches is computed here, in float32, in one fixed
// order of operations. The pure-PyTorch reference (panoptic_ros/ops/_reference.py) repeats exactly these steps, and
// the extension is compiled without FMA contraction, so CPU, CUDA and reference agree bit for bit.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define IMP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IMP_HOST_DEVICE inline
#endif

namespace panoptic_ros {
namespace imp {

// Index of the mask cell (along one axis) whose extent holds the centre of canvas pixel `p`:
//   floor(((p + 0.5) - lo) * cells / len), clamped to [-1, cells] so that far-away pixels stay representable.
// Values outside [0, cells) mean "outside the box". Monotone non-decreasing in p.
IMP_HOST_DEVICE int64_t cell_of(int64_t p, float lo, float len, int64_t cells) {
  float t = (static_cast<float>(p) + 0.5f) - lo;
  t = t * static_cast<float>(cells);
  t = t / len;
  t = fminf(fmaxf(t, -1.0f), static_cast<float>(cells));
  return static_cast<int64_t>(floorf(t));
}

// Overlap rule: the position of pixel boundary p (the left or top edge of pixel p) in cell units,
//   ((p - lo) * cells) / len, clamped to [-1, cells + 1] (beyond that every index below is the same).
IMP_HOST_DEVICE float edge_of(int64_t p, float lo, float len, int64_t cells) {
  float t = static_cast<float>(p) - lo;
  t = t * static_cast<float>(cells);
  t = t / len;
  return fminf(fmaxf(t, -1.0f), static_cast<float>(cells) + 1.0f);
}

// The cells along one axis that pixel p takes its value from: [low_cell(p), high_cell(p)].
// Centre rule: the one cell whose extent holds the pixel centre (outside the box when not in [0, cells)).
// Overlap rule: every cell whose extent overlaps the pixel [p, p + 1) with positive length: cell k spans
// [k, k + 1) in cell units, so it overlaps when k > edge(p) - 1 and k < edge(p + 1), i.e.
// floor(edge(p)) <= k <= ceil(edge(p + 1)) - 1, clipped to [0, cells - 1] (empty when low > high). A pixel that
// float32 shrinks to a point (edge(p) == edge(p + 1), in boxes millions of pixels wide) reads the cell holding
// that point: high is at least floor(edge(p)). Both are monotone non-decreasing in p.
IMP_HOST_DEVICE int64_t low_cell(int64_t p, float lo, float len, int64_t cells, bool overlap) {
  if (!overlap) return cell_of(p, lo, len, cells);
  const int64_t k = static_cast<int64_t>(floorf(edge_of(p, lo, len, cells)));
  return k < 0 ? 0 : k;
}

IMP_HOST_DEVICE int64_t high_cell(int64_t p, float lo, float len, int64_t cells, bool overlap) {
  if (!overlap) return cell_of(p, lo, len, cells);
  const int64_t point = static_cast<int64_t>(floorf(edge_of(p, lo, len, cells)));
  int64_t k = static_cast<int64_t>(ceilf(edge_of(p + 1, lo, len, cells))) - 1;
  k = k < point ? point : k;
  return k > cells - 1 ? cells - 1 : k;
}

// Smallest pixel p in [0, size] with high_cell(p) >= k (kHigh) or low_cell(p) >= k (!kHigh); size when there is
// none. Binary search on a monotone predicate, so ranges are exact rather than estimated. The pixels that read
// cell k are [first_pixel<true>(k), first_pixel<false>(k + 1)); those of the whole box are
// [first_pixel<true>(0), first_pixel<false>(cells)).
template <bool kHigh>
IMP_HOST_DEVICE int64_t first_pixel(int64_t k, float lo, float len, int64_t cells, int64_t size, bool overlap) {
  int64_t a = 0;
  int64_t b = size;
  while (a < b) {
    const int64_t m = a + (b - a) / 2;
    const int64_t cell = kHigh ? high_cell(m, lo, len, cells, overlap) : low_cell(m, lo, len, cells, overlap);
    if (cell >= k) {
      b = m;
    } else {
      a = m + 1;
    }
  }
  return a;
}

IMP_HOST_DEVICE bool is_finite(float x) { return fabsf(x) <= FLT_MAX; }

// One detection box placed on the canvas.
struct Placement {
  float x_lo, x_len, y_lo, y_len;  // box extent in canvas pixels
  int64_t r0, r1, c0, c1;          // canvas rows [r0, r1) and columns [c0, c1) that read some cell of the box
};

// Places box b = (x1, y1, x2, y2) (image coordinates) on an H x W canvas after multiplying by `scale`.
// Returns false (the detection contributes nothing) for non-finite or degenerate boxes and for boxes that
// no canvas pixel reads (under the centre rule: that hold no pixel centre; under the overlap rule: that overlap
// no pixel with positive area).
IMP_HOST_DEVICE bool place_box(const float* b, float scale, int64_t mask_h, int64_t mask_w, int64_t height,
                               int64_t width, bool overlap, Placement* out) {
  const float x_lo = b[0] * scale;
  const float y_lo = b[1] * scale;
  const float x_len = b[2] * scale - x_lo;
  const float y_len = b[3] * scale - y_lo;
  if (!(is_finite(x_lo) && is_finite(y_lo) && is_finite(x_len) && is_finite(y_len) && x_len > 0.0f &&
        y_len > 0.0f)) {
    return false;
  }
  out->x_lo = x_lo;
  out->x_len = x_len;
  out->y_lo = y_lo;
  out->y_len = y_len;
  out->r0 = first_pixel<true>(0, y_lo, y_len, mask_h, height, overlap);
  out->r1 = first_pixel<false>(mask_h, y_lo, y_len, mask_h, height, overlap);
  out->c0 = first_pixel<true>(0, x_lo, x_len, mask_w, width, overlap);
  out->c1 = first_pixel<false>(mask_w, x_lo, x_len, mask_w, width, overlap);
  return out->r0 < out->r1 && out->c0 < out->c1;
}

}  // namespace imp
}  // namespace panoptic_ros
