// The CPU kernels built for the compiler's baseline instruction set (SSE2 on x86-64).
#include <omp.h>

#include "channel_stats.h"
#include "launch.h"

namespace px_default {
#include "elementwise.h"
#include "cpu_kernels.inc"
#include "channel_stats.inc"
#include "epsilon_rule.inc"
}  // namespace px_default
