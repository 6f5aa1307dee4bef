// lrkit's multi-tensor optimizer kernels for dense CPU float32/float64 tensors.
//
// One call updates every tensor of a param group: per-tensor scalars (step counters,
// bias corrections) are computed first, serially and in double precision as torch does
// in Python; then all tensors are cut into chunks of CHUNK elements and one OpenMP
// parallel loop runs over the chunks, so a thousand small tensors cost one parallel
// region, not a thousand. Each element is read and written once. The arithmetic mirrors
// the single-tensor reference in lrkit/optim operation by operation as ATen's vectorised
// CPU kernels compute them (scalars cast to the tensor's type; add(alpha=), lerp and
// addcmul as fused multiply-adds, addcdiv as a + (v * t1) / t2), so every operation is
// within 1 ulp of torch's single-tensor result on any CPU (square roots: the correctly
// rounded std::sqrt, where torch's CPU Tensor.sqrt takes MKL's routine; with
// LRKIT_KERNEL_SQRT=torch the kernels take MKL's too and, on x86-64 with FMA, equal torch
// bit for bit). Built without other FP contraction, so results do not depend on the
// thread count or the chunking.
//
// Plain C ABI, no torch headers: compiled on first use by lrkit/optim/_kernel.py, one
// library per algorithm (-DLRK_ONLY_adam ...) plus one with only the check.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#include <omp.h>

namespace {

constexpr int64_t CHUNK = 1 << 14;

struct Args {
  int64_t n;                 // number of tensors
  void** p;                  // params
  void** g;                  // grads
  void** s1;                 // state tensors (meaning per algorithm)
  void** s2;
  void** s3;
  void** sc1;                // per-tensor 0-dim state (step), float or double
  void** sc2;                // second per-tensor 0-dim state (NAdam mu_product)
  const int64_t* size;       // numel of each tensor
  const int8_t* first;       // per tensor: state buffer not yet initialised (SGD)
  double hp[12];             // hyperparameters (meaning per algorithm)
  int64_t flags;             // bit flags (meaning per algorithm, FLAG_* below)
  int32_t nthreads;
  int32_t sc_f64;            // sc1/sc2 hold doubles (default dtype float64)
  const int64_t* rows;       // Adafactor: size of the second-last dim (0: a vector)
  const int64_t* cols;       // Adafactor: size of the last dim
  void** s4;                 // a fourth state tensor (Prodigy: exp_avg_sq)
  double* out;               // per-tensor sums the step returns (n x the algorithm's count)
  const double* tv;          // per-tensor values in (LDoG: each tensor's step size)
  int64_t ival;              // an integer hyperparameter (Prodigy: slice_p)
  double gbound;             // F_ZERO: entries with |g| >= gbound count as zero (0: inf)
};

enum : int64_t {
  F_MAXIMIZE = 1, F_ZERO = 2, F_DECOUPLED = 4, F_AMSGRAD = 8, F_NESTEROV = 16,
  F_CENTERED = 32, F_MOMENTUM = 64, F_WD = 128,
  // the learning-rate-free kernels run in passes: what this call does
  F_ACC = 256, F_UPD = 512, F_FIRST = 1024, F_GSQ = 2048, F_FORWARD = 4096,
};

struct Chunk { int64_t t, lo, hi; };

std::vector<Chunk> chunks(const Args* a, bool reverse = true) {
  std::vector<Chunk> out;
  for (int64_t t = 0; t < a->n; ++t)
    for (int64_t lo = 0; lo < a->size[t]; lo += CHUNK)
      out.push_back({t, lo, std::min(a->size[t], lo + CHUNK)});
  // The updates walk the tensors backwards: the non-finite check has just read the
  // gradients forwards, so the last of them are still in the cache when the update starts.
  if (reverse) std::reverse(out.begin(), out.end());
  return out;
}

// Read, increment and write back a per-tensor step counter; returns the new value.
double bump(const Args* a, void** sc, int64_t t, double by = 1.0) {
  if (a->sc_f64) { double* s = (double*)sc[t]; *s += by; return *s; }
  float* s = (float*)sc[t]; *s += (float)by; return (double)*s;
}

// Run f(std::bool_constant<b>{}): loops are compiled once per value of the flags that
// decide which arrays they store to, with no branch inside.
template <typename F> inline void with(bool b, F&& f) {
  if (b) f(std::true_type{}); else f(std::false_type{});
}

// The same gradient with maximize and zero as compile-time switches (no work when off).
// ZERO: NaN, Inf and entries at or above the bound (whose square, or fourth power, would
// overflow the state: see the check below) count as zero.
// The test |x| < bound is made on the bits (a magnitude below the bound's, NaN's and Inf's
// above any finite one) and applied as a mask: no branch, so every loop reading gradients
// this way vectorises (a select on a float compare did not in some, and "zero" ran slower).
template <typename T, bool MAX, bool ZERO> struct GradT {
  static constexpr bool masks = ZERO || MAX;  // reads something other than g[j]
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U bound_bits;  // the bits of the (positive) bound
  inline T operator()(const T* __restrict__ g, int64_t j) const {
    T x = g[j];
    if constexpr (MAX) x = -x;
    if constexpr (ZERO) {
      U u;
      std::memcpy(&u, &x, sizeof(T));
      const U magnitude = u & ~((U)1 << (8 * sizeof(T) - 1));
      u &= (U)0 - (U)(magnitude < bound_bits);  // all ones where kept, else +0.0
      std::memcpy(&x, &u, sizeof(T));
    }
    return x;
  }
};

template <typename T, typename F> inline void with_grad(const Args* a, F&& f) {
  with(a->flags & F_MAXIMIZE, [&](auto MAX) {
    with(a->flags & F_ZERO, [&](auto ZERO) {
      // gbound 0 (a caller that does not set it): NaN and Inf only
      const T bound = a->gbound > 0 ? (T)a->gbound : std::numeric_limits<T>::infinity();
      using G = GradT<T, decltype(MAX)::value, decltype(ZERO)::value>;
      typename G::U bits;
      std::memcpy(&bits, &bound, sizeof(T));
      f(G{bits});
    });
  });
}

// a * b + c rounded once where the CPU has FMA (as ATen's vectorised kernels compute it)
template <typename T> inline T fma_(T a, T b, T c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// torch.lerp(self, end, w) for a scalar weight, as ATen's lerp_vec: fma(c, end - self,
// base) with (c, base) = (w, self) for |w| < 0.5, else (w - 1, end)
template <typename T> struct Lerp {
  T c;
  bool small;
  explicit Lerp(T w) : c(std::fabs(w) < T(0.5) ? w : w - T(1)), small(std::fabs(w) < T(0.5)) {}
  inline T operator()(T self, T end) const { return fma_(c, end - self, small ? self : end); }
};

template <typename T, typename Body>
void for_chunks(const Args* a, const std::vector<Chunk>& cs, Body body) {
  const int64_t nc = (int64_t)cs.size();
#pragma omp parallel for schedule(static) num_threads(a->nthreads) if (nc > 1)
  for (int64_t c = 0; c < nc; ++c) body(cs[c].t, cs[c].lo, cs[c].hi);
}

// ---------------------------------------------------------------- SGD
// hp: lr, momentum, dampening, weight_decay.  s1: momentum_buffer
template <typename T> void sgd(const Args* a) {
  const T lr = (T)a->hp[0], mu = (T)a->hp[1], damp1 = (T)(1.0 - a->hp[2]), wd = (T)a->hp[3];
  const bool nest = a->flags & F_NESTEROV;
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_MOMENTUM, [&](auto MOM) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ b = MOM ? (T*)a->s1[t] : nullptr;
      with(MOM && a->first[t], [&](auto FIRST) {
        for (int64_t j = lo; j < hi; ++j) {
          T d = grad(g, j);
          if constexpr (DEC) d = fma_(wd, p[j], d);
          if constexpr (MOM) {
            T buf;
            if constexpr (FIRST) buf = d; else buf = fma_(damp1, d, b[j] * mu);
            b[j] = buf;
            d = nest ? fma_(mu, buf, d) : buf;
          }
          p[j] = fma_(-lr, d, p[j]);
        }
      });
    });
  });
  });
  });
}

