// Python bindings of the fused ops (pybind11 through torch.utils.cpp_extension): argument checks,
// parameter layouts (see launch.h), output allocation, dispatch to the CPU kernels (baseline or
// AVX2+FMA build, chosen at run time) or the CUDA kernels, and the final sum of the partial
// reductions that give the gradients of broadcast parameters.
//
// The autograd wiring (first and second order) is in pyexplain/_kernels.py; every function here
// is a plain, non-differentiable computation.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "launch.h"

#ifdef PYEXPLAIN_WITH_CUDA
long long px_cuda_chunk(long long S);
void px_run_cuda(const PxLaunch& L, c10::ScalarType dtype, int device_index);
std::string px_cuda_build_info();
#endif

namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

bool cpu_supports_avx2() {
#ifdef PX_HAVE_AVX2_BUILD
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2 = cpu_supports_avx2();

// The CPU kernel entry point `name` of the build selected by set_cpu_isa (cpu_kernels.h).
#ifdef PX_HAVE_AVX2_BUILD
#define PX_CPU_KERNEL(name) (use_avx2 ? px_avx2::name : px_default::name)
#else
#define PX_CPU_KERNEL(name) (px_default::name)
#endif

// Layout of a parameter of sizes `p` broadcast against an activation of sizes `full`, or -1.
int classify(at::IntArrayRef p, at::IntArrayRef full) {
  const int64_t nd = static_cast<int64_t>(full.size());
  if (static_cast<int64_t>(p.size()) > nd) return -1;
  std::vector<int64_t> ps(nd, 1);
  for (size_t i = 0; i < p.size(); ++i) ps[nd - p.size() + i] = p[i];
  bool equal = true, ones = true, tail_equal = true, tail_ones = true;
  for (int64_t i = 0; i < nd; ++i) {
    equal &= ps[i] == full[i];
    ones &= ps[i] == 1;
    if (i >= 2) {
      tail_equal &= ps[i] == full[i];
      tail_ones &= ps[i] == 1;
    }
  }
  if (equal) return PX_FULL;
  if (ones) return PX_SCALAR;
  if (nd < 2 || ps[1] != full[1]) return -1;
  if (ps[0] == 1 && tail_equal) return PX_SHARED;
  if (ps[0] == full[0] && tail_ones) return PX_ROW;
  if (ps[0] == 1 && tail_ones) return PX_CHANNEL;
  return -1;
}

// Collects the operands and outputs of one launch and runs it.
class Launch {
 public:
  Launch(int op, const Tensor& f) : f_(f) {
    TORCH_CHECK(f.dim() >= 1 && f.numel() > 0, "pyexplain._C: the activation must be a non-empty tensor");
    const auto dtype = f.scalar_type();
    if (f.is_cpu()) {
      TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "pyexplain._C: CPU kernels take float32 or float64, got ",
                  dtype);
    } else {
#ifdef PYEXPLAIN_WITH_CUDA
      TORCH_CHECK(f.is_cuda(), "pyexplain._C: tensors must be on CPU or CUDA");
      TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                  "pyexplain._C: CUDA kernels take float32, float64, float16 or bfloat16, got ", dtype);
#else
      TORCH_CHECK(false, "pyexplain._C was built without CUDA");
#endif
    }
    N_ = f.size(0);
    C_ = f.dim() >= 2 ? f.size(1) : 1;
    S_ = f.numel() / (N_ * C_);
    L_ = PxLaunch{};
    L_.op = op;
    // S == 1 ([N, C]): view as [N, 1, C] so the contiguous dimension is the vectorized one.
    remap_s1_ = S_ == 1;
    L_.N = N_;
    L_.C = remap_s1_ ? 1 : C_;
    L_.S = remap_s1_ ? C_ : S_;
#ifdef PYEXPLAIN_WITH_CUDA
    L_.chunk = f.is_cuda() ? px_cuda_chunk(L_.S) : PX_CPU_CHUNK;
#else
    L_.chunk = PX_CPU_CHUNK;
#endif
    K_ = (L_.S + L_.chunk - 1) / L_.chunk;
  }

  void full_input(const Tensor& t) {
    check_compatible(t);
    TORCH_CHECK(t.sizes() == f_.sizes(), "pyexplain._C: expected shape ", f_.sizes(), ", got ", t.sizes());
    add_input(t.contiguous(), PX_FULL);
  }

  void param_input(const Tensor& t) {
    check_compatible(t);
    const int layout = classify(t.sizes(), f_.sizes());
    TORCH_CHECK(layout >= 0, "pyexplain._C: shape ", t.sizes(), " does not broadcast against ", f_.sizes(),
                " in a supported layout");
    add_input(t.contiguous(), normalize(layout));
  }

  // An output shaped like the activation, from per-element result `source`.
  int full_output(int source, bool negate = false) {
    outputs_.push_back(at::empty(f_.sizes(), f_.options()));
    add_target(outputs_.back(), PX_FULL, source, negate);
    return static_cast<int>(outputs_.size()) - 1;
  }

  // An output shaped like parameter input `input` (the gradient of a broadcast tensor: summed).
  int param_output(int input, int source, bool negate = false) {
    const Tensor& like = inputs_.at(input);
    const int layout = L_.in[input].layout;
    if (layout == PX_FULL || layout == PX_SHARED) {
      outputs_.push_back(at::empty(like.sizes(), like.options()));
      add_target(outputs_.back(), layout, source, negate);
    } else {
      outputs_.push_back(Tensor());
      partials_.push_back({static_cast<int>(outputs_.size()) - 1, layout,
                           at::empty({L_.N, L_.C, K_}, f_.options().dtype(at::kDouble)), like});
      add_target(partials_.back().partial, layout, source, negate);
    }
    return static_cast<int>(outputs_.size()) - 1;
  }

  void set_gate(double low, double high) {
    L_.low = low;
    L_.high = high;
    L_.high_finite = std::isfinite(high) ? 1 : 0;
  }

  void run() {
    if (L_.ntargets == 0) return;
    if (f_.is_cpu()) {
      flatten_if_elementwise();
      L_.threads = at::get_num_threads();
      const bool is_float = f_.scalar_type() == at::kFloat;
      is_float ? PX_CPU_KERNEL(run_cpu_float)(L_) : PX_CPU_KERNEL(run_cpu_double)(L_);
    } else {
#ifdef PYEXPLAIN_WITH_CUDA
      px_run_cuda(L_, f_.scalar_type(), f_.get_device());
#endif
    }
    // Row-constant layouts: partial sums [N, C, K] -> the parameter's shape.
    for (const Partial& p : partials_) {
      Tensor sum = p.partial.sum(2);                      // [N, C]
      if (p.layout == PX_CHANNEL) sum = sum.sum(0);        // [C]
      if (p.layout == PX_SCALAR) sum = sum.sum();          // []
      outputs_[p.output] = sum.to(p.like.scalar_type()).reshape(p.like.sizes());
    }
  }

  Tensor result(int index) const { return index < 0 ? Tensor() : outputs_.at(index); }

 private:
  struct Partial {
    int output;
    int layout;
    Tensor partial;
    Tensor like;
  };

  void check_compatible(const Tensor& t) const {
    TORCH_CHECK(t.device() == f_.device(), "pyexplain._C: all tensors must be on ", f_.device(), ", got ", t.device());
    TORCH_CHECK(t.scalar_type() == f_.scalar_type(), "pyexplain._C: all tensors must be ", f_.scalar_type(), ", got ",
                t.scalar_type());
  }

  // CPU: when every operand is full or a single value and every output full, nothing depends on the
  // (n, c) structure, so the launch covers the tensor as one row of numel() positions: tiles of
  // PX_CPU_CHUNK elements instead of one tile per channel (small activations such as [N, 1152, 7, 7]
  // otherwise pay a tile's set-up for every 49 elements).
  void flatten_if_elementwise() {
    for (int i = 0; i < L_.nin; ++i) {
      if (L_.in[i].layout != PX_FULL && L_.in[i].layout != PX_SCALAR) return;
    }
    for (int q = 0; q < L_.ntargets; ++q) {
      if (L_.out[q].layout != PX_FULL) return;
    }
    L_.S = L_.N * L_.C * L_.S;
    L_.N = 1;
    L_.C = 1;
  }

  // The layout on the launch geometry: [N, 1, C] when S == 1, and N == 1 makes shared = full.
  int normalize(int layout) const {
    if (remap_s1_) {
      if (layout == PX_ROW) layout = PX_FULL;
      if (layout == PX_CHANNEL) layout = PX_SHARED;
    }
    if (N_ == 1) {
      if (layout == PX_SHARED) layout = PX_FULL;
      if (layout == PX_CHANNEL) layout = PX_ROW;
    }
    return layout;
  }

  void add_input(const Tensor& t, int layout) {
    TORCH_CHECK(L_.nin < PX_MAX_IN, "pyexplain._C: too many inputs");
    inputs_.push_back(t);
    L_.in[L_.nin++] = PxOperand{t.data_ptr(), layout};
  }

  void add_target(const Tensor& t, int layout, int source, bool negate) {
    TORCH_CHECK(L_.ntargets < PX_MAX_TARGETS, "pyexplain._C: too many outputs");
    PxTarget& tg = L_.out[L_.ntargets++];
    tg.ptr = (layout == PX_FULL || layout == PX_SHARED) ? t.data_ptr() : nullptr;
    tg.partial = (layout == PX_FULL || layout == PX_SHARED) ? nullptr : t.data_ptr<double>();
    tg.layout = layout;
    tg.source = source;
    tg.negate = negate ? 1 : 0;
  }

  Tensor f_;
  int64_t N_, C_, S_, K_;
  bool remap_s1_;
  PxLaunch L_;
  std::vector<Tensor> inputs_, outputs_;
  std::vector<Partial> partials_;
};

