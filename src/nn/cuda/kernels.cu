// Own CUDA kernels of the training ops (compiled to PTX by build.rs with the `cuda` feature).
// The math mirrors the CPU ops in src/nn/cpu/ line by line; see their docs for the formulas.
// Names end in the dtype: _f32, _f64 (all kernels) and _bf16 (the transposed-conv moves only).
#include <cuda_bf16.h>
#include <stdint.h>

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
                              i += (size_t)blockDim.x * gridDim.x)

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// Block-wide sum of a double (blockDim.x a multiple of 32, at most 1024); all threads get it.
__device__ double block_sum(double v) {
  __shared__ double part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : 0.0;
  if (wid == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  double r = part[0];
  __syncthreads();
  return r;
}

// ---- ReLU: x < 0 ? 0 : x (NaN passes); gradient where y > 0 (0 at exactly 0, as PyTorch).
template <typename T> __device__ void relu_fwd(size_t n, const T* x, T* y) {
  GRID_STRIDE(i, n) { T v = x[i]; y[i] = v < T(0) ? T(0) : v; }
}
template <typename T> __device__ void relu_bwd(size_t n, const T* y, const T* dy, T* dx) {
  GRID_STRIDE(i, n) { dx[i] = y[i] > T(0) ? dy[i] : T(0); }
}

// ---- 2x2 max-pool: NaN propagates (as a sum, like the CPU op); the first maximum of a window
// (row-major order) takes the gradient.
template <typename T> __device__ __forceinline__ T max4(T a, T b, T c, T d) {
  if (a != a || b != b || c != c || d != d) return a + b + c + d;
  T m = b > a ? b : a;
  T m2 = d > c ? d : c;
  return m2 > m ? m2 : m;
}
template <typename T> __device__ void pool_fwd(size_t n_out, size_t ow, size_t w, const T* x, T* y) {
  GRID_STRIDE(i, n_out) {
    size_t row = i / ow, j = i % ow;  // row = plane * oh + oi, input rows 2*row, 2*row + 1
    const T* r0 = x + 2 * row * w + 2 * j;
    const T* r1 = r0 + w;
    y[i] = max4(r0[0], r0[1], r1[0], r1[1]);
  }
}
template <typename T>
__device__ void pool_bwd(size_t n_out, size_t ow, size_t w, const T* x, const T* y, const T* dy, T* dx) {
  GRID_STRIDE(i, n_out) {
    size_t row = i / ow, j = i % ow;
    size_t o0 = 2 * row * w + 2 * j, o1 = o0 + w;
    T v[4] = {x[o0], x[o0 + 1], x[o1], x[o1 + 1]};
    T m = y[i];
    int k = 3;
    for (int q = 0; q < 3; q++)
      if (v[q] == m || (m != m && v[q] != v[q])) { k = q; break; }
    T g = dy[i];
    dx[o0] = k == 0 ? g : T(0);
    dx[o0 + 1] = k == 1 ? g : T(0);
    dx[o1] = k == 2 ? g : T(0);
    dx[o1 + 1] = k == 3 ? g : T(0);
  }
}

// ---- GroupNorm. One block per (image, group) of `len` contiguous values: mean, then the
// variance around it (two passes, double sums, like the CPU op).
template <typename T> __device__ void gn_stats(size_t len, double eps, const T* x, double* mean, double* rstd) {
  const T* xs = x + blockIdx.x * len;
  double s = 0.0;
  for (size_t i = threadIdx.x; i < len; i += blockDim.x) s += (double)xs[i];
  double m = block_sum(s) / (double)len;
  T mt = (T)m;
  double q = 0.0;
  for (size_t i = threadIdx.x; i < len; i += blockDim.x) { double d = (double)(xs[i] - mt); q += d * d; }
  double var = block_sum(q) / (double)len;
  if (threadIdx.x == 0) { mean[blockIdx.x] = m; rstd[blockIdx.x] = 1.0 / sqrt(var + eps); }
}
// y = x·scale_c + shift_c with scale = γ·rstd, shift = β − μ·scale (computed in double, cast).
template <typename T>
__device__ void gn_fwd(size_t n, size_t hw, size_t c, size_t cg, const T* x, const T* gamma, const T* beta,
                       const double* mean, const double* rstd, T* y) {
  GRID_STRIDE(i, n) {
    size_t bc = i / hw, ch = bc % c, j = (bc / c) * (c / cg) + ch / cg;
    double scale = (double)gamma[ch] * rstd[j];
    T sc = (T)scale, sh = (T)((double)beta[ch] - mean[j] * scale);
    y[i] = x[i] * sc + sh;
  }
}
// One block per (image, channel): Σdy and Σdy·x̂ = rstd·(Σdy·x − μ·Σdy).
template <typename T>
__device__ void gn_chsums(size_t hw, size_t c, size_t cg, const T* x, const T* dy, const double* mean,
                          const double* rstd, double* sdy, double* sdyxh) {
  size_t bc = blockIdx.x, ch = bc % c, j = (bc / c) * (c / cg) + ch / cg;
  const T* xs = x + bc * hw;
  const T* ds = dy + bc * hw;
  double a = 0.0, b = 0.0;
  for (size_t i = threadIdx.x; i < hw; i += blockDim.x) {
    double d = (double)ds[i];
    a += d;
    b += d * (double)xs[i];
  }
  a = block_sum(a);
  b = block_sum(b);
  if (threadIdx.x == 0) { sdy[bc] = a; sdyxh[bc] = rstd[j] * (b - mean[j] * a); }
}
// Per (image, group): a = Σ_g γ·Σdy / n and b = Σ_g γ·Σdy·x̂ / n.
template <typename T>
__device__ void gn_ab(size_t jobs, size_t c, size_t cg, size_t hw, const T* gamma, const double* sdy,
                      const double* sdyxh, double* a, double* b) {
  GRID_STRIDE(j, jobs) {
    size_t groups = c / cg, bi = j / groups, g = j % groups;
    double len = (double)(cg * hw), sa = 0.0, sb = 0.0;
    for (size_t ci = 0; ci < cg; ci++) {
      size_t k = bi * c + g * cg + ci;
      double gm = (double)gamma[g * cg + ci];
      sa += gm * sdy[k] / len;
      sb += gm * sdyxh[k] / len;
    }
    a[j] = sa;
    b[j] = sb;
  }
}
// dx = dy·p + x·q + r per channel: p = γ·rstd, q = −rstd²·b, r = rstd·(μ·rstd·b − a).
template <typename T>
__device__ void gn_dx(size_t n, size_t hw, size_t c, size_t cg, const T* x, const T* dy, const T* gamma,
                      const double* mean, const double* rstd, const double* ga, const double* gb, T* dx) {
  GRID_STRIDE(i, n) {
    size_t bc = i / hw, ch = bc % c, j = (bc / c) * (c / cg) + ch / cg;
    double rs = rstd[j], mu = mean[j], gm = (double)gamma[ch], a = ga[j], b = gb[j];
    T p = (T)(gm * rs), q = (T)(-rs * rs * b), r = (T)(rs * (mu * rs * b - a));
    dx[i] = dy[i] * p + x[i] * q + r;
  }
}
// dγ_c = Σ_b Σdy·x̂, dβ_c = Σ_b Σdy.
template <typename T>
__device__ void gn_affine(size_t bsz, size_t c, const double* sdy, const double* sdyxh, T* dgamma, T* dbeta) {
  GRID_STRIDE(ch, c) {
    double a = 0.0, b = 0.0;
    for (size_t bi = 0; bi < bsz; bi++) { a += sdy[bi * c + ch]; b += sdyxh[bi * c + ch]; }
    dgamma[ch] = (T)b;
    dbeta[ch] = (T)a;
  }
}

// ---- BCE + Dice: σ(x) and the stable BCE term in T, sums in double (atomics on 4 totals).
template <typename T> __device__ __forceinline__ void terms(T x, T t, T& p, T& bce) {
  T e = exp(-fabs(x));
  p = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  T relu = x > T(0) ? x : T(0);
  bce = relu - x * t + log1p(e);
}
template <typename T> __device__ void loss_sums(size_t n, const T* x, const T* t, double* out) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  GRID_STRIDE(i, n) {
    T p, b;
    terms(x[i], t[i], p, b);
    double tv = (double)t[i];
    s[0] += (double)b; s[1] += (double)p; s[2] += tv; s[3] += (double)p * tv;
  }
  for (int k = 0; k < 4; k++) {
    double v = block_sum(s[k]);
    if (threadIdx.x == 0) atomicAdd(out + k, v);
  }
}
template <typename T>
__device__ void loss_bwd(size_t n, const T* x, const T* t, T cb, T cd_2d, T cd_num, T* dx) {
  GRID_STRIDE(i, n) {
    T p, b;
    T tv = t[i];
    terms(x[i], tv, p, b);
    dx[i] = cb * (p - tv) + (cd_2d * tv - cd_num) * p * (T(1) - p);
  }
}

