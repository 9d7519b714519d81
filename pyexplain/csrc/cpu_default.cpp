// The CPU kernels built for the compiler's baseline instruction set (SSE2 on x86-64).
#include <omp.h>

#include "channel_stats.h"
#include "checksums.h"
#include "launch.h"
#include "rescale.h"

namespace px_default {
#include "elementwise.h"
#include "cpu_kernels.inc"
#include "channel_stats.inc"
#include "epsilon_rule.inc"
#include "checksums.inc"
#include "rescale.inc"
}  // namespace px_default