Tensor zeros_like_scalar(const Tensor& f) { return at::zeros({}, f.options()); }

Tensor plugin_forward(const Tensor& g, const Tensor& f, const Tensor& ref, const Tensor& w) {
  Launch L(PX_PLUGIN_FWD, f);
  L.full_input(g);
  L.full_input(f);
  L.param_input(ref);
  L.param_input(w);
  const int y = L.full_output(0);
  L.run();
  return L.result(y);
}

// (d g, d w, d f, d ref) for the requested ones, None for the others.
std::vector<Tensor> plugin_backward(const Tensor& gy, const Tensor& g, const Tensor& f, const Tensor& ref,
                                    const Tensor& w, bool need_g, bool need_w, bool need_f, bool need_ref) {
  Launch L(PX_PLUGIN_BWD, f);
  L.full_input(gy);
  L.full_input(g);
  L.full_input(f);
  L.param_input(ref);
  L.param_input(w);
  const int dg = need_g ? L.full_output(0) : -1;
  const int dw = need_w ? L.param_output(4, 1) : -1;
  const int df = need_f ? L.full_output(2) : -1;
  const int dref = need_ref ? L.param_output(3, 2, /*negate=*/true) : -1;
  L.run();
  return {L.result(dg), L.result(dw), L.result(df), L.result(dref)};
}

