// Per-element formulas of the two fused ops, shared by the CPU and CUDA kernels.
//
// plugin rule (LPR):   y = g * t,  t = tanh(w * d),  d = f - ref,  s = 1 - t^2
//   first order:       dg = gy * t,   dw = gy*g*s * d,   dd = gy*g*s * w  (df = dd, dref = -dd)
//   second order, for upstream grads (ag, aw, af, aref) of (dg, dw, df, dref), ad = af - aref,
//   q = aw*d + ad*w:   hgy = ag*t + g*s*q,   hg = gy*s*q,
//                      hd  = ag*gy*s*w + gy*g*s*(aw - 2*t*w*q),
//                      hw  = ag*gy*s*d + gy*g*s*(ad - 2*t*d*q)     (hf = hd, href = -hd)
// masked backward (DMBP, Guided BP):  y = g * gate(f) * m,  gate = 1[low < f < high]
//   first order:       dg = gy*gate*m,  dm = gy*g*gate              (the gate has no gradient)
//   second order:      hgy = gate*(ag*m + am*g),  hg = am*gy*gate,  hm = ag*gy*gate
//
// Included inside per-ISA namespaces, after <cmath>; no includes of its own.

#ifdef __CUDACC__
#define PX_HD __host__ __device__ __forceinline__
#else
#define PX_HD inline __attribute__((always_inline))
#endif

#ifndef __CUDA_ARCH__
// Host tanh without branches, so that loops calling it vectorize:
// tanh|x| = e / (e + 2) with e = expm1(2|x|); expm1 by range reduction y = n*ln2 + r,
// |r| <= ln2/2, expm1(y) = 2^n * expm1(r) + (2^n - 1), expm1(r) by its Taylor series (truncation
// below half an ulp). No cancellation for small |x|; |x| is clamped where tanh rounds to 1.
// n is found by the round-to-nearest "magic number" trick, 2^n built from its exponent bits.
PX_HD float px_tanh(float x) {
  float a = __builtin_fabsf(x);
  a = a > 10.0f ? 10.0f : a;  // tanh(10) rounds to 1; NaN passes through
  const float y = a + a;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float big = y * 1.44269504088896341f + magic;
  const float n = big - magic;
  unsigned int big_bits, magic_bits;
  __builtin_memcpy(&big_bits, &big, 4);
  __builtin_memcpy(&magic_bits, &magic, 4);
  const unsigned int pow_bits = ((big_bits - magic_bits) + 127u) << 23;
  float two_n;
  __builtin_memcpy(&two_n, &pow_bits, 4);
  const float r = (y - n * 0.693359375f) - n * -2.12194440054690583e-4f;  // ln2 = hi + lo
  const float p =
      r + r * r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040))))));
  const float e = two_n * p + (two_n - 1.0f);
  return __builtin_copysignf(e / (e + 2.0f), x);
}

PX_HD double px_tanh(double x) {
  double a = __builtin_fabs(x);
  a = a > 20.0 ? 20.0 : a;  // tanh(20) rounds to 1
  const double y = a + a;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double big = y * 1.4426950408889634 + magic;
  const double n = big - magic;
  unsigned long long big_bits, magic_bits;
  __builtin_memcpy(&big_bits, &big, 8);
  __builtin_memcpy(&magic_bits, &magic, 8);
  const unsigned long long pow_bits = ((big_bits - magic_bits) + 1023ull) << 52;
  double two_n;
  __builtin_memcpy(&two_n, &pow_bits, 8);
  const double r = (y - n * 0x1.62e42feep-1) - n * 1.9082149292705877e-10;  // ln2 = hi + lo
  double p = 1.0 / 6227020800.0;  // Taylor coefficients 1/k!, k = 13 .. 2
  p = 1.0 / 479001600.0 + r * p;
  p = 1.0 / 39916800.0 + r * p;
  p = 1.0 / 3628800.0 + r * p;
  p = 1.0 / 362880.0 + r * p;
  p = 1.0 / 40320.0 + r * p;
  p = 1.0 / 5040.0 + r * p;
  p = 1.0 / 720.0 + r * p;
  p = 1.0 / 120.0 + r * p;
  p = 1.0 / 24.0 + r * p;
  p = 1.0 / 6.0 + r * p;
  p = 0.5 + r * p;
  p = r + r * r * p;
  const double e = two_n * p + (two_n - 1.0);
  return __builtin_copysign(e / (e + 2.0), x);
}
#else
__device__ __forceinline__ float px_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double px_tanh(double x) { return tanh(x); }
#endif

template <typename T>
PX_HD T plugin_fwd(T g, T f, T ref, T w) {
  return g * px_tanh(w * (f - ref));
}

template <typename T>
PX_HD void plugin_bwd(T gy, T g, T f, T ref, T w, T& dg, T& dw, T& dd) {
  const T d = f - ref;
  const T t = px_tanh(w * d);
  const T k = gy * g * (T(1) - t * t);
  dg = gy * t;
  dw = k * d;
  dd = k * w;
}

template <typename T>
PX_HD void plugin_dbl(T gy, T g, T f, T ref, T w, T ag, T aw, T af, T aref, T& hgy, T& hg, T& hd, T& hw) {
  const T d = f - ref;
  const T t = px_tanh(w * d);
  const T s = T(1) - t * t;
  const T ad = af - aref;
  const T q = aw * d + ad * w;
  const T ggs = gy * g * s;
  const T ags = ag * gy * s;
  hgy = ag * t + g * s * q;
  hg = gy * s * q;
  hd = ags * w + ggs * (aw - T(2) * t * w * q);
  hw = ags * d + ggs * (ad - T(2) * t * d * q);
}

template <typename T>
PX_HD T mask_gate(T f, T low, T high, bool high_finite) {
  return (f > low && (!high_finite || f < high)) ? T(1) : T(0);
}
