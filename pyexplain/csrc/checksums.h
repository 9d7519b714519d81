#pragma once

// One tensor of a checksums call (see checksums.inc): `count` contiguous elements of `dtype`
// (PX_SUM_FLOAT, PX_SUM_DOUBLE, PX_SUM_INT64), and where its two sums go.
//
// This header has no includes.

enum PxSumType : int { PX_SUM_FLOAT = 0, PX_SUM_DOUBLE = 1, PX_SUM_INT64 = 2 };

struct PxSumArgs {
  const void* data;
  long long count;
  int dtype;
  double* out;  // out[0] = sum of every element, out[1] = sum of element i times (i + 1), i = 0, 1, 2, ...
};