// Gradients of <ag, dg> + <aw, dw> + <af, df> + <aref, dref> with respect to
// (gy, g, f, ref, w); missing upstream gradients count as zero.
std::vector<Tensor> plugin_double_backward(const Tensor& gy, const Tensor& g, const Tensor& f, const Tensor& ref,
                                           const Tensor& w, const OptionalTensor& ag, const OptionalTensor& aw,
                                           const OptionalTensor& af, const OptionalTensor& aref, bool need_gy,
                                           bool need_g, bool need_f, bool need_ref, bool need_w) {
  Launch L(PX_PLUGIN_DBL, f);
  L.full_input(gy);
  L.full_input(g);
  L.full_input(f);
  L.param_input(ref);
  L.param_input(w);
  ag ? L.full_input(*ag) : L.param_input(zeros_like_scalar(f));
  L.param_input(aw ? *aw : zeros_like_scalar(f));
  af ? L.full_input(*af) : L.param_input(zeros_like_scalar(f));
  L.param_input(aref ? *aref : zeros_like_scalar(f));
  const int hgy = need_gy ? L.full_output(0) : -1;
  const int hg = need_g ? L.full_output(1) : -1;
  const int hf = need_f ? L.full_output(2) : -1;
  const int href = need_ref ? L.param_output(3, 2, /*negate=*/true) : -1;
  const int hw = need_w ? L.param_output(4, 3) : -1;
  L.run();
  return {L.result(hgy), L.result(hg), L.result(hf), L.result(href), L.result(hw)};
}

