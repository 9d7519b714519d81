#pragma once

// The description of one fused elementwise launch, shared by the CPU and CUDA kernels.
//
// Every op works on "full" tensors shaped like the activation f, viewed as [N, C, S]
// (N = size(0), C = size(1), S = product of the remaining sizes), and on "parameter" tensors
// (f_ref, W, mask and their gradients) that broadcast against f in one of these layouts:
//
//   FULL     [N, C, *]        index (n*C + c)*S + s
//   SHARED   [1, C, *]        index c*S + s        (shared by the N rows)
//   ROW      [N, C, 1, ...]   index n*C + c        (one value per row and channel)
//   CHANNEL  [1, C, 1, ...]   index c              (one value per channel)
//   SCALAR   [1, ..., 1]      index 0
//
// A kernel walks tiles (c, k) -- channel c, chunk k of `chunk` positions -- and, inside a tile,
// the rows n. Each op computes a few per-element results ("sources"); each requested output is
// a Target that takes one source, optionally negated, in a layout: FULL and SHARED outputs are
// written directly (SHARED ones summed over n), the row-constant layouts are reduced per
// (n, c, k) into a double `partial` buffer [N, C, K] (K = ceil(S / chunk)) that the caller
// sums to the output's shape.
//
// This header has no includes: it is included inside per-ISA namespaces.

enum PxLayout : int { PX_FULL = 0, PX_SHARED = 1, PX_ROW = 2, PX_CHANNEL = 3, PX_SCALAR = 4 };

enum PxOp : int {
  PX_PLUGIN_FWD = 0,  // in: g, f, ref, w                       src: y
  PX_PLUGIN_BWD = 1,  // in: gy, g, f, ref, w                   src: dg, dw, dd
  PX_PLUGIN_DBL = 2,  // in: gy, g, f, ref, w, ag, aw, af, aref src: hgy, hg, hd, hw
  PX_MASK_FWD = 3,    // in: g, f, mask                         src: y
  PX_MASK_BWD = 4,    // in: gy, g, f, mask                     src: dg, dmask
  PX_MASK_DBL = 5,    // in: gy, g, f, mask, ag, amask          src: hgy, hg, hmask
};

constexpr int PX_MAX_IN = 9;
constexpr int PX_MAX_TARGETS = 6;
constexpr long long PX_CPU_CHUNK = 512;  // positions per CPU tile (the CPU kernels' buffer size)

struct PxOperand {
  const void* ptr;
  int layout;
};

struct PxTarget {
  void* ptr;        // FULL / SHARED outputs (element type of the op)
  double* partial;  // ROW / CHANNEL / SCALAR outputs: [N, C, K] partial sums
  int layout;
  int source;       // which per-element result
  int negate;       // store -source
};

struct PxLaunch {
  int op;
  long long N, C, S;
  long long chunk;  // positions per tile; K = ceil(S / chunk)
  int nin;
  PxOperand in[PX_MAX_IN];
  int ntargets;
  PxTarget out[PX_MAX_TARGETS];
  double low, high;  // the gate 1[low < f < high] of the masked ops
  int high_finite;   // 0: the gate is 1[f > low]
  int threads;       // CPU: OpenMP threads (torch's intra-op setting)
};
