// Geometry shared by the CPU and CUDA kernels of Instance Mask Projection (IMP).
//
// Every quantity that decides which canvas pixel a mask cell covers is computed here, in float32, in one fixed
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

// Smallest pixel p in [0, size] with cell_of(p) >= k (size when there is none). Binary search on a monotone
// predicate, so ranges are exact rather than estimated.
IMP_HOST_DEVICE int64_t first_pixel(int64_t k, float lo, float len, int64_t cells, int64_t size) {
  int64_t a = 0;
  int64_t b = size;
  while (a < b) {
    const int64_t m = a + (b - a) / 2;
    if (cell_of(m, lo, len, cells) >= k) {
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
  int64_t r0, r1, c0, c1;          // canvas rows [r0, r1) and columns [c0, c1) whose centres fall inside the box
};

// Places box b = (x1, y1, x2, y2) (image coordinates) on an H x W canvas after multiplying by `scale`.
// Returns false (the detection contributes nothing) for non-finite or degenerate boxes and for boxes that
// cover no pixel centre of the canvas.
IMP_HOST_DEVICE bool place_box(const float* b, float scale, int64_t mask_h, int64_t mask_w, int64_t height,
                               int64_t width, Placement* out) {
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
  out->r0 = first_pixel(0, y_lo, y_len, mask_h, height);
  out->r1 = first_pixel(mask_h, y_lo, y_len, mask_h, height);
  out->c0 = first_pixel(0, x_lo, x_len, mask_w, width);
  out->c1 = first_pixel(mask_w, x_lo, x_len, mask_w, width);
  return out->r0 < out->r1 && out->c0 < out->c1;
}

}  // namespace imp
}  // namespace panoptic_ros