Tensor masked_forward(const Tensor& g, const Tensor& f, const Tensor& mask, double low, double high) {
  Launch L(PX_MASK_FWD, f);
  L.full_input(g);
  L.full_input(f);
  L.param_input(mask);
  L.set_gate(low, high);
  const int y = L.full_output(0);
  L.run();
  return L.result(y);
}

// (d g, d mask) for the requested ones; the gate has no gradient.
std::vector<Tensor> masked_backward(const Tensor& gy, const Tensor& g, const Tensor& f, const Tensor& mask, double low,
                                    double high, bool need_g, bool need_mask) {
  Launch L(PX_MASK_BWD, f);
  L.full_input(gy);
  L.full_input(g);
  L.full_input(f);
  L.param_input(mask);
  L.set_gate(low, high);
  const int dg = need_g ? L.full_output(0) : -1;
  const int dm = need_mask ? L.param_output(3, 1) : -1;
  L.run();
  return {L.result(dg), L.result(dm)};
}

// Gradients of <ag, dg> + <amask, dmask> with respect to (gy, g, mask).
std::vector<Tensor> masked_double_backward(const Tensor& gy, const Tensor& g, const Tensor& f, const Tensor& mask,
                                           const OptionalTensor& ag, const OptionalTensor& amask, double low,
                                           double high, bool need_gy, bool need_g, bool need_mask) {
  Launch L(PX_MASK_DBL, f);
  L.full_input(gy);
  L.full_input(g);
  L.full_input(f);
  L.param_input(mask);
  ag ? L.full_input(*ag) : L.param_input(zeros_like_scalar(f));
  L.param_input(amask ? *amask : zeros_like_scalar(f));
  L.set_gate(low, high);
  const int hgy = need_gy ? L.full_output(0) : -1;
  const int hg = need_g ? L.full_output(1) : -1;
  const int hm = need_mask ? L.param_output(3, 2) : -1;
  L.run();
  return {L.result(hgy), L.result(hg), L.result(hm)};
}