// ---- 2x2 stride-2 transposed conv data moves around the cuBLAS products. T_b (4O × HW) rows
// (o, kh, kw): y[b, o, 2h + kh, 2w + kw] = T[b, (o, kh, kw), h·W + w] + bias[o].
template <typename T>
__device__ void ct_scatter(size_t n, size_t co, size_t h, size_t w, const T* t, const T* bias, T* y) {
  GRID_STRIDE(i, n) {
    size_t ow = 2 * w, oh = 2 * h;
    size_t xx = i % ow, yy = (i / ow) % oh, o = (i / (ow * oh)) % co, b = i / (ow * oh * co);
    size_t q = o * 4 + (yy & 1) * 2 + (xx & 1);
    float v = to_acc(t[(b * 4 * co + q) * h * w + (yy >> 1) * w + (xx >> 1)]) + to_acc(bias[o]);
    y[i] = from_float<T>(v);
  }
}
template <> __device__ void ct_scatter<double>(size_t n, size_t co, size_t h, size_t w, const double* t,
                                               const double* bias, double* y) {
  GRID_STRIDE(i, n) {
    size_t ow = 2 * w, oh = 2 * h;
    size_t xx = i % ow, yy = (i / ow) % oh, o = (i / (ow * oh)) % co, b = i / (ow * oh * co);
    size_t q = o * 4 + (yy & 1) * 2 + (xx & 1);
    y[i] = t[(b * 4 * co + q) * h * w + (yy >> 1) * w + (xx >> 1)] + bias[o];
  }
}
// G[b, (o, kh, kw), h·W + w] = dy[b, o, 2h + kh, 2w + kw] (space-to-depth).
template <typename T> __device__ void ct_gather(size_t n, size_t co, size_t h, size_t w, const T* dy, T* g) {
  GRID_STRIDE(i, n) {
    size_t ow = 2 * w, oh = 2 * h;
    size_t xx = i % ow, yy = (i / ow) % oh, o = (i / (ow * oh)) % co, b = i / (ow * oh * co);
    size_t q = o * 4 + (yy & 1) * 2 + (xx & 1);
    g[(b * 4 * co + q) * h * w + (yy >> 1) * w + (xx >> 1)] = dy[i];
  }
}
// db[o] = Σ over images and the 2H×2W plane of dy; one block per channel.
template <typename T> __device__ void ct_bias_grad(size_t bsz, size_t co, size_t plane, const T* dy, T* db) {
  size_t o = blockIdx.x;
  double s = 0.0;
  for (size_t bi = 0; bi < bsz; bi++) {
    const T* p = dy + (bi * co + o) * plane;
    for (size_t i = threadIdx.x; i < plane; i += blockDim.x) s += (double)to_acc(p[i]);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) db[o] = from_float<T>((float)s);
}
template <> __device__ void ct_bias_grad<double>(size_t bsz, size_t co, size_t plane, const double* dy, double* db) {
  size_t o = blockIdx.x;
  double s = 0.0;
  for (size_t bi = 0; bi < bsz; bi++) {
    const double* p = dy + (bi * co + o) * plane;
    for (size_t i = threadIdx.x; i < plane; i += blockDim.x) s += p[i];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) db[o] = s;
}

