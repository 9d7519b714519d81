#pragma once

// The arguments of one abs_channel_stats call, shared by the per-ISA CPU kernels and bindings.cpp.
//
// g and reference are contiguous [N, C, S] (S = H*W); weight is [C]; low and high are [N, C].
// m = |g| where reference is null, else m = |g| * 1[reference > threshold], a NaN reference counting
// as above (threshold_backward's gate: 0 where reference <= threshold). For one image n and channels [c0, c1) the kernel writes low/high[n, c] = min/max over s
// of m[n, c, s] (NaN when a NaN is among them, as amin/amax) and stores sum[s] = sum over
// c in [c0, c1) of weight[c] * m[n, c, s] (zeros for an empty range).
//
// This header has no includes.

struct PxStatsArgs {
  const void* g;
  const void* reference;  // null: no gate
  const void* weight;
  double threshold;
  long long N, C, S;
  void* low;
  void* high;
};