// FullGrad's per-site reduction of a backward hook's gradient, in one pass over g (see
// channel_stats.h): (low [N, C], high [N, C], weighted channel sum [N, H, W]) of m = |g| or
// |g| * 1[reference > threshold]. CPU, float32/float64, contiguous NCHW. Images run in parallel;
// fewer images than threads also split the channels, into partial sums added at the end.
std::vector<Tensor> abs_channel_stats(const Tensor& g, const Tensor& weight, const OptionalTensor& reference,
                                      double threshold) {
  TORCH_CHECK(g.is_cpu() && g.dim() == 4 && g.is_contiguous(), "pyexplain._C: abs_channel_stats takes a contiguous "
              "[N, C, H, W] CPU tensor");
  const auto dtype = g.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "pyexplain._C: abs_channel_stats takes float32 or float64, "
              "got ", dtype);
  const int64_t N = g.size(0), C = g.size(1), S = g.size(2) * g.size(3);
  TORCH_CHECK(weight.is_cpu() && weight.scalar_type() == dtype && weight.dim() == 1 && weight.size(0) == C &&
              weight.is_contiguous(), "pyexplain._C: the weight must be a contiguous [C] tensor of g's dtype");
  if (reference) {
    TORCH_CHECK(reference->is_cpu() && reference->scalar_type() == dtype && reference->sizes() == g.sizes() &&
                reference->is_contiguous(), "pyexplain._C: the reference must be a contiguous tensor shaped like g");
  }
  Tensor low = at::empty({N, C}, g.options()), high = at::empty({N, C}, g.options());
  Tensor sum = at::empty({N, g.size(2), g.size(3)}, g.options());
  TORCH_CHECK(S > 0, "pyexplain._C: abs_channel_stats needs at least one position");
  if (N == 0) return {low, high, sum};
  PxStatsArgs a{g.data_ptr(), reference ? reference->data_ptr() : nullptr, weight.data_ptr(), threshold,
                N, C, S, low.data_ptr(), high.data_ptr()};
  auto kernel = dtype == at::kFloat ? PX_CPU_KERNEL(abs_channel_stats_float) : PX_CPU_KERNEL(abs_channel_stats_double);
  const int64_t threads = at::get_num_threads();
  const int64_t work = N * C * S;
  const int64_t min_work = 1 << 15;  // fewer elements: one thread
  int64_t blocks = 1;                // channel blocks per image
  if (threads > 1 && N < threads && work >= min_work) blocks = std::min<int64_t>(C, (threads + N - 1) / N);
  if (blocks <= 1) {
    const int64_t grain = std::max<int64_t>(1, min_work / std::max<int64_t>(1, C * S));
    char* out = static_cast<char*>(sum.data_ptr());
    const int64_t row = S * static_cast<int64_t>(g.element_size());
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) kernel(a, n, 0, C, out + n * row);
    });
    return {low, high, sum};
  }
  Tensor partial = at::empty({blocks, N, S}, g.options());
  char* out = static_cast<char*>(partial.data_ptr());
  const int64_t row = S * static_cast<int64_t>(g.element_size());
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / N, n = t - b * N;
      kernel(a, n, C * b / blocks, C * (b + 1) / blocks, out + t * row);
    }
  });
  return {low, high, partial.sum(0).view(sum.sizes())};
}

// ε-LRP's backward divisions (see epsilon_rule.inc), one pass over contiguous CPU float32/float64
// tensors of one shape, split across threads in blocks.
constexpr int64_t PX_ELEMENTWISE_GRAIN = 1 << 15;

void check_same_layout(const char* op, const Tensor& first, std::initializer_list<const Tensor*> others) {
  const auto dtype = first.scalar_type();
  TORCH_CHECK(first.is_cpu() && first.is_contiguous() && (dtype == at::kFloat || dtype == at::kDouble),
              "pyexplain._C: ", op, " takes contiguous float32/float64 CPU tensors");
  for (const Tensor* t : others) {
    TORCH_CHECK(t->is_cpu() && t->is_contiguous() && t->scalar_type() == dtype && t->sizes() == first.sizes(),
                "pyexplain._C: ", op, " takes contiguous CPU tensors of one dtype and shape");
  }
}

// Calls body(byte offset, element count) on blocks covering `like`'s elements, across threads.
template <typename Body>
void for_element_blocks(const Tensor& like, const Body& body) {
  const int64_t size = like.element_size();
  at::parallel_for(0, like.numel(), PX_ELEMENTWISE_GRAIN,
                   [&](int64_t begin, int64_t end) { body(begin * size, end - begin); });
}