// ---------------------------------------------------------------- elementwise sqrt
// torch computes Tensor.sqrt() on CPU with MKL's vsSqrt/vdSqrt (not correctly rounded:
// up to 0.75 ulp); the kernels take the correctly rounded std::sqrt (vsqrtps/vsqrtpd), or
// with LRKIT_KERNEL_SQRT=torch the same MKL functions, found in libtorch (lrk_set_sqrt),
// on blocks of BLOCK elements.
// Each algorithm with a square root runs two loops per block: the first updates the
// state and gathers what goes under the root, the second finishes the update.
constexpr int64_t BLOCK = 512;
typedef void (*vsqrt_f32)(int, const float*, float*);
typedef void (*vsqrt_f64)(int, const double*, double*);
vsqrt_f32 g_vs = nullptr;
vsqrt_f64 g_vd = nullptr;

inline void vsqrt(int n, float* x) {
  if (g_vs) { g_vs(n, x, x); return; }
  for (int i = 0; i < n; ++i) x[i] = std::sqrt(x[i]);
}
inline void vsqrt(int n, double* x) {
  if (g_vd) { g_vd(n, x, x); return; }
  for (int i = 0; i < n; ++i) x[i] = std::sqrt(x[i]);
}
// Whether the square root is std::sqrt (not torch's MKL routine): then a loop can take the
// root in registers, in one pass, with the same result as the two loops over blocks.
template <typename T> inline bool inline_sqrt() {
  if constexpr (std::is_same_v<T, float>) return g_vs == nullptr; else return g_vd == nullptr;
}

// body(b0, b1, buf): the chunk [lo, hi) in blocks. The loop bodies capture constants by
// value ([=]): read through a reference they could alias the arrays being written, and
// the loops would not vectorise.
template <typename T, typename Body>
inline void blocks(int64_t lo, int64_t hi, Body body) {
  alignas(64) T buf[2 * BLOCK];
  for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) body(b0, std::min(hi, b0 + BLOCK), buf);
}

// The gradient with coupled (L2) weight decay where DEC: g + wd p.
template <bool DEC, typename G, typename T>
inline T decayed(const G& grad, const T* __restrict__ g, const T* __restrict__ p, T wd,
                 int64_t j) {
  T d = grad(g, j);
  if constexpr (DEC) d = fma_(wd, p[j], d);
  return d;
}

// An elementwise loop with one square root in it: first(j) updates the element's state and
// returns what to take the root of, then(j, root) finishes the element. With std::sqrt it
// is one loop, the root in registers; with torch's routine (a vector function), two loops
// over blocks with the roots taken between them. Both give the same results.
template <typename T, typename First, typename Then>
inline void rooted(int64_t lo, int64_t hi, First first, Then then) {
  if (inline_sqrt<T>()) {
    for (int64_t j = lo; j < hi; ++j) then(j, std::sqrt(first(j)));
    return;
  }
  blocks<T>(lo, hi, [=](int64_t b0, int64_t b1, T* __restrict__ r) {
    for (int64_t j = b0; j < b1; ++j) r[j - b0] = first(j);
    vsqrt((int)(b1 - b0), r);
    for (int64_t j = b0; j < b1; ++j) then(j, r[j - b0]);
  });
}

// ---------------------------------------------------------------- Adagrad
// hp: lr, lr_decay, weight_decay, eps.  s1: sum, sc1: step
template <typename T> void adagrad(const Args* a) {
  std::vector<T> clr(a->n);
  for (int64_t t = 0; t < a->n; ++t) {
    double step = bump(a, a->sc1, t);
    clr[t] = (T)(-(a->hp[0] / (1.0 + (step - 1.0) * a->hp[1])));
  }
  const T wd = (T)a->hp[2], eps = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=, &clr](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ s = (T*)a->s1[t];
      const T c = clr[t];
      constexpr bool D = decltype(DEC)::value;
      rooted<T>(lo, hi, [=](int64_t j) {
        T d = decayed<D>(grad, g, p, wd, j);
        T sum = fma_(d, d, s[j]);
        s[j] = sum;
        return sum;
      }, [=](int64_t j, T root) {
        p[j] = p[j] + (c * decayed<D>(grad, g, p, wd, j)) / (root + eps);
      });
    });
  });
  });
}

// ---------------------------------------------------------------- Adadelta
// hp: lr, rho, eps, weight_decay.  s1: square_avg, s2: acc_delta, sc1: step
template <typename T> void adadelta(const Args* a) {
  for (int64_t t = 0; t < a->n; ++t) bump(a, a->sc1, t);
  const T lr = (T)a->hp[0], rho = (T)a->hp[1], rho1 = (T)(1.0 - a->hp[1]), eps = (T)a->hp[2],
          wd = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ sq = (T*)a->s1[t];
      T* __restrict__ acc = (T*)a->s2[t];
      if (inline_sqrt<T>()) {  // std::sqrt: one loop, the roots in registers
        for (int64_t j = lo; j < hi; ++j) {
          T d = decayed<decltype(DEC)::value>(grad, g, p, wd, j);
          T sv = fma_(rho1 * d, d, sq[j] * rho);
          sq[j] = sv;
          T dx = std::sqrt(acc[j] + eps) / std::sqrt(sv + eps) * d;
          acc[j] = fma_(rho1 * dx, dx, acc[j] * rho);
          p[j] = fma_(-lr, dx, p[j]);
        }
        return;
      }
      blocks<T>(lo, hi, [=](int64_t b0, int64_t b1, T* __restrict__ r) {
        T* __restrict__ std_ = r;
        T* __restrict__ delta = r + BLOCK;
        for (int64_t j = b0; j < b1; ++j) {
          T d = grad(g, j);
          if constexpr (DEC) d = fma_(wd, p[j], d);
          T s = fma_(rho1 * d, d, sq[j] * rho);
          sq[j] = s;
          std_[j - b0] = s + eps;
          delta[j - b0] = acc[j] + eps;
        }
        vsqrt((int)(b1 - b0), std_);
        vsqrt((int)(b1 - b0), delta);
        for (int64_t j = b0; j < b1; ++j) {
          T d = grad(g, j);
          if constexpr (DEC) d = fma_(wd, p[j], d);
          T dx = delta[j - b0] / std_[j - b0] * d;
          acc[j] = fma_(rho1 * dx, dx, acc[j] * rho);
          p[j] = fma_(-lr, dx, p[j]);
        }
      });
    });
  });
  });
}

