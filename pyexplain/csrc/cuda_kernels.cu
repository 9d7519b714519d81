// CUDA kernels (float32, float64, float16, bfloat16; half types compute in float).
//
// One block per tile (channel c, chunk k of blockDim.x positions) and group of rows; one thread
// per position s, looping over the block's rows n. FULL outputs are stored per element, SHARED
// outputs summed over n in a register (such launches use a single row group), and the
// row-constant outputs reduced over the block (warp shuffles, then shared memory) into one
// partial sum per (n, c, k) -- no atomics, so results are deterministic.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include "launch.h"

#if __has_include("px_build_config.h")
#include "px_build_config.h"  // written by setup.py: PYEXPLAIN_CUDA_ARCHS
#endif
#ifndef PYEXPLAIN_CUDA_ARCHS
#define PYEXPLAIN_CUDA_ARCHS "unknown"
#endif

namespace px_cuda {
#include "elementwise.h"

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

template <typename A>
struct Gate {
  A low, high;
  bool finite;
};

template <typename A, int OP>
struct Op;

template <typename A>
struct Op<A, PX_PLUGIN_FWD> {
  static constexpr int NIN = 4, NSRC = 1;
  __device__ static void apply(const A* in, A* out, const Gate<A>&) { out[0] = plugin_fwd<A>(in[0], in[1], in[2], in[3]); }
};

template <typename A>
struct Op<A, PX_PLUGIN_BWD> {
  static constexpr int NIN = 5, NSRC = 3;
  __device__ static void apply(const A* in, A* out, const Gate<A>&) {
    plugin_bwd<A>(in[0], in[1], in[2], in[3], in[4], out[0], out[1], out[2]);
  }
};

template <typename A>
struct Op<A, PX_PLUGIN_DBL> {
  static constexpr int NIN = 9, NSRC = 4;
  __device__ static void apply(const A* in, A* out, const Gate<A>&) {
    plugin_dbl<A>(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], out[0], out[1], out[2], out[3]);
  }
};

template <typename A>
struct Op<A, PX_MASK_FWD> {
  static constexpr int NIN = 3, NSRC = 1;
  __device__ static void apply(const A* in, A* out, const Gate<A>& gt) {
    out[0] = in[0] * mask_gate<A>(in[1], gt.low, gt.high, gt.finite) * in[2];
  }
};

template <typename A>
struct Op<A, PX_MASK_BWD> {
  static constexpr int NIN = 4, NSRC = 2;
  __device__ static void apply(const A* in, A* out, const Gate<A>& gt) {
    const A gate_gy = in[0] * mask_gate<A>(in[2], gt.low, gt.high, gt.finite);
    out[0] = gate_gy * in[3];
    out[1] = gate_gy * in[1];
  }
};

template <typename A>
struct Op<A, PX_MASK_DBL> {
  static constexpr int NIN = 6, NSRC = 3;
  __device__ static void apply(const A* in, A* out, const Gate<A>& gt) {
    const A gate = mask_gate<A>(in[2], gt.low, gt.high, gt.finite);
    out[0] = gate * (in[4] * in[3] + in[5] * in[1]);
    out[1] = in[5] * in[0] * gate;
    out[2] = in[4] * in[0] * gate;
  }
};

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the result in thread 0.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? warp_sums[threadIdx.x] : A(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // warp_sums is reused by the next call
  return v;
}

template <typename T, typename A>
__device__ A load(const PxOperand& op, long long r, long long c, long long s, long long S) {
  const T* p = static_cast<const T*>(op.ptr);
  switch (op.layout) {
    case PX_FULL:
      return static_cast<A>(p[r * S + s]);
    case PX_SHARED:
      return static_cast<A>(p[c * S + s]);
    case PX_ROW:
      return static_cast<A>(p[r]);
    case PX_CHANNEL:
      return static_cast<A>(p[c]);
    default:
      return static_cast<A>(p[0]);
  }
}