#define FLOAT_OPS(T, S)                                                                              \
  extern "C" __global__ void relu_fwd_##S(size_t n, const T* x, T* y) { relu_fwd(n, x, y); }        \
  extern "C" __global__ void relu_bwd_##S(size_t n, const T* y, const T* dy, T* dx) {               \
    relu_bwd(n, y, dy, dx);                                                                          \
  }                                                                                                  \
  extern "C" __global__ void pool_fwd_##S(size_t n, size_t ow, size_t w, const T* x, T* y) {        \
    pool_fwd(n, ow, w, x, y);                                                                        \
  }                                                                                                  \
  extern "C" __global__ void pool_bwd_##S(size_t n, size_t ow, size_t w, const T* x, const T* y,    \
                                          const T* dy, T* dx) {                                      \
    pool_bwd(n, ow, w, x, y, dy, dx);                                                                \
  }                                                                                                  \
  extern "C" __global__ void gn_stats_##S(size_t len, double eps, const T* x, double* m, double* r) { \
    gn_stats(len, eps, x, m, r);                                                                     \
  }                                                                                                  \
  extern "C" __global__ void gn_fwd_##S(size_t n, size_t hw, size_t c, size_t cg, const T* x,       \
                                        const T* g, const T* b, const double* m, const double* r,    \
                                        T* y) {                                                      \
    gn_fwd(n, hw, c, cg, x, g, b, m, r, y);                                                          \
  }                                                                                                  \
  extern "C" __global__ void gn_chsums_##S(size_t hw, size_t c, size_t cg, const T* x, const T* dy, \
                                           const double* m, const double* r, double* a, double* b) { \
    gn_chsums(hw, c, cg, x, dy, m, r, a, b);                                                         \
  }                                                                                                  \
  extern "C" __global__ void gn_ab_##S(size_t jobs, size_t c, size_t cg, size_t hw, const T* g,    \
                                       const double* sa, const double* sb, double* a, double* b) {   \
    gn_ab(jobs, c, cg, hw, g, sa, sb, a, b);                                                         \
  }                                                                                                  \
  extern "C" __global__ void gn_dx_##S(size_t n, size_t hw, size_t c, size_t cg, const T* x,        \
                                       const T* dy, const T* g, const double* m, const double* r,    \
                                       const double* a, const double* b, T* dx) {                    \
    gn_dx(n, hw, c, cg, x, dy, g, m, r, a, b, dx);                                                   \
  }                                                                                                  \
  extern "C" __global__ void gn_affine_##S(size_t bsz, size_t c, const double* a, const double* b,  \
                                           T* dg, T* db) {                                           \
    gn_affine(bsz, c, a, b, dg, db);                                                                 \
  }                                                                                                  \
  extern "C" __global__ void loss_sums_##S(size_t n, const T* x, const T* t, double* out) {         \
    loss_sums(n, x, t, out);                                                                         \
  }                                                                                                  \
  extern "C" __global__ void loss_bwd_##S(size_t n, const T* x, const T* t, T cb, T c2, T cn,       \
                                          T* dx) {                                                   \
    loss_bwd(n, x, t, cb, c2, cn, dx);                                                               \
  }

#define MOVE_OPS(T, S)                                                                               \
  extern "C" __global__ void ct_scatter_##S(size_t n, size_t co, size_t h, size_t w, const T* t,    \
                                            const T* bias, T* y) {                                   \
    ct_scatter(n, co, h, w, t, bias, y);                                                             \
  }                                                                                                  \
  extern "C" __global__ void ct_gather_##S(size_t n, size_t co, size_t h, size_t w, const T* dy,    \
                                           T* g) {                                                   \
    ct_gather(n, co, h, w, dy, g);                                                                   \
  }                                                                                                  \
  extern "C" __global__ void ct_bias_grad_##S(size_t bsz, size_t co, size_t plane, const T* dy,     \
                                              T* db) {                                               \
    ct_bias_grad(bsz, co, plane, dy, db);                                                            \
  }

FLOAT_OPS(float, f32)
FLOAT_OPS(double, f64)
MOVE_OPS(float, f32)
MOVE_OPS(double, f64)
MOVE_OPS(__nv_bfloat16, bf16)