// ---------------------------------------------------------------- RMSprop
// hp: lr, alpha, eps, weight_decay, momentum.
// s1: square_avg, s2: momentum_buffer, s3: grad_avg, sc1: step
template <typename T> void rmsprop(const Args* a) {
  for (int64_t t = 0; t < a->n; ++t) bump(a, a->sc1, t);
  const T lr = (T)a->hp[0], alpha = (T)a->hp[1], alpha1 = (T)(1.0 - a->hp[1]),
          eps = (T)a->hp[2], wd = (T)a->hp[3], mu = (T)a->hp[4];
  with_grad<T>(a, [&](auto grad) {
  const Lerp<T> lerp(alpha1);
  with(a->flags & F_WD, [&](auto DEC) {
  with(a->flags & F_MOMENTUM, [&](auto MOM) {
  with(a->flags & F_CENTERED, [&](auto CEN) {
    for_chunks<T>(a, chunks(a), [=](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ sq = (T*)a->s1[t];
      T* __restrict__ buf = MOM ? (T*)a->s2[t] : nullptr;
      T* __restrict__ ga = CEN ? (T*)a->s3[t] : nullptr;
      constexpr bool D = decltype(DEC)::value;
      rooted<T>(lo, hi, [=](int64_t j) {
        T d = decayed<D>(grad, g, p, wd, j);
        T sv = fma_(alpha1 * d, d, sq[j] * alpha);
        sq[j] = sv;
        if constexpr (CEN) {
          T m = lerp(ga[j], d);
          ga[j] = m;
          sv = fma_(-m, m, sv);
        }
        return sv;
      }, [=](int64_t j, T root) {
        T d = decayed<D>(grad, g, p, wd, j);
        T avg = root + eps;
        if constexpr (MOM) {
          T b = buf[j] * mu + d / avg;
          buf[j] = b;
          p[j] = fma_(-lr, b, p[j]);
        } else {
          p[j] = p[j] + (-lr * d) / avg;
        }
      });
    });
  });
  });
  });
  });
}

// The Adam family: weight decay (coupled into the gradient, or decoupled: w * (1 - lr wd),
// a multiplication by 1 when there is none) and both moments.
template <typename T> struct Moments {
  Lerp<T> lerp;
  T tb2, w2, twd, decay;
  Moments(const Args* a, double lr, double b1, double b2, double wd)
      : lerp((T)(1.0 - b1)), tb2((T)b2), w2((T)(1.0 - b2)), twd((T)wd),
        decay((a->flags & F_DECOUPLED) && (a->flags & F_WD) ? (T)(1.0 - lr * wd) : T(1)) {}
  inline T coupled(T d, T w) const { return fma_(twd, w, d); }
  inline void update(T d, T* __restrict__ m, T* __restrict__ v, int64_t j, T& mm,
                     T& vv) const {
    mm = lerp(m[j], d);
    vv = fma_(w2 * d, d, v[j] * tb2);
    m[j] = mm;
    v[j] = vv;
  }
};

// ---------------------------------------------------------------- Adam / AdamW
// hp: lr, beta1, beta2, eps, weight_decay.  s1: exp_avg, s2: exp_avg_sq,
// s3: max_exp_avg_sq, sc1: step
template <typename T> void adam(const Args* a) {
  const double lr = a->hp[0], b1 = a->hp[1], b2 = a->hp[2], wd = a->hp[4];
  std::vector<T> neg_step(a->n), bc2s(a->n);
  for (int64_t t = 0; t < a->n; ++t) {
    double step = bump(a, a->sc1, t);
    neg_step[t] = (T)(-(lr / (1.0 - std::pow(b1, step))));
    bc2s[t] = (T)std::pow(1.0 - std::pow(b2, step), 0.5);
  }
  const Moments<T> k(a, lr, b1, b2, wd);
  const T eps = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  const bool coupled = (a->flags & F_WD) && !(a->flags & F_DECOUPLED);
  with(coupled, [&](auto DEC) {
  with(a->flags & F_AMSGRAD, [&](auto AMS) {
    for_chunks<T>(a, chunks(a), [=, &neg_step, &bc2s](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ m = (T*)a->s1[t];
      T* __restrict__ v = (T*)a->s2[t];
      T* __restrict__ vm = AMS ? (T*)a->s3[t] : nullptr;
      const T ns = neg_step[t], bc = bc2s[t];
      rooted<T>(lo, hi, [=](int64_t j) {
        T d = grad(g, j), mm, vv;
        if constexpr (DEC) d = k.coupled(d, p[j]);
        k.update(d, m, v, j, mm, vv);
        if constexpr (AMS) { vv = std::fmax(vm[j], vv); vm[j] = vv; }
        return vv;
      }, [=](int64_t j, T root) { p[j] = p[j] * k.decay + (ns * m[j]) / (root / bc + eps); });
    });
  });
  });
  });
}

// ---------------------------------------------------------------- NAdam
// hp: lr, beta1, beta2, eps, weight_decay, momentum_decay.
// s1: exp_avg, s2: exp_avg_sq, sc1: step, sc2: mu_product
template <typename T> void nadam(const Args* a) {
  const double lr = a->hp[0], b1 = a->hp[1], b2 = a->hp[2], wd = a->hp[4], md = a->hp[5];
  std::vector<T> bc2(a->n), cg(a->n), cm(a->n);
  for (int64_t t = 0; t < a->n; ++t) {
    double step = bump(a, a->sc1, t);
    double mu = b1 * (1.0 - 0.5 * std::pow(0.96, step * md));
    double mu_next = b1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * md));
    double prod;
    if (a->sc_f64) { double* s = (double*)a->sc2[t]; *s = *s * mu; prod = *s; }
    else { float* s = (float*)a->sc2[t]; *s = *s * (float)mu; prod = (double)*s; }
    bc2[t] = (T)(1.0 - std::pow(b2, step));
    cg[t] = (T)(-lr * (1.0 - mu) / (1.0 - prod));
    cm[t] = (T)((-lr * mu_next) / (1.0 - prod * mu_next));
  }
  const Moments<T> k(a, lr, b1, b2, wd);
  const T eps = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  const bool coupled = (a->flags & F_WD) && !(a->flags & F_DECOUPLED);
  with(coupled, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=, &bc2, &cg, &cm](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ m = (T*)a->s1[t];
      T* __restrict__ v = (T*)a->s2[t];
      const T b = bc2[t], c1 = cg[t], c2 = cm[t];
      // two explicit paths, not rooted(): written with it, the nonfinite="zero" variant did
      // not vectorise (a third of the speed, benchmarks/optim_step.py case (a))
      if (inline_sqrt<T>()) {  // std::sqrt: one loop, the root in registers
        const auto gr = grad;  // local copies: the loop vectorises (a capture does not)
        const Moments<T> km = k;
        for (int64_t j = lo; j < hi; ++j) {
          T d = gr(g, j), mm, vv;
          if constexpr (DEC) d = km.coupled(d, p[j]);
          km.update(d, m, v, j, mm, vv);
          T denom = std::sqrt(vv / b) + eps;
          T w = p[j] * km.decay + (c1 * d) / denom;
          p[j] = w + (c2 * mm) / denom;
        }
        return;
      }
      blocks<T>(lo, hi, [=](int64_t b0, int64_t b1, T* __restrict__ r) {
        for (int64_t j = b0; j < b1; ++j) {
          T d = grad(g, j), mm, vv;
          if constexpr (DEC) d = k.coupled(d, p[j]);
          k.update(d, m, v, j, mm, vv);
          r[j - b0] = vv / b;
        }
        vsqrt((int)(b1 - b0), r);
        for (int64_t j = b0; j < b1; ++j) {
          T d = grad(g, j);
          if constexpr (DEC) d = k.coupled(d, p[j]);
          T denom = r[j - b0] + eps;
          T w = p[j] * k.decay + (c1 * d) / denom;
          p[j] = w + (c2 * m[j]) / denom;
        }
      });
    });
  });
  });
}

