// The CPU kernels built for AVX2 + FMA (x86-64 only), used when the CPU supports them. Only this
// file's own functions get the target attribute: it includes no torch or standard headers after
// the pragma, so no inline function shared with other translation units is compiled for AVX2.
#include <omp.h>

#include "channel_stats.h"
#include "checksums.h"
#include "launch.h"
#include "rescale.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace px_avx2 {
#include "elementwise.h"
#include "cpu_kernels.inc"
#include "channel_stats.inc"
#include "epsilon_rule.inc"
#include "checksums.inc"
#include "rescale.inc"
}  // namespace px_avx2
#pragma GCC pop_options
#endif
