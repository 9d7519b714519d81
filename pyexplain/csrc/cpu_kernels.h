// Entry points of the CPU kernels, one set per instruction set (compiled in separate translation
// units that include no torch headers), chosen at run time in bindings.cpp.
#pragma once

#include "channel_stats.h"
#include "checksums.h"
#include "launch.h"
#include "rescale.h"

namespace px_default {
#include "cpu_kernel_decls.inc"
}  // namespace px_default

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PX_HAVE_AVX2_BUILD 1
namespace px_avx2 {
#include "cpu_kernel_decls.inc"
}  // namespace px_avx2
#endif