// ---------------------------------------------------------------- RAdam
// hp: lr, beta1, beta2, eps, weight_decay.  s1: exp_avg, s2: exp_avg_sq, sc1: step
template <typename T> void radam(const Args* a) {
  const double lr = a->hp[0], b1 = a->hp[1], b2 = a->hp[2], wd = a->hp[4];
  std::vector<T> bc1(a->n), rect(a->n), bc2s(a->n);
  std::vector<int8_t> adaptive(a->n);
  const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
  for (int64_t t = 0; t < a->n; ++t) {
    double step = bump(a, a->sc1, t);
    double bc2 = 1.0 - std::pow(b2, step);
    double rho_t = rho_inf - 2.0 * step * std::pow(b2, step) / bc2;
    bc1[t] = (T)(1.0 - std::pow(b1, step));
    adaptive[t] = rho_t > 5.0;
    rect[t] = adaptive[t] ? (T)std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                        ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)
                          : T(0);
    bc2s[t] = (T)std::pow(bc2, 0.5);
  }
  const Moments<T> k(a, lr, b1, b2, wd);
  const T eps = (T)a->hp[3], tlr = (T)lr;
  with_grad<T>(a, [&](auto grad) {
  const bool coupled = (a->flags & F_WD) && !(a->flags & F_DECOUPLED);
  with(coupled, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=, &bc1, &rect, &bc2s, &adaptive](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ m = (T*)a->s1[t];
      T* __restrict__ v = (T*)a->s2[t];
      const T b1c = bc1[t], rr = rect[t], b2s = bc2s[t];
      auto moments = [=](int64_t j) {
        T d = grad(g, j), mm, vv;
        if constexpr (DEC) d = k.coupled(d, p[j]);
        k.update(d, m, v, j, mm, vv);
        return vv;
      };
      if (adaptive[t]) {
        // python float / tensor is tensor.reciprocal() * float in torch
        rooted<T>(lo, hi, moments, [=](int64_t j, T root) {
          p[j] = p[j] * k.decay - (m[j] / b1c * tlr) * ((T(1) / (root + eps)) * b2s) * rr;
        });
      } else {
        for (int64_t j = lo; j < hi; ++j) {
          moments(j);
          p[j] = p[j] * k.decay - m[j] / b1c * tlr;
        }
      }
    });
  });
  });
}

// ---------------------------------------------------------------- Adamax
// hp: lr, beta1, beta2, eps, weight_decay.  s1: exp_avg, s2: exp_inf, sc1: step
template <typename T> void adamax(const Args* a) {
  const double lr = a->hp[0], b1 = a->hp[1];
  std::vector<T> nclr(a->n);
  for (int64_t t = 0; t < a->n; ++t) {
    double step = bump(a, a->sc1, t);
    nclr[t] = (T)(-(lr / (1.0 - std::pow(b1, step))));
  }
  const Lerp<T> lerp((T)(1.0 - b1));
  const T tb2 = (T)a->hp[2], eps = (T)a->hp[3], wd = (T)a->hp[4];
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks<T>(a, chunks(a), [=, &nclr](int64_t t, int64_t lo, int64_t hi) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ m = (T*)a->s1[t];
      T* __restrict__ u = (T*)a->s2[t];
      const T c = nclr[t];
      for (int64_t j = lo; j < hi; ++j) {
        T d = grad(g, j);
        if constexpr (DEC) d = fma_(wd, p[j], d);
        T mm = lerp(m[j], d);
        m[j] = mm;
        T x = u[j] * tb2, y = std::fabs(d) + eps;
        T uu = x > y ? x : y;  // torch.maximum (no NaN here: the gradients are finite)
        u[j] = uu;
        p[j] = p[j] + (c * mm) / uu;
      }
    });
  });
  });
}

// ---------------------------------------------------------------- Lion
// hp: lr, beta1, beta2, weight_decay.  s1: exp_avg
template <typename T> void lion(const Args* a) {
  const double lr = a->hp[0], wd = a->hp[3];
  const T tb1 = (T)a->hp[1], w1 = (T)(1.0 - a->hp[1]), tb2 = (T)a->hp[2],
          w2 = (T)(1.0 - a->hp[2]), nlr = (T)(-lr),
          decay = (a->flags & F_WD) ? (T)(1.0 - lr * wd) : T(1);
  with_grad<T>(a, [&](auto grad) {
  for_chunks<T>(a, chunks(a), [=](int64_t t, int64_t lo, int64_t hi) {
    T* __restrict__ p = (T*)a->p[t];
    const T* __restrict__ g = (const T*)a->g[t];
    T* __restrict__ m = (T*)a->s1[t];
    for (int64_t j = lo; j < hi; ++j) {
      T d = grad(g, j);
      T c = fma_(w1, d, m[j] * tb1);
      T s = (c > T(0)) ? T(1) : ((c < T(0)) ? T(-1) : T(0));
      p[j] = fma_(nlr, s, p[j] * decay);
      m[j] = fma_(w2, d, m[j] * tb2);
    }
  });
  });
}

// ---------------------------------------------------------------- Adafactor
// hp: lr, beta2_decay, eps1 (< 0: the dtype's epsilon), eps2, d, weight_decay.
// s1: row_var (or variance for vectors), s2: col_var, sc1: step.
// Each tensor needs three reductions (RMS of the weight, row/column means of g^2, RMS of
// the update) before its weights change, so one thread takes a whole tensor (dynamic
// schedule) and makes its passes while the tensor sits in its cache: the memory traffic
// stays near the minimum (read w and g, write w). Sums are accumulated in double, in
// LANES partial sums so the loops vectorise. For matrices the update is
// g / sqrt(max(r_i c_j / mean(r), eps1^2)) = g * a_i * b_j with a_i = 1 / sqrt(r_i /
// mean(r)) and b_j = 1 / sqrt(c_j) wherever the clamp does not bite (no square root per
// element): equal to the reference to rounding, not bit for bit.
constexpr int LANES = 8;