template <typename T, int OP>
__global__ void px_kernel(PxLaunch L, long long K, long long rows_per_block) {
  using A = typename AccType<T>::type;
  using O = Op<A, OP>;
  const long long N = L.N, C = L.C, S = L.S;
  const long long tile = blockIdx.x;
  const long long c = tile / K, k = tile - c * K;
  const long long s = k * L.chunk + threadIdx.x;
  const bool active = s < S;
  const long long n0 = static_cast<long long>(blockIdx.y) * rows_per_block;
  const long long n1 = n0 + rows_per_block < N ? n0 + rows_per_block : N;
  const Gate<A> gate{static_cast<A>(L.low), static_cast<A>(L.high), L.high_finite != 0};
  A shared_sum[PX_MAX_TARGETS];
#pragma unroll
  for (int q = 0; q < PX_MAX_TARGETS; ++q) shared_sum[q] = A(0);

  for (long long n = n0; n < n1; ++n) {
    const long long r = n * C + c;
    A in[O::NIN];
    A src[O::NSRC];
#pragma unroll
    for (int i = 0; i < O::NIN; ++i) in[i] = active ? load<T, A>(L.in[i], r, c, s, S) : A(0);
    O::apply(in, src, gate);
    for (int q = 0; q < L.ntargets; ++q) {
      const PxTarget& tg = L.out[q];
      A v = A(0);
#pragma unroll
      for (int o = 0; o < O::NSRC; ++o)
        if (o == tg.source) v = src[o];
      if (tg.negate) v = -v;
      if (tg.layout == PX_FULL) {
        if (active) static_cast<T*>(tg.ptr)[r * S + s] = static_cast<T>(v);
      } else if (tg.layout == PX_SHARED) {
        shared_sum[q] += v;
      } else {
        const A total = block_sum<A>(active ? v : A(0));
        if (threadIdx.x == 0) tg.partial[r * K + k] = static_cast<double>(total);
      }
    }
  }
  for (int q = 0; q < L.ntargets; ++q) {
    const PxTarget& tg = L.out[q];
    if (tg.layout == PX_SHARED && active) static_cast<T*>(tg.ptr)[c * S + s] = static_cast<T>(shared_sum[q]);
  }
}

template <typename T>
void launch_typed(const PxLaunch& L, long long K, dim3 grid, dim3 block, long long rows_per_block, cudaStream_t stream) {
  switch (L.op) {
    case PX_PLUGIN_FWD:
      px_kernel<T, PX_PLUGIN_FWD><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    case PX_PLUGIN_BWD:
      px_kernel<T, PX_PLUGIN_BWD><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    case PX_PLUGIN_DBL:
      px_kernel<T, PX_PLUGIN_DBL><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    case PX_MASK_FWD:
      px_kernel<T, PX_MASK_FWD><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    case PX_MASK_BWD:
      px_kernel<T, PX_MASK_BWD><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    case PX_MASK_DBL:
      px_kernel<T, PX_MASK_DBL><<<grid, block, 0, stream>>>(L, K, rows_per_block);
      break;
    default:
      TORCH_CHECK(false, "pyexplain._C: unknown op ", L.op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace px_cuda

// Positions per block for an activation with S positions per (row, channel).
long long px_cuda_chunk(long long S) {
  const long long rounded = (S + 31) / 32 * 32;
  return rounded < 256 ? rounded : 256;
}

// Runs L (chunk from px_cuda_chunk) on the current stream of `device_index`.
void px_run_cuda(const PxLaunch& L, c10::ScalarType dtype, int device_index) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  const long long K = (L.S + L.chunk - 1) / L.chunk;
  const long long tiles = L.C * K;
  TORCH_CHECK(tiles <= 0x7fffffffLL, "pyexplain._C: activation too large for one launch");
  bool needs_all_rows = false;  // SHARED outputs are summed over n inside one block
  for (int q = 0; q < L.ntargets; ++q) needs_all_rows |= L.out[q].layout == PX_SHARED;
  long long groups = 1;
  if (!needs_all_rows) {
    const long long wanted = (4096 + tiles - 1) / tiles;  // aim at >= 4096 blocks
    groups = std::min<long long>({L.N, wanted, 65535LL});
    groups = std::max<long long>(groups, 1);
  }
  const long long rows_per_block = (L.N + groups - 1) / groups;
  groups = (L.N + rows_per_block - 1) / rows_per_block;
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(groups));
  const dim3 block(static_cast<unsigned int>(L.chunk));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_index)).stream();
  switch (dtype) {
    case c10::ScalarType::Float:
      px_cuda::launch_typed<float>(L, K, grid, block, rows_per_block, stream);
      break;
    case c10::ScalarType::Double:
      px_cuda::launch_typed<double>(L, K, grid, block, rows_per_block, stream);
      break;
    case c10::ScalarType::Half:
      px_cuda::launch_typed<c10::Half>(L, K, grid, block, rows_per_block, stream);
      break;
    case c10::ScalarType::BFloat16:
      px_cuda::launch_typed<c10::BFloat16>(L, K, grid, block, rows_per_block, stream);
      break;
    default:
      TORCH_CHECK(false, "pyexplain._C: unsupported CUDA dtype ", dtype);
  }
}

std::string px_cuda_build_info() {
  return "CUDA runtime " + std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
         ", archs " PYEXPLAIN_CUDA_ARCHS;
}