const char* bytes(const Tensor& t) { return static_cast<const char*>(t.data_ptr()); }
char* mutable_bytes(Tensor& t) { return static_cast<char*>(t.data_ptr()); }

Tensor epsilon_divide(const Tensor& r, const Tensor& z, double eps) {
  check_same_layout("epsilon_divide", r, {&z});
  Tensor out = at::empty_like(r);
  const bool is_float = r.scalar_type() == at::kFloat;
  auto kernel = is_float ? PX_CPU_KERNEL(epsilon_divide_float) : PX_CPU_KERNEL(epsilon_divide_double);
  const char *rp = bytes(r), *zp = bytes(z);
  char* op = mutable_bytes(out);
  for_element_blocks(r, [&](int64_t offset, int64_t count) {
    kernel(rp + offset, zp + offset, eps, op + offset, count);
  });
  return out;
}

std::vector<Tensor> proportional_split(const Tensor& r, const Tensor& a, const Tensor& b, double eps) {
  check_same_layout("proportional_split", r, {&a, &b});
  Tensor out_a = at::empty_like(r), out_b = at::empty_like(r);
  const bool is_float = r.scalar_type() == at::kFloat;
  auto kernel = is_float ? PX_CPU_KERNEL(proportional_split_float) : PX_CPU_KERNEL(proportional_split_double);
  const char *rp = bytes(r), *ap = bytes(a), *bp = bytes(b);
  char *oa = mutable_bytes(out_a), *ob = mutable_bytes(out_b);
  for_element_blocks(r, [&](int64_t offset, int64_t count) {
    kernel(rp + offset, ap + offset, bp + offset, eps, oa + offset, ob + offset, count);
  });
  return {out_a, out_b};
}

// DeepLIFT's rescale rule on a piecewise-linear activation (see rescale.h): (value, multiplier),
// both shaped like f, in one pass over f and the reference. CPU, float32/float64, contiguous f;
// the reference shaped like f or [1, ...] (shared by the batch). Parallel over flat element ranges.
std::vector<Tensor> rescale(const Tensor& f, const Tensor& reference, int64_t kind, double low, double high,
                            double slope, double eps) {
  TORCH_CHECK(f.is_cpu() && f.dim() >= 1 && f.numel() > 0 && f.is_contiguous(),
              "pyexplain._C: rescale takes a non-empty contiguous CPU tensor");
  const auto dtype = f.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "pyexplain._C: rescale takes float32 or float64, got ",
              dtype);
  TORCH_CHECK(kind == PX_RESCALE_RELU || kind == PX_RESCALE_HARDTANH || kind == PX_RESCALE_LEAKY,
              "pyexplain._C: unknown rescale kind ", kind);
  const bool shared = f.size(0) > 1 && reference.dim() == f.dim() && reference.size(0) == 1 &&
                      reference.sizes().slice(1) == f.sizes().slice(1);
  TORCH_CHECK(reference.is_cpu() && reference.scalar_type() == dtype && reference.is_contiguous() &&
              (shared || reference.sizes() == f.sizes()),
              "pyexplain._C: the reference must be a contiguous tensor of f's dtype, shaped like f or [1, ...]");
  Tensor value = at::empty_like(f), multiplier = at::empty_like(f);
  const PxRescaleArgs a{f.data_ptr(), reference.data_ptr(), f.numel() / f.size(0), shared, static_cast<int>(kind),
                        low, high, slope, eps, value.data_ptr(), multiplier.data_ptr()};
  auto kernel = dtype == at::kFloat ? PX_CPU_KERNEL(rescale_float) : PX_CPU_KERNEL(rescale_double);
  at::parallel_for(0, f.numel(), 1 << 15, [&](int64_t begin, int64_t end) { kernel(a, begin, end); });
  return {value, multiplier};
}

