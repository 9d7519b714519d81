#pragma once

// The arguments of one rescale call (DeepLIFT's rescale rule on a piecewise-linear activation),
// shared by the per-ISA CPU kernels and bindings.cpp.
//
// f is a contiguous [N, P] (P = elements per image), reference a contiguous [N, P] or, when
// `shared`, [1, P] used by every image. For each element, with d = f - reference:
//   distinct   = 1[|d| > eps]            (0 where d is NaN, as sign(threshold(|d|, eps, 0)))
//   same       = 1 - distinct
//   value      = phi(f)
//   multiplier = (phi(f) - phi(reference)) / (d + same) * distinct + same * phi'(f)
// phi and phi' by `kind`: PX_RESCALE_RELU (clamp(f, min=0); 1[f > 0]), PX_RESCALE_HARDTANH
// (clamp(f, low, high); 1[low < f < high]), PX_RESCALE_LEAKY (f > 0 ? f : slope*f; f > 0 ? 1 : slope).
// The gates are torch's threshold_backward / hardtanh_backward / leaky_relu_backward, so a NaN f
// keeps `same` (relu, hardtanh) or scales it by slope (leaky); the ratio is NaN there anyway.
//
// This header has no includes.

enum PxRescaleKind : int { PX_RESCALE_RELU = 0, PX_RESCALE_HARDTANH = 1, PX_RESCALE_LEAKY = 2 };

struct PxRescaleArgs {
  const void* f;
  const void* reference;
  long long per_image;  // P
  bool shared;          // reference is [1, P]
  int kind;
  double low, high, slope, eps;
  void* value;
  void* multiplier;
};