template <typename T> inline double sumsq(const T* __restrict__ x, int64_t n) {
  double acc[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += (double)x[j + l] * (double)x[j + l];
  double s = 0;
  for (; j < n; ++j) s += (double)x[j] * (double)x[j];
  for (int l = 0; l < LANES; ++l) s += acc[l];
  return s;
}

template <typename T, typename G>
void adafactor_one(const Args* a, const G& grad, const T* __restrict__ g, int64_t t,
                   double step, std::vector<double>& colsum, std::vector<T>& scratch) {
  const double lr = a->hp[0], eps2 = a->hp[3], dd = a->hp[4], wd = a->hp[5];
  const T eps1 = a->hp[2] < 0 ? std::numeric_limits<T>::epsilon() : (T)a->hp[2];
  const Lerp<T> lerp((T)std::pow(step, a->hp[1]));
  T* __restrict__ p = (T*)a->p[t];
  const int64_t n = a->size[t], R = a->rows[t], C = a->cols[t];
  if (n == 0) return;  // an empty tensor (R or C may be 0): its step is counted, no more
  const double rho = std::min(lr, 1.0 / std::pow(step, 0.5));
  const double alpha = std::max(eps2, std::sqrt(sumsq(p, n)) / std::pow((double)n, 0.5)) * rho;
  const T e2 = eps1 * eps1, inv_e = T(1) / std::sqrt(e2);
  const T decay = (a->flags & F_WD) ? (T)(1.0 - lr * wd) : T(1);
  double su = 0;
  if (R == 0) {  // a vector: the full second moment
    T* __restrict__ v = (T*)a->s1[t];
    scratch.resize(n);
    T* __restrict__ f = scratch.data();
    for (int64_t j = 0; j < n; ++j) {
      T x = grad(g, j);
      T vv = lerp(v[j], x * x);
      v[j] = vv;
      f[j] = T(1) / std::sqrt(std::max(vv, e2));
    }
    double acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
      for (int l = 0; l < LANES; ++l) {
        double u = (double)(grad(g, j + l) * f[j + l]);
        acc[l] += u * u;
      }
    for (; j < n; ++j) { double u = (double)(grad(g, j) * f[j]); su += u * u; }
    for (int l = 0; l < LANES; ++l) su += acc[l];
    const T scale = (T)(-alpha / std::max(1.0, std::sqrt(su) / (std::pow((double)n, 0.5) * dd)));
    for (int64_t j2 = 0; j2 < n; ++j2) p[j2] = fma_(scale, grad(g, j2) * f[j2], p[j2] * decay);
    return;
  }
  // a batch of R x C matrices: row and column factors
  T* __restrict__ rv = (T*)a->s1[t];
  T* __restrict__ cv = (T*)a->s2[t];
  const int64_t B = n / (R * C);
  colsum.assign(C, 0.0);
  scratch.resize(R + C);
  T* __restrict__ ra = scratch.data();      // a_i
  T* __restrict__ cb = scratch.data() + R;  // b_j
  std::vector<T> rinv(B);                   // 1 / mean(r) of each matrix
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict__ gb = g + b * R * C;
    double* __restrict__ cs = colsum.data();
    std::fill(cs, cs + C, 0.0);
    double rsum = 0;
    for (int64_t i = 0; i < R; ++i) {
      double acc[LANES] = {0}, rs = 0;
      int64_t j = 0;
      const T* __restrict__ gi = gb + i * C;
      for (; j + LANES <= C; j += LANES)
        for (int l = 0; l < LANES; ++l) {
          double x = (double)grad(gi, j + l);
          acc[l] += x * x;
          cs[j + l] += x * x;
        }
      for (; j < C; ++j) { double x = (double)grad(gi, j); rs += x * x; cs[j] += x * x; }
      for (int l = 0; l < LANES; ++l) rs += acc[l];
      T r = lerp(rv[b * R + i], (T)(rs / (double)C));
      rv[b * R + i] = r;
      rsum += r;
    }
    for (int64_t j = 0; j < C; ++j) cv[b * C + j] = lerp(cv[b * C + j], (T)(cs[j] / (double)R));
    const T rmean = std::max((T)(rsum / (double)R), eps1);
    rinv[b] = T(1) / rmean;
    for (int64_t i = 0; i < R; ++i) ra[i] = T(1) / std::sqrt(rv[b * R + i] * rinv[b]);
    for (int64_t j = 0; j < C; ++j) cb[j] = T(1) / std::sqrt(cv[b * C + j]);
    for (int64_t i = 0; i < R; ++i) {
      const T ri = rv[b * R + i] * rinv[b], ai = ra[i];
      const T* __restrict__ gi = gb + i * C;
      const T* __restrict__ cvb = cv + b * C;
      double acc[LANES] = {0};
      int64_t j = 0;
      for (; j + LANES <= C; j += LANES)
        for (int l = 0; l < LANES; ++l) {
          T x = grad(gi, j + l);
          double u = (double)(ri * cvb[j + l] >= e2 ? x * ai * cb[j + l] : x * inv_e);
          acc[l] += u * u;
        }
      for (; j < C; ++j) {
        T x = grad(gi, j);
        double u = (double)(ri * cvb[j] >= e2 ? x * ai * cb[j] : x * inv_e);
        su += u * u;
      }
      for (int l = 0; l < LANES; ++l) su += acc[l];
    }
  }
  const T scale = (T)(-alpha / std::max(1.0, std::sqrt(su) / (std::pow((double)n, 0.5) * dd)));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < R; ++i) ra[i] = T(1) / std::sqrt(rv[b * R + i] * rinv[b]);
    for (int64_t j = 0; j < C; ++j) cb[j] = T(1) / std::sqrt(cv[b * C + j]);
    for (int64_t i = 0; i < R; ++i) {
      const T ri = rv[b * R + i] * rinv[b], ai = ra[i];
      T* __restrict__ pi = p + (b * R + i) * C;
      const T* __restrict__ gi = g + (b * R + i) * C;
      const T* __restrict__ cvb = cv + b * C;
      for (int64_t j = 0; j < C; ++j) {
        T x = grad(gi, j);
        T u = ri * cvb[j] >= e2 ? x * ai * cb[j] : x * inv_e;
        pi[j] = fma_(scale, u, pi[j] * decay);
      }
    }
  }
}

// the largest tensor whose masked gradient is copied once (4 MiB of float32, 8 MiB of
// float64: a buffer each thread keeps), not masked on each of the three reads
constexpr int64_t CLEAN_MAX = 1 << 20;

template <typename T> void adafactor(const Args* a) {
  std::vector<double> steps(a->n);
  for (int64_t t = 0; t < a->n; ++t) steps[t] = bump(a, a->sc1, t);
  with_grad<T>(a, [&](auto grad) {
#pragma omp parallel num_threads(a->nthreads) if (a->n > 1)
    {
      std::vector<double> colsum;
      std::vector<T> scratch;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < a->n; ++t) {
        const T* g = (const T*)a->g[t];
        if constexpr (decltype(grad)::masks) {
          // maximize or nonfinite="zero": the passes read the gradient three times, and
          // their loops vectorise with plain reads only (with the masked read some did
          // not, and "zero" ran at 0.7x the default); one masked copy into a buffer the
          // passes then read from the cache, where the tensor is not too large for it
          if (a->size[t] <= CLEAN_MAX) {
            const int64_t n = a->size[t];
            // kept by the thread between calls (grown, never shrunk): no allocation, page
            // faults or zero-filling per step
            static thread_local std::vector<T> clean;
            if ((int64_t)clean.size() < n) clean.resize(n);
            T* __restrict__ c = clean.data();
            const auto gr = grad;
            for (int64_t j = 0; j < n; ++j) c[j] = gr(g, j);
            adafactor_one<T>(a, GradT<T, false, false>{}, clean.data(), t, steps[t],
                             colsum, scratch);
            continue;
          }
        }
        adafactor_one<T>(a, grad, g, t, steps[t], colsum, scratch);
      }
    }
  });
}

// ================================================================ learning-rate-free
// Prodigy, D-Adaptation and DoG need sums over every parameter (a global d or step size)
// before they may update: one pass (F_ACC) updates the state and returns per-tensor sums,
// the host adds them in the reference's order and computes d, a second pass (F_UPD)
// moves the weights (DAdaptAdam and DAdaptSGD need no new d for that: F_ACC | F_UPD does
// both in one pass). Elementwise arithmetic mirrors the reference as the kernels above do;
// the sums are taken in double precision, each chunk in LANES partial sums, the chunks of
// a tensor added in order: more accurate than the reference's float32 reductions, and
// independent of the thread count (torch's are not: MKL's sdot splits by thread).

struct Lanes {
  double l[LANES] = {0};
  inline void add(const double* __restrict__ x, int64_t n) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
      for (int k = 0; k < LANES; ++k) l[k] += x[i + k];
    for (int k = 0; k < LANES && i + k < n; ++k) l[k] += x[i + k];
  }
  inline double total() const {
    double s = 0;
    for (int k = 0; k < LANES; ++k) s += l[k];
    return s;
  }
};

// body(t, lo, hi, sums): each chunk writes NOUT partial sums; a->out gets, per tensor,
// the chunks' sums added in chunk order.
template <int NOUT, typename Body>
void for_chunks_sums(const Args* a, Body body) {
  std::vector<Chunk> cs = chunks(a, false);
  const bool reverse = !(a->flags & F_FORWARD);
  const int64_t nc = (int64_t)cs.size();
  std::vector<double> part(nc * NOUT + 1, 0.0);
#pragma omp parallel for schedule(static) num_threads(a->nthreads) if (nc > 1)
  for (int64_t i = 0; i < nc; ++i) {
    const int64_t c = reverse ? nc - 1 - i : i;
    body(cs[c].t, cs[c].lo, cs[c].hi, &part[c * NOUT]);
  }
  if (NOUT > 0 && a->out) {
    for (int64_t k = 0; k < a->n * NOUT; ++k) a->out[k] = 0.0;
    for (int64_t c = 0; c < nc; ++c)
      for (int k = 0; k < NOUT; ++k) a->out[cs[c].t * NOUT + k] += part[c * NOUT + k];
  }
}