// Two sums of each tensor's values (see checksums.h): a [T, 2] float64 tensor, row t = (sum of
// every element, sum of element i times i + 1) of tensors[t] in flat order.
// CPU, contiguous, float32/float64/int64; the data is only read (a tensor that requires a gradient
// is read as it is). Tensors are shared among threads, each summed by one.
Tensor checksums(const std::vector<Tensor>& tensors) {
  const int64_t T = static_cast<int64_t>(tensors.size());
  Tensor out = at::empty({T, 2}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  std::vector<PxSumArgs> args(T);
  for (int64_t t = 0; t < T; ++t) {
    const Tensor& x = tensors[t];
    const auto dtype = x.scalar_type();
    TORCH_CHECK(x.is_cpu() && x.is_contiguous() &&
                (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kLong),
                "pyexplain._C: checksums takes contiguous float32, float64 or int64 CPU tensors");
    const int type = dtype == at::kFloat ? PX_SUM_FLOAT : (dtype == at::kDouble ? PX_SUM_DOUBLE : PX_SUM_INT64);
    args[t] = PxSumArgs{x.numel() > 0 ? x.data_ptr() : nullptr, x.numel(), type, o + 2 * t};
  }
  auto kernel = PX_CPU_KERNEL(checksums);
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) kernel(args[t]);
  });
  return out;
}

std::string set_cpu_isa(const std::string& isa) {
  const std::string previous = use_avx2 ? "avx2" : "default";
  TORCH_CHECK(isa == "default" || isa == "avx2", "pyexplain._C: cpu isa is 'default' or 'avx2', got '", isa, "'");
  TORCH_CHECK(isa == "default" || cpu_supports_avx2(), "pyexplain._C: this CPU or build has no AVX2+FMA kernels");
  use_avx2 = isa == "avx2";
  return previous;
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu_isa"] = use_avx2 ? "avx2" : "default";
  info["cpu_isa_available"] = cpu_supports_avx2() ? "default, avx2" : "default";
  info["openmp"] = static_cast<int>(_OPENMP);
#if defined(__GNUC__) && !defined(__clang__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string(__VERSION__);
#endif
#ifdef TORCH_VERSION
  info["torch"] = std::string(TORCH_VERSION);
#endif
#ifdef PYEXPLAIN_WITH_CUDA
  info["cuda"] = px_cuda_build_info();
#else
  info["cuda"] = std::string("not built");
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyexplain's fused kernels: LPR's plugin rule, the masked activation backward, FullGrad's channel stats, "
          "epsilon-LRP's divisions, DeepLIFT's rescale rule, value checksums";
  m.def("plugin_forward", &plugin_forward, "g * tanh(w * (f - ref))");
  m.def("plugin_backward", &plugin_backward, "first-order gradients of plugin_forward");
  m.def("plugin_double_backward", &plugin_double_backward, "gradients of plugin_backward");
  m.def("masked_forward", &masked_forward, "g * 1[low < f < high] * mask");
  m.def("masked_backward", &masked_backward, "first-order gradients of masked_forward");
  m.def("masked_double_backward", &masked_double_backward, "gradients of masked_backward");
  m.def("abs_channel_stats", &abs_channel_stats,
        "per-channel min and max over positions, and the weighted channel sum, of |g| (or |g| * 1[ref > t])");
  m.def("epsilon_divide", &epsilon_divide, "r / (z + eps * s(z)), s(z) = +1 for z >= 0 else -1");
  m.def("proportional_split", &proportional_split, "(a * q, b * q), q = r / (a + b + eps * s(a + b))");
  m.def("rescale", &rescale,
        "DeepLIFT's rescale rule on relu / hardtanh / leaky_relu: (phi(f), (phi(f) - phi(ref)) / (f - ref))");
  m.def("checksums", &checksums, "per tensor: the sum of its values and the sum of value i times i + 1");
  m.def("set_cpu_isa", &set_cpu_isa, "select the CPU kernels ('default' or 'avx2'); returns the previous choice");
  m.def("build_info", &build_info, "how this extension was built");
}
