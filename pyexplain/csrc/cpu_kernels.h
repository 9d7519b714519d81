// Entry points of the CPU kernels, one set per instruction set (compiled in separate translation
// units that include no torch headers), chosen at run time in bindings.cpp.
#pragma once

#include "channel_stats.h"
#include "checksums.h"
#include "launch.h"
#include "rescale.h"

namespace px_default {
void run_cpu_float(const PxLaunch& L);
void run_cpu_double(const PxLaunch& L);
void abs_channel_stats_float(const PxStatsArgs& a, long long n, long long c0, long long c1, void* sum);
void abs_channel_stats_double(const PxStatsArgs& a, long long n, long long c0, long long c1, void* sum);
void epsilon_divide_float(const void* r, const void* z, double eps, void* out, long long n);
void epsilon_divide_double(const void* r, const void* z, double eps, void* out, long long n);
void proportional_split_float(const void* r, const void* a, const void* b, double eps, void* out_a, void* out_b,
                              long long n);
void proportional_split_double(const void* r, const void* a, const void* b, double eps, void* out_a, void* out_b,
                               long long n);
void rescale_float(const PxRescaleArgs& a, long long begin, long long end);
void rescale_double(const PxRescaleArgs& a, long long begin, long long end);
void checksums(const PxSumArgs& a);
}  // namespace px_default

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PX_HAVE_AVX2_BUILD 1
namespace px_avx2 {
void run_cpu_float(const PxLaunch& L);
void run_cpu_double(const PxLaunch& L);
void abs_channel_stats_float(const PxStatsArgs& a, long long n, long long c0, long long c1, void* sum);
void abs_channel_stats_double(const PxStatsArgs& a, long long n, long long c0, long long c1, void* sum);
void epsilon_divide_float(const void* r, const void* z, double eps, void* out, long long n);
void epsilon_divide_double(const void* r, const void* z, double eps, void* out, long long n);
void proportional_split_float(const void* r, const void* a, const void* b, double eps, void* out_a, void* out_b,
                              long long n);
void proportional_split_double(const void* r, const void* a, const void* b, double eps, void* out_a, void* out_b,
                               long long n);
void rescale_float(const PxRescaleArgs& a, long long begin, long long end);
void rescale_double(const PxRescaleArgs& a, long long begin, long long end);
void checksums(const PxSumArgs& a);
}  // namespace px_avx2
#endif