// ---------------------------------------------------------------- Prodigy
// F_ACC, hp: beta1, beta2, beta3, d (1 - beta1), d^2 (1 - beta2), s_scale, weight_decay
//   (coupled, F_WD); s1: p0 (first[t]: a 0-dim zero), s2: s, s3: exp_avg (F_MOMENTUM),
//   s4: exp_avg_sq; ival: slice_p. out: <g, p0 - p> and ||s||_1 per tensor.
// F_UPD, hp: -dlr (-dlr d without momentum), d eps, -weight_decay dlr (F_DECOUPLED),
//   weight_decay (coupled, F_WD).
template <typename T> void prodigy(const Args* a) {
  const T b1 = (T)a->hp[0], b2 = (T)a->hp[1], b3 = (T)a->hp[2], cm = (T)a->hp[3],
          cv = (T)a->hp[4], cs = (T)a->hp[5], wd = (T)a->hp[6];
  const bool coupled = (a->flags & F_WD) && !(a->flags & F_DECOUPLED);
  const int64_t sp = a->ival;
  if (!(a->flags & F_UPD)) {
    with_grad<T>(a, [&](auto grad) {
    with(coupled, [&](auto DEC) {
    with(a->flags & F_MOMENTUM, [&](auto MOM) {
      for_chunks_sums<2>(a, [=](int64_t t, int64_t lo, int64_t hi, double* sums) {
        T* __restrict__ p = (T*)a->p[t];
        const T* __restrict__ g = (const T*)a->g[t];
        const T* __restrict__ p0 = (const T*)a->s1[t];
        T* __restrict__ s = (T*)a->s2[t];
        T* __restrict__ m = MOM ? (T*)a->s3[t] : nullptr;
        T* __restrict__ v = (T*)a->s4[t];
        const bool zero0 = a->first[t];
        Lanes dot, l1;
        alignas(64) double t1[BLOCK], t2[BLOCK];
        if (sp == 1) {
          with(zero0, [&](auto Z0) {
            for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
              const int64_t b1_ = std::min(hi, b0 + BLOCK);
              for (int64_t j = b0; j < b1_; ++j) {
                T x = grad(g, j);
                if constexpr (DEC) x = fma_(wd, p[j], x);
                T diff;
                if constexpr (Z0) diff = T(0) - p[j]; else diff = p0[j] - p[j];
                t1[j - b0] = (double)x * (double)diff;
                if constexpr (MOM) m[j] = fma_(cm, x, m[j] * b1);
                v[j] = fma_(cv * x, x, v[j] * b2);
                T ss = fma_(cs, x, s[j] * b3);
                s[j] = ss;
                t2[j - b0] = std::fabs((double)ss);
              }
              dot.add(t1, b1_ - b0);
              l1.add(t2, b1_ - b0);
            }
          });
        } else {  // statistics on every sp-th entry only
          for (int64_t j = lo; j < hi; ++j) {
            T x = grad(g, j);
            if constexpr (DEC) x = fma_(wd, p[j], x);
            if constexpr (MOM) m[j] = fma_(cm, x, m[j] * b1);
            v[j] = fma_(cv * x, x, v[j] * b2);
          }
          int64_t n = 0;
          for (int64_t j = (lo + sp - 1) / sp * sp; j < hi; j += sp) {
            T x = grad(g, j);
            if constexpr (DEC) x = fma_(wd, p[j], x);
            const int64_t k = j / sp;
            T diff = (zero0 ? T(0) : p0[k]) - p[j];
            T ss = fma_(cs, x, s[k] * b3);
            s[k] = ss;
            t1[n] = (double)x * (double)diff;
            t2[n] = std::fabs((double)ss);
            if (++n == BLOCK) { dot.add(t1, n); l1.add(t2, n); n = 0; }
          }
          dot.add(t1, n);
          l1.add(t2, n);
        }
        sums[0] = dot.total();
        sums[1] = l1.total();
      });
    });
    });
    });
    return;
  }
  const T ndlr = (T)a->hp[0], deps = (T)a->hp[1], ndec = (T)a->hp[2], cwd = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_MOMENTUM, [&](auto MOM) {
  with((a->flags & F_WD) && (a->flags & F_DECOUPLED), [&](auto DECOUP) {
  with(coupled, [&](auto DEC) {
    for_chunks_sums<0>(a, [=](int64_t t, int64_t lo, int64_t hi, double*) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      const T* __restrict__ m = MOM ? (const T*)a->s3[t] : nullptr;
      const T* __restrict__ v = (const T*)a->s4[t];
      auto num = [=](int64_t j) {
        T x;
        if constexpr (MOM) x = m[j];
        else {
          x = grad(g, j);
          if constexpr (DEC) x = fma_(cwd, p[j], x);
        }
        return x;
      };
      if (inline_sqrt<T>()) {  // std::sqrt: one loop, the root in registers
        // local copies: read through the closure, the constants could alias the stores
        const auto num_ = num;
        const T ndec_ = ndec, ndlr_ = ndlr, deps_ = deps;
        for (int64_t j = lo; j < hi; ++j) {
          T w = p[j];
          if constexpr (DECOUP) w = fma_(ndec_, w, w);
          p[j] = w + (ndlr_ * num_(j)) / (std::sqrt(v[j]) + deps_);
        }
        return;
      }
      blocks<T>(lo, hi, [=](int64_t b0, int64_t b1_, T* __restrict__ r) {
        for (int64_t j = b0; j < b1_; ++j) r[j - b0] = v[j];
        vsqrt((int)(b1_ - b0), r);
        for (int64_t j = b0; j < b1_; ++j) {
          T w = p[j];
          if constexpr (DECOUP) w = fma_(ndec, w, w);
          p[j] = w + (ndlr * num(j)) / (r[j - b0] + deps);
        }
      });
    });
  });
  });
  });
  });
}

// ---------------------------------------------------------------- DAdaptAdam
// hp: eps, beta1, beta2, sqrt(beta2), layer_scale dlr (1 - beta1), 1 - beta2,
//   dlr (1 - sqrt(beta2)), weight_decay (coupled, F_WD), -weight_decay dlr (F_DECOUPLED).
// s1: s, s2: exp_avg, s3: exp_avg_sq. F_ACC: the moments, s, and per tensor
// <g, s / (sqrt(v) + eps)> (before the update) and ||s||_1 (after); F_UPD: the weights
// (needs no new d: both in one pass).
template <typename T> void dadapt_adam(const Args* a) {
  const T eps = (T)a->hp[0], b1 = (T)a->hp[1], b2 = (T)a->hp[2], sb2 = (T)a->hp[3],
          cm = (T)a->hp[4], w2 = (T)a->hp[5], cs = (T)a->hp[6], wd = (T)a->hp[7],
          ndec = (T)a->hp[8];
  const bool coupled = (a->flags & F_WD) && !(a->flags & F_DECOUPLED);
  with_grad<T>(a, [&](auto grad) {
  with(coupled, [&](auto DEC) {
  with((a->flags & F_WD) && (a->flags & F_DECOUPLED), [&](auto DECOUP) {
  with(a->flags & F_ACC, [&](auto ACC) {
  with(a->flags & F_UPD, [&](auto UPD) {
    for_chunks_sums<2>(a, [=](int64_t t, int64_t lo, int64_t hi, double* sums) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ s = (T*)a->s1[t];
      T* __restrict__ m = (T*)a->s2[t];
      T* __restrict__ v = (T*)a->s3[t];
      Lanes dot, l1;
      if constexpr (ACC && UPD) {
        static_assert(BLOCK % LANES == 0, "the blocks' lanes restart at each block");
        if (inline_sqrt<T>()) {  // std::sqrt: one loop, the roots in registers; the same
          // lanes and order of the sums as the blocks below (lane = (j - lo) % LANES)
          const auto gr = grad;  // local copies: the loop vectorises (a capture does not)
          auto one = [&](int64_t j, double& dk, double& lk) {
            T x = gr(g, j);
            if constexpr (DEC) x = fma_(wd, p[j], x);
            T q = s[j] / (std::sqrt(v[j]) + eps);
            dk += (double)x * (double)q;
            T mm = fma_(cm, x, m[j] * b1);
            m[j] = mm;
            T vv = fma_(w2 * x, x, v[j] * b2);
            v[j] = vv;
            T ss = fma_(cs, x, s[j] * sb2);
            s[j] = ss;
            lk += std::fabs((double)ss);
            T w = p[j];
            if constexpr (DECOUP) w = fma_(ndec, w, w);
            p[j] = w + (T(-1) * mm) / (std::sqrt(vv) + eps);
          };
          int64_t j = lo;
          for (; j + LANES <= hi; j += LANES)
            for (int k = 0; k < LANES; ++k) one(j + k, dot.l[k], l1.l[k]);
          for (int k = 0; j + k < hi; ++k) one(j + k, dot.l[k], l1.l[k]);
          sums[0] = dot.total();
          sums[1] = l1.total();
          return;
        }
      }
      alignas(64) double t1[BLOCK], t2[BLOCK];
      blocks<T>(lo, hi, [&](int64_t b0, int64_t b1_, T* __restrict__ r) {
        T* __restrict__ r1 = r;
        T* __restrict__ r2 = r + BLOCK;
        const int64_t n = b1_ - b0;
        if constexpr (ACC) {
          for (int64_t j = b0; j < b1_; ++j) r1[j - b0] = v[j];
          vsqrt((int)n, r1);
          for (int64_t j = b0; j < b1_; ++j) {
            T x = grad(g, j);
            if constexpr (DEC) x = fma_(wd, p[j], x);
            T q = s[j] / (r1[j - b0] + eps);
            t1[j - b0] = (double)x * (double)q;
            m[j] = fma_(cm, x, m[j] * b1);
            T vv = fma_(w2 * x, x, v[j] * b2);
            v[j] = vv;
            r2[j - b0] = vv;
            T ss = fma_(cs, x, s[j] * sb2);
            s[j] = ss;
            t2[j - b0] = std::fabs((double)ss);
          }
          dot.add(t1, n);
          l1.add(t2, n);
        } else {
          for (int64_t j = b0; j < b1_; ++j) r2[j - b0] = v[j];
        }
        if constexpr (UPD) {
          vsqrt((int)n, r2);
          for (int64_t j = b0; j < b1_; ++j) {
            T w = p[j];
            if constexpr (DECOUP) w = fma_(ndec, w, w);
            p[j] = w + (T(-1) * m[j]) / (r2[j - b0] + eps);
          }
        }
      });
      sums[0] = dot.total();
      sums[1] = l1.total();
    });
  });
  });
  });
  });
  });
}

// ---------------------------------------------------------------- DAdaptSGD
// hp: dlr, weight_decay (F_WD), ck = 1 - momentum, momentum.  s1: s, s2: x0.
// F_GSQ: out = ||g||^2 (the raw gradient, for ||g_0||). F_ACC: <g, s> (before) and ||s||^2
// (after s += dlr g); F_UPD: x = momentum x + ck (x0 - s).
template <typename T> void dadapt_sgd(const Args* a) {
  const T dlr = (T)a->hp[0], wd = (T)a->hp[1], ck = (T)a->hp[2], mom = (T)a->hp[3];
  with_grad<T>(a, [&](auto grad) {
  if (a->flags & F_GSQ) {
    for_chunks_sums<2>(a, [=](int64_t t, int64_t lo, int64_t hi, double* sums) {
      const T* __restrict__ g = (const T*)a->g[t];
      Lanes sq;
      alignas(64) double t1[BLOCK];
      for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t b1_ = std::min(hi, b0 + BLOCK);
        for (int64_t j = b0; j < b1_; ++j) {
          double x = (double)grad(g, j);
          t1[j - b0] = x * x;
        }
        sq.add(t1, b1_ - b0);
      }
      sums[0] = sq.total();
      sums[1] = 0.0;
    });
    return;
  }
  with(a->flags & F_WD, [&](auto DEC) {
  with(a->flags & F_ACC, [&](auto ACC) {
  with(a->flags & F_UPD, [&](auto UPD) {
    for_chunks_sums<2>(a, [=](int64_t t, int64_t lo, int64_t hi, double* sums) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ s = (T*)a->s1[t];
      const T* __restrict__ x0 = (const T*)a->s2[t];
      Lanes dot, sq;
      alignas(64) double t1[BLOCK], t2[BLOCK];
      for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t b1_ = std::min(hi, b0 + BLOCK);
        for (int64_t j = b0; j < b1_; ++j) {
          T ss = s[j];
          if constexpr (ACC) {
            T x = grad(g, j);
            if constexpr (DEC) x = fma_(wd, p[j], x);
            t1[j - b0] = (double)x * (double)ss;
            ss = fma_(dlr, x, ss);
            s[j] = ss;
            t2[j - b0] = (double)ss * (double)ss;
          }
          if constexpr (UPD) p[j] = fma_(ck, x0[j] - ss, p[j] * mom);
        }
        if constexpr (ACC) {
          dot.add(t1, b1_ - b0);
          sq.add(t2, b1_ - b0);
        }
      }
      sums[0] = dot.total();
      sums[1] = sq.total();
    });
  });
  });
  });
  });
}

// ---------------------------------------------------------------- DoG / LDoG
// hp: weight_decay (F_WD).  s1: x0.  F_ACC: per tensor ||x||^2 (F_FIRST) or ||x - x0||^2,
// and ||g + weight_decay x||^2; F_UPD: x -= tv[t] (g + weight_decay x).
template <typename T> void dog(const Args* a) {
  const T wd = (T)a->hp[0];
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
  if (a->flags & F_UPD) {
    for_chunks_sums<0>(a, [=](int64_t t, int64_t lo, int64_t hi, double*) {
      T* __restrict__ p = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      const T neta = (T)(-a->tv[t]);
      for (int64_t j = lo; j < hi; ++j) {
        T x = grad(g, j);
        if constexpr (DEC) x = fma_(wd, p[j], x);
        p[j] = fma_(neta, x, p[j]);
      }
    });
    return;
  }
  with(a->flags & F_FIRST, [&](auto FIRST) {
    for_chunks_sums<2>(a, [=](int64_t t, int64_t lo, int64_t hi, double* sums) {
      const T* __restrict__ p = (const T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      const T* __restrict__ x0 = FIRST ? nullptr : (const T*)a->s1[t];
      Lanes dist, gsq;
      alignas(64) double t1[BLOCK], t2[BLOCK];
      for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t b1_ = std::min(hi, b0 + BLOCK);
        for (int64_t j = b0; j < b1_; ++j) {
          T d;
          if constexpr (FIRST) d = p[j]; else d = p[j] - x0[j];
          t1[j - b0] = (double)d * (double)d;
          T x = grad(g, j);
          if constexpr (DEC) x = fma_(wd, p[j], x);
          t2[j - b0] = (double)x * (double)x;
        }
        dist.add(t1, b1_ - b0);
        gsq.add(t2, b1_ - b0);
      }
      sums[0] = dist.total();
      sums[1] = gsq.total();
    });
  });
  });
  });
}

// ---------------------------------------------------------------- schedule-free
// AdamW, hp: beta2, 1 - beta2, 1 - beta2^(k+1), eps, weight_decay (F_WD), c_{k+1},
//   lr (beta1 (1 - c) - 1), lr.  s1: z, s2: exp_avg_sq; the parameters hold y.
template <typename T> void sf_adamw(const Args* a) {
  const T b2 = (T)a->hp[0], w2 = (T)a->hp[1], bc2 = (T)a->hp[2], eps = (T)a->hp[3],
          wd = (T)a->hp[4], ya = (T)a->hp[6], nlr = (T)(-a->hp[7]);
  const Lerp<T> lerp((T)a->hp[5]);
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks_sums<0>(a, [=](int64_t t, int64_t lo, int64_t hi, double*) {
      T* __restrict__ y = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ z = (T*)a->s1[t];
      T* __restrict__ v = (T*)a->s2[t];
      if (inline_sqrt<T>()) {  // std::sqrt: one loop, the root in registers
        // local copies: read through the closure, the constants could alias the stores
        // and the loop would not vectorise
        const auto grad_ = grad;
        const Lerp<T> lerp_ = lerp;
        const T w2_ = w2, b2_ = b2, bc2_ = bc2, eps_ = eps, wd_ = wd, ya_ = ya, nlr_ = nlr;
        for (int64_t j = lo; j < hi; ++j) {
          T x = grad_(g, j);
          T vv = fma_(w2_ * x, x, v[j] * b2_);
          v[j] = vv;
          T gh = x / (std::sqrt(vv / bc2_) + eps_);
          T yy = y[j];
          if constexpr (DEC) gh = fma_(wd_, yy, gh);
          T zz = z[j];
          y[j] = fma_(ya_, gh, lerp_(yy, zz));
          z[j] = fma_(nlr_, gh, zz);
        }
        return;
      }
      blocks<T>(lo, hi, [=](int64_t b0, int64_t b1_, T* __restrict__ r) {
        for (int64_t j = b0; j < b1_; ++j) {
          T x = grad(g, j);
          T vv = fma_(w2 * x, x, v[j] * b2);
          v[j] = vv;
          r[j - b0] = vv / bc2;
        }
        vsqrt((int)(b1_ - b0), r);
        for (int64_t j = b0; j < b1_; ++j) {
          T gh = grad(g, j) / (r[j - b0] + eps);
          T yy = y[j];
          if constexpr (DEC) gh = fma_(wd, yy, gh);
          T zz = z[j];
          y[j] = fma_(ya, gh, lerp(yy, zz));
          z[j] = fma_(nlr, gh, zz);
        }
      });
    });
  });
  });
}

// SGD, hp: weight_decay (F_WD), c_{k+1}, lr (momentum (1 - c) - 1), lr.  s1: z.
template <typename T> void sf_sgd(const Args* a) {
  const T wd = (T)a->hp[0], ya = (T)a->hp[2], nlr = (T)(-a->hp[3]);
  const Lerp<T> lerp((T)a->hp[1]);
  with_grad<T>(a, [&](auto grad) {
  with(a->flags & F_WD, [&](auto DEC) {
    for_chunks_sums<0>(a, [=](int64_t t, int64_t lo, int64_t hi, double*) {
      T* __restrict__ y = (T*)a->p[t];
      const T* __restrict__ g = (const T*)a->g[t];
      T* __restrict__ z = (T*)a->s1[t];
      for (int64_t j = lo; j < hi; ++j) {
        T x = grad(g, j), yy = y[j], zz = z[j];
        if constexpr (DEC) x = fma_(wd, yy, x);
        y[j] = fma_(ya, x, lerp(yy, zz));
        z[j] = fma_(nlr, x, zz);
      }
    });
  });
  });
}

// ---------------------------------------------------------------- non-finite check
// Returns the smallest index of a tensor holding NaN, Inf or (power > 1) an entry whose
// power-th power overflows its dtype (|x| >= 2^(maxexp / power)), or -1. dtype codes:
// 0 float32, 1 float64, 2 bfloat16, 3 float16. Integer bit tests, so it vectorises.
template <typename U>
bool any_nonfinite(const void* data, int64_t lo, int64_t hi, U expmask) {
  // |x| as bits: NaN or Inf iff it is at least the all-ones exponent (a max: vectorises);
  // at least 2^k iff its bits are at least those of 2^k
  const U* __restrict__ x = (const U*)data;
  const U abs = (U)~((U)1 << (8 * sizeof(U) - 1));
  U m = 0;
  for (int64_t j = lo; j < hi; ++j) {
    U v = x[j] & abs;
    m = v > m ? v : m;
  }
  return m >= expmask;
}

}  // namespace

extern "C" {

// Each algorithm is built into its own library on first use (-DLRK_ONLY_<name>: a few
// seconds each, not the whole file's twenty); every library has the check below.
#define LRK_EXPORT(name)                                                      \
  void lrk_##name##_f32(const Args* a) { name<float>(a); }                   \
  void lrk_##name##_f64(const Args* a) { name<double>(a); }
#if defined(LRK_ONLY_sgd)
LRK_EXPORT(sgd)
#elif defined(LRK_ONLY_adagrad)
LRK_EXPORT(adagrad)
#elif defined(LRK_ONLY_adadelta)
LRK_EXPORT(adadelta)
#elif defined(LRK_ONLY_rmsprop)
LRK_EXPORT(rmsprop)
#elif defined(LRK_ONLY_adam)
LRK_EXPORT(adam)
#elif defined(LRK_ONLY_nadam)
LRK_EXPORT(nadam)
#elif defined(LRK_ONLY_radam)
LRK_EXPORT(radam)
#elif defined(LRK_ONLY_adamax)
LRK_EXPORT(adamax)
#elif defined(LRK_ONLY_lion)
LRK_EXPORT(lion)
#elif defined(LRK_ONLY_adafactor)
LRK_EXPORT(adafactor)
#elif defined(LRK_ONLY_prodigy)
LRK_EXPORT(prodigy)
#elif defined(LRK_ONLY_dadapt_adam)
LRK_EXPORT(dadapt_adam)
#elif defined(LRK_ONLY_dadapt_sgd)
LRK_EXPORT(dadapt_sgd)
#elif defined(LRK_ONLY_dog)
LRK_EXPORT(dog)
#elif defined(LRK_ONLY_sf_adamw)
LRK_EXPORT(sf_adamw)
#elif defined(LRK_ONLY_sf_sgd)
LRK_EXPORT(sf_sgd)
#endif

int64_t lrk_first_nonfinite(int64_t n, void** data, const int64_t* size,
                            const int32_t* dtype, int32_t nthreads, int32_t power) {
  // the bits of 2^(maxexp / power): biased exponent bias + maxexp / power (power 1: the
  // all-ones exponent of Inf and NaN)
  const uint32_t t32 = (uint32_t)(127 + 128 / power) << 23;
  const uint64_t t64 = (uint64_t)(1023 + 1024 / power) << 52;
  const uint16_t tb16 = (uint16_t)((127 + 128 / power) << 7);
  const uint16_t th16 = (uint16_t)((15 + 16 / power) << 10);
  Args a{};
  a.n = n;
  a.size = size;
  std::vector<Chunk> cs = chunks(&a, false);
  const int64_t nc = (int64_t)cs.size();
  int64_t first = n;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(min : first) \
    if (nc > 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& k = cs[c];
    if (k.t >= first) continue;
    bool bad;
    switch (dtype[k.t]) {
      case 0: bad = any_nonfinite<uint32_t>(data[k.t], k.lo, k.hi, t32); break;
      case 1: bad = any_nonfinite<uint64_t>(data[k.t], k.lo, k.hi, t64); break;
      case 2: bad = any_nonfinite<uint16_t>(data[k.t], k.lo, k.hi, tb16); break;
      default: bad = any_nonfinite<uint16_t>(data[k.t], k.lo, k.hi, th16); break;
    }
    if (bad && k.t < first) first = k.t;
  }
  return first == n ? -1 : first;
}

void lrk_set_sqrt(void* vs, void* vd) {
  g_vs = (vsqrt_f32)vs;
  g_vd = (vsqrt_f64)vd;
}

int32_t lrk_abi_version() { return 5; }

// 1 where the build target has FMA: fma_ rounds once, as ATen's vectorised kernels do
int32_t lrk_has_fma() {
#ifdef __FMA__
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
