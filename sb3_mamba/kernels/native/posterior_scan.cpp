/* MAMBA's RSSM posterior unroll, one step forward and backward, and DreamerV3's GRU cell, as fused loops;
 * registered as PyTorch custom ops and a custom class (namespace sb3_mamba) by the TORCH_LIBRARY block at
 * the end. Built on first use by sb3_mamba/kernels/native/__init__.py (torch.utils.cpp_extension).
 *
 * The Python loop in sb3_mamba/kernels/posterior_scan.py calls, per time step, the GRU's
 * (B, U + D) x (U + D, 3D) matmul through torch (oneDNN) and one method of PosteriorScan here
 * for everything else; through ATen that is ~30 small ops per step forward and ~35 backward.
 *
 *   forward_input(t)        img_in: one-hot latent and action -> Linear -> LayerNorm -> SiLU,
 *                           written with the previous deter as the GRU matmul's input x_h[t]
 *   forward_output(t, pre)  GRU gates from the matmul's output -> deter[t]; posterior
 *                           Linear -> LayerNorm -> SiLU -> Linear -> unimix softmax -> sample;
 *                           then forward_input(t + 1)
 *   backward_output(t, pre) the same in reverse down to the GRU gates' pre-activations (the
 *                           gates are recomputed from the matmul's output `pre`, not stored)
 *   backward_input(t, dx, pre_prev)  from the matmul's input gradient back to deter[t-1] and
 *                           stoch[t-1]; restarts; then backward_output(t - 1, pre_prev)
 *
 * Weight gradients are not computed here: the Python side takes each as one matmul over
 * all T x B rows of the saved buffers after the loop. Shapes (docs/shapes.md): T time, B batch,
 * D deter, U the cell's hidden width, S latents of C classes (SC = S * C), A action, K = SC + A.
 * All buffers are time-major and contiguous, held by the PosteriorScan object (each checked for
 * its dtype and shape when attached); x_h, d_gru_pre and the matmul outputs are in the compute
 * dtype (float32, or bfloat16 when `bf16`), everything else float32.
 * tests/test_kernels.py and tests/test_native.py compare every kernel with the eager modules.
 */
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#define restrict __restrict__  /* C99's keyword, GCC's spelling in C++ */

namespace {

struct Scan {
  int T, B, D, U, S, C, A, bf16;
  float unimix, grad_scale, eps_in, eps_gru, eps_post;
  /* weights, float32 (w_*_t: transposed copies) */
  const float *w_in, *w_in_t, *g_in, *b_in;    /* (U, K), (K, U), (U,), (U,) */
  const float *g_gru, *b_gru;                  /* (3D,): the update gate's -1 folded into b_gru */
  const float *w_pd, *w_pd_t, *g_post, *b_post; /* (U, D), (D, U), (U,), (U,) */
  const float *w_out, *w_out_t, *b_out;         /* (SC, U), (U, SC), (SC,) */
  const float *init_deter;                      /* (D,) */
  const int32_t *init_index;                    /* (S,) classes of the initial one-hot latent */
  /* inputs */
  const float *embed_proj, *action, *uniform;   /* (T, B, U), (T, B, A), (T, B, S) or NULL: the mode */
  const uint8_t *keep;                          /* (T, B): 0 where the row restarts */
  /* forward: outputs and what the backward reads */
  float *z_action;                              /* (T, B, K) img_in's input */
  void *x_h;                                    /* (T, B, U + D) the GRU matmul's input */
  float *in_pre, *in_mean, *in_rstd;            /* (T, B, U), (T, B), (T, B) */
  float *gru_mean, *gru_rstd;                   /* (T, B): the gates' norm (the backward recomputes the gates) */
  float *deter;                                 /* (T, B, D) */
  float *post_pre, *post_mean, *post_rstd, *post_y; /* (T, B, U), (T, B), (T, B), (T, B, U) */
  float *logits, *softmax, *stoch;              /* (T, B, SC) */
  int32_t *index;                               /* (T, B, S) sampled classes */
  /* backward */
  const float *grad_deter, *grad_stoch, *grad_logits; /* (T, B, D), (T, B, SC), (T, B, SC) */
  float *d_logits, *d_post_pre, *d_in_pre;      /* (T, B, SC), (T, B, U), (T, B, U) */
  void *d_gru_pre;                              /* (T, B, 3D) */
  float *d_g_in, *d_b_in, *d_g_gru, *d_b_gru, *d_g_post, *d_b_post, *d_init_deter; /* accumulated */
  float *carry_h, *carry_z, *d_h_prev;          /* (B, D), (B, SC), (B, D) */
};

/* -- scalar helpers (inlined into vectorised loops) --------------------------------------- */
static inline float exp_f(float x) {
  /* Cephes' expf: exp(x) = 2^n exp(r), |r| <= ln2 / 2, degree-5 polynomial (~1 ulp). NaN stays NaN. */
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365478515625f ? -87.3365478515625f : x;
  /* n = round(x / ln2) by the 1.5 * 2^23 trick (vectorises where floorf does not) */
  const float n = (1.44269504088896341f * x + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;  /* 2^n */
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }
static inline float tanh_f(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; }

static inline float bf16_load(const uint16_t *p, int64_t i) {
  union { uint32_t u; float f; } v;
  v.u = (uint32_t)p[i] << 16;
  return v.f;
}
static inline uint16_t bf16_round(float f) { /* round to nearest even, as torch; NaN -> 0x7fc0 */
  union { float f; uint32_t u; } v;
  v.f = f;
  if (f != f) return 0x7fc0;
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
/* n values of a compute-dtype buffer (from element `offset`) to float32, and back */
static void load_row(int n, const void *src, int bf16, int64_t offset, float *restrict dst) {
  if (!bf16) { memcpy(dst, (const float *)src + offset, sizeof(float) * n); return; }
  const uint16_t *restrict p = (const uint16_t *)src + offset;
#pragma omp simd
  for (int i = 0; i < n; i++) dst[i] = bf16_load(p, i);
}
static void store_row(int n, const float *restrict src, void *dst, int bf16, int64_t offset) {
  if (!bf16) { memcpy((float *)dst + offset, src, sizeof(float) * n); return; }
  uint16_t *restrict p = (uint16_t *)dst + offset;
  for (int i = 0; i < n; i++) p[i] = bf16_round(src[i]);
}

/* out (M, N) (+)= x (M, K) @ w (K, N); leading dimensions ldx, ldw, ldo. 4-row register blocks of
 * NV vectors (each weight row is loaded once per 4 rows of x): 4 x 64 with AVX-512 (16 accumulators
 * of its 32 registers); 4 x 16 otherwise, where AVX2's 16 registers would spill 16 accumulators
 * of two halves each. The rest plain loops. */
#if defined(__AVX512F__)
#define VW 16 /* floats per vector */
#define NV 4  /* vectors per block row */
#else
#define VW 8
#define NV 2
#endif
#define NB (VW * NV) /* block columns */
typedef float vecf __attribute__((vector_size(VW * sizeof(float))));
static inline vecf vload(const float *p) { vecf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vecf v) { memcpy(p, &v, sizeof v); }

static void matmul(int M, int K, int N, const float *restrict x, int ldx, const float *restrict w, int ldw,
                   float *restrict out, int ldo, int accumulate) {
  int m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) {
    int n0 = 0;
    for (; n0 + NB <= N; n0 += NB) {
      vecf acc[4][NV];
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < NV; j++)
          acc[i][j] = accumulate ? vload(out + (int64_t)(m0 + i) * ldo + n0 + VW * j) : vecf{};
      for (int k = 0; k < K; k++) {
        const float *wk = w + (int64_t)k * ldw + n0;
        vecf wv[NV];
        for (int j = 0; j < NV; j++) wv[j] = vload(wk + VW * j);
        for (int i = 0; i < 4; i++) {
          const float xi = x[(int64_t)(m0 + i) * ldx + k];
          for (int j = 0; j < NV; j++) acc[i][j] += xi * wv[j];
        }
      }
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < NV; j++) vstore(out + (int64_t)(m0 + i) * ldo + n0 + VW * j, acc[i][j]);
    }
    if (n0 < N)  /* the columns left of these four rows */
      for (int i = 0; i < 4; i++) {
        float *restrict o = out + (int64_t)(m0 + i) * ldo;
        if (!accumulate) memset(o + n0, 0, sizeof(float) * (N - n0));
        for (int k = 0; k < K; k++) {
          const float xi = x[(int64_t)(m0 + i) * ldx + k];
          const float *restrict wk = w + (int64_t)k * ldw;
#pragma omp simd
          for (int n = n0; n < N; n++) o[n] += xi * wk[n];
        }
      }
  }
  for (; m0 < M; m0++) {  /* the rows left */
    float *restrict o = out + (int64_t)m0 * ldo;
    if (!accumulate) memset(o, 0, sizeof(float) * N);
    for (int k = 0; k < K; k++) {
      const float xk = x[(int64_t)m0 * ldx + k];
      const float *restrict wk = w + (int64_t)k * ldw;
#pragma omp simd
      for (int n = 0; n < N; n++) o[n] += xk * wk[n];
    }
  }
}

/* LayerNorm over W: x -> xhat = (x - mean) * rstd (returned in xhat), y = xhat * g + b; mean/rstd out */
static void layer_norm(int W, const float *restrict x, const float *restrict g, const float *restrict b, float eps,
                       float *restrict xhat, float *restrict y, float *mean_out, float *rstd_out) {
  float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < W; i++) sum += x[i];
  const float mean = sum / W;
#pragma omp simd reduction(+ : sq)
  for (int i = 0; i < W; i++) sq += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / sqrtf(sq / W + eps);
#pragma omp simd
  for (int i = 0; i < W; i++) xhat[i] = (x[i] - mean) * rstd;
  if (y) {
#pragma omp simd
    for (int i = 0; i < W; i++) y[i] = xhat[i] * g[i] + b[i];
  }
  if (mean_out) *mean_out = mean;
  *rstd_out = rstd;
}

/* LayerNorm backward: d_y (W), xhat (W) -> d_x (W); accumulates d_g += d_y * xhat, d_b += d_y unless
 * d_g is NULL (frozen affine parameters) */
static void layer_norm_backward(int W, const float *restrict d_y, const float *restrict xhat, const float *restrict g,
                                float rstd, float *restrict d_x, float *restrict d_g, float *restrict d_b) {
  float mean_d = 0.0f, mean_dx = 0.0f;
#pragma omp simd reduction(+ : mean_d, mean_dx)
  for (int i = 0; i < W; i++) {
    const float d = d_y[i] * g[i];
    mean_d += d;
    mean_dx += d * xhat[i];
  }
  mean_d /= W;
  mean_dx /= W;
  if (d_g) {
#pragma omp simd
    for (int i = 0; i < W; i++) {
      d_g[i] += d_y[i] * xhat[i];
      d_b[i] += d_y[i];
    }
  }
#pragma omp simd
  for (int i = 0; i < W; i++) d_x[i] = rstd * (d_y[i] * g[i] - mean_d - xhat[i] * mean_dx);
}

/* xhat (3D) normalised gate pre-activations -> reset, cand_in, cand = tanh(reset * cand_in), update (D each);
 * g, bias: the norm's affine parameters, the update gate's -1 folded into bias */
static inline void gru_gates(int D, const float *restrict g, const float *restrict bias, const float *restrict xhat,
                             float *restrict reset, float *restrict cand_in, float *restrict cand,
                             float *restrict update) {
#pragma omp simd
  for (int d = 0; d < D; d++) {
    reset[d] = sigmoid_f(xhat[d] * g[d] + bias[d]);
    cand_in[d] = xhat[D + d] * g[D + d] + bias[D + d];
    cand[d] = tanh_f(reset[d] * cand_in[d]);
    update[d] = sigmoid_f(xhat[2 * D + d] * g[2 * D + d] + bias[2 * D + d]);
  }
}

/* GRU cell backward for one row, deter = h_prev + update * (cand - h_prev): xhat (3D) and rstd of the gate
 * layer's LayerNorm, h_prev (D), d_h (D) -> d_h_prev (D) (the path through the update alone) and d_pre (3D);
 * accumulates the norm's d_g, d_b unless NULL */
static void gru_cell_backward_row(int D, const float *restrict g, const float *restrict bias,
                                  const float *restrict xhat, float rstd, const float *restrict h_prev,
                                  const float *restrict d_h, float *restrict d_h_prev, float *restrict d_pre,
                                  float *restrict d_g, float *restrict d_b) {
  float reset[D], cand_in[D], cand[D], update[D], d_gates[3 * D];
  gru_gates(D, g, bias, xhat, reset, cand_in, cand, update);
#pragma omp simd
  for (int d = 0; d < D; d++) {
    const float d_cand = d_h[d] * update[d];
    d_h_prev[d] = d_h[d] - d_cand;
    const float d_tanh = d_cand * (1.0f - cand[d] * cand[d]);
    d_gates[d] = d_tanh * cand_in[d] * reset[d] * (1.0f - reset[d]);
    d_gates[D + d] = d_tanh * reset[d];
    d_gates[2 * D + d] = d_h[d] * (cand[d] - h_prev[d]) * update[d] * (1.0f - update[d]);
  }
  layer_norm_backward(3 * D, d_gates, xhat, g, rstd, d_pre, d_g, d_b);
}

/* One row of S latents: logits (S * C) -> softmax (S * C), unimix probabilities, and per latent the
 * class sampled with `uniform` (S,) by inverse CDF as torch.searchsorted (NULL: the mode) -> index (S,)
 * and its one-hot stoch (S * C) */
static void sample_latents(int S, int C, float unimix, const float *logits, const float *uniform, float *softmax,
                           int32_t *index, float *stoch) {
  for (int i = 0; i < S; i++) {
    const float *l = logits + i * C;
    float *p = softmax + i * C;
    float max = l[0], sum = 0.0f;
#pragma omp simd reduction(max : max)
    for (int c = 1; c < C; c++) max = l[c] > max ? l[c] : max;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) sum += (p[c] = exp_f(l[c] - max));
    const float inverse = 1.0f / sum;
#pragma omp simd
    for (int c = 0; c < C; c++) p[c] *= inverse;
  }
  if (uniform) {
    /* the sampled class is the number of CDF values below u: all S latents at once, class by class
     * (no data-dependent branch); the CDF in double, as torch's CPU cumsum */
    double cdf[S];
    for (int i = 0; i < S; i++) cdf[i] = 0.0, index[i] = 0;
    for (int c = 0; c < C; c++) {
#pragma omp simd
      for (int i = 0; i < S; i++) {
        cdf[i] += (double)(unimix / C + (1.0f - unimix) * softmax[i * C + c]);
        index[i] += (float)cdf[i] < uniform[i];
      }
    }
    for (int i = 0; i < S; i++) index[i] = index[i] < C - 1 ? index[i] : C - 1;
  } else {  /* the mode: unimix keeps the order, the first maximum as torch.argmax */
    for (int i = 0; i < S; i++) {
      const float *p = softmax + i * C;
      int chosen = 0;
      for (int c = 1; c < C; c++) chosen = p[c] > p[chosen] ? c : chosen;
      index[i] = chosen;
    }
  }
  memset(stoch, 0, sizeof(float) * S * C);
  for (int i = 0; i < S; i++) stoch[i * C + index[i]] = 1.0f;
}

static inline int keeps(const Scan *s, int t, int b) { return t > 0 && s->keep[(int64_t)t * s->B + b]; }
static inline const float *previous_deter(const Scan *s, int t, int b) {
  return keeps(s, t, b) ? s->deter + ((int64_t)(t - 1) * s->B + b) * s->D : s->init_deter;
}

/* -- forward ------------------------------------------------------------------------------ */
static void forward_input(const Scan *s, int t) {
  const int B = s->B, D = s->D, U = s->U, S = s->S, C = s->C, A = s->A, SC = S * C, K = SC + A;
  const int64_t first = (int64_t)t * B;  /* row of (t, b = 0) */
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    const int keep = keeps(s, t, b);
    const int32_t *index = keep ? s->index + (row - B) * S : s->init_index;
    float *z_action = s->z_action + row * K, *pre = s->in_pre + row * U;
    /* z_action = [one-hot latent, action (zero where the state restarts)]; with a one-hot
     * input the matmul is a sum of S rows of w_in_t plus the action's part */
    memset(z_action, 0, sizeof(float) * SC);
    memset(pre, 0, sizeof(float) * U);
    for (int i = 0; i < S; i++) {
      z_action[i * C + index[i]] = 1.0f;
      const float *restrict w = s->w_in_t + (int64_t)(i * C + index[i]) * U;
#pragma omp simd
      for (int e = 0; e < U; e++) pre[e] += w[e];
    }
    for (int a = 0; a < A; a++) z_action[SC + a] = keep ? s->action[row * A + a] : 0.0f;
    matmul(1, A, U, z_action + SC, A, s->w_in_t + (int64_t)SC * U, U, pre, U, 1);
    float xhat[U], y[U];
    layer_norm(U, pre, s->g_in, s->b_in, s->eps_in, xhat, y, s->in_mean + row, s->in_rstd + row);
#pragma omp simd
    for (int e = 0; e < U; e++) y[e] *= sigmoid_f(y[e]);  /* SiLU */
    store_row(U, y, s->x_h, s->bf16, row * (U + D));
    store_row(D, previous_deter(s, t, b), s->x_h, s->bf16, row * (U + D) + U);
  }
}

static void forward_output(const Scan *s, int t, const void *gru_pre) {
  const int B = s->B, D = s->D, U = s->U, S = s->S, C = s->C, SC = S * C;
  const int64_t first = (int64_t)t * B;
  /* GRU: LayerNorm over the three gates, DreamerV3's gate functions */
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    float pre[3 * D], xhat[3 * D], reset[D], cand_in[D], cand[D], update[D];
    load_row(3 * D, gru_pre, s->bf16, (int64_t)b * 3 * D, pre);
    layer_norm(3 * D, pre, NULL, NULL, s->eps_gru, xhat, NULL, s->gru_mean + row, s->gru_rstd + row);
    gru_gates(D, s->g_gru, s->b_gru, xhat, reset, cand_in, cand, update);
    const float *restrict h_prev = previous_deter(s, t, b);
    float *restrict h = s->deter + row * D;
#pragma omp simd
    for (int d = 0; d < D; d++) h[d] = h_prev[d] + update[d] * (cand[d] - h_prev[d]);
  }
  /* posterior: Linear(deter) + Linear(embed) (precomputed) -> LayerNorm -> SiLU -> Linear */
  float *post_pre = s->post_pre + first * U, *post_y = s->post_y + first * U, *logits = s->logits + first * SC;
  memcpy(post_pre, s->embed_proj + first * U, sizeof(float) * B * U);
  matmul(B, D, U, s->deter + first * D, D, s->w_pd_t, U, post_pre, U, 1);
  for (int b = 0; b < B; b++) {
    float xhat[U], *restrict y = post_y + (int64_t)b * U;
    layer_norm(U, post_pre + (int64_t)b * U, s->g_post, s->b_post, s->eps_post, xhat, y, s->post_mean + first + b,
               s->post_rstd + first + b);
#pragma omp simd
    for (int e = 0; e < U; e++) y[e] *= sigmoid_f(y[e]);
    memcpy(logits + (int64_t)b * SC, s->b_out, sizeof(float) * SC);
  }
  matmul(B, U, SC, post_y, U, s->w_out_t, SC, logits, SC, 1);
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    sample_latents(S, C, s->unimix, s->logits + row * SC, s->uniform ? s->uniform + row * S : NULL,
                   s->softmax + row * SC, s->index + row * S, s->stoch + row * SC);
  }
  if (t + 1 < s->T) forward_input(s, t + 1);
}

/* -- backward ----------------------------------------------------------------------------- */
static void backward_output(const Scan *s, int t, const void *gru_pre) {
  const int B = s->B, D = s->D, U = s->U, S = s->S, C = s->C, SC = S * C;
  const int64_t first = (int64_t)t * B;
  /* straight-through sample -> unimix softmax -> logits */
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    const float *softmax = s->softmax + row * SC, *grad_stoch = s->grad_stoch + row * SC;
    const float *carry_z = s->carry_z + (int64_t)b * SC;
    float *d_logits = s->d_logits + row * SC;
    for (int i = 0; i < S; i++) {
      float d_p[C], dot = 0.0f;
      for (int c = 0; c < C; c++) {
        d_p[c] = (grad_stoch[i * C + c] + carry_z[i * C + c]) * s->grad_scale;
        dot += d_p[c] * softmax[i * C + c];
      }
      for (int c = 0; c < C; c++)
        d_logits[i * C + c] = s->grad_logits[row * SC + i * C + c] + softmax[i * C + c] * (d_p[c] - dot);
    }
  }
  /* posterior layers back to deter_t */
  float d_y[B * U], d_h[B * D];
  matmul(B, SC, U, s->d_logits + first * SC, SC, s->w_out, U, d_y, U, 0);
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    const float *post_pre = s->post_pre + row * U, mean = s->post_mean[row], rstd = s->post_rstd[row];
    float xhat[U], *restrict dy = d_y + (int64_t)b * U;
#pragma omp simd
    for (int e = 0; e < U; e++) {
      xhat[e] = (post_pre[e] - mean) * rstd;
      const float x = xhat[e] * s->g_post[e] + s->b_post[e], sig = sigmoid_f(x);
      dy[e] *= sig * (1.0f + x * (1.0f - sig));  /* SiLU backward */
    }
    layer_norm_backward(U, dy, xhat, s->g_post, rstd, s->d_post_pre + row * U, s->d_g_post, s->d_b_post);
    const float *restrict grad_deter = s->grad_deter + row * D, *restrict carry = s->carry_h + (int64_t)b * D;
#pragma omp simd
    for (int d = 0; d < D; d++) d_h[(int64_t)b * D + d] = grad_deter[d] + carry[d];
  }
  matmul(B, U, D, s->d_post_pre + first * U, U, s->w_pd, D, d_h, D, 1);
  /* GRU cell: deter_t = h_prev + u * (c - h_prev), c = tanh(r * cand_in) */
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    float pre[3 * D], xhat[3 * D], d_pre[3 * D];
    load_row(3 * D, gru_pre, s->bf16, (int64_t)b * 3 * D, pre);
    const float mean = s->gru_mean[row], rstd = s->gru_rstd[row];
#pragma omp simd
    for (int i = 0; i < 3 * D; i++) xhat[i] = (pre[i] - mean) * rstd;  /* as layer_norm: the same gates */
    gru_cell_backward_row(D, s->g_gru, s->b_gru, xhat, rstd, previous_deter(s, t, b), d_h + (int64_t)b * D,
                          s->d_h_prev + (int64_t)b * D, d_pre, s->d_g_gru, s->d_b_gru);
    store_row(3 * D, d_pre, s->d_gru_pre, s->bf16, row * 3 * D);
  }
}

static void backward_input(const Scan *s, int t, const void *d_x_h, const void *gru_pre_previous) {
  const int B = s->B, D = s->D, U = s->U, S = s->S, C = s->C, A = s->A, SC = S * C, K = SC + A;
  const int64_t first = (int64_t)t * B;
  /* img_in back to stoch_{t-1}: SiLU, LayerNorm, Linear */
  for (int b = 0; b < B; b++) {
    const int64_t row = first + b;
    float d_y[U], xhat[U];
    load_row(U, d_x_h, s->bf16, (int64_t)b * (U + D), d_y);
    const float *pre = s->in_pre + row * U, mean = s->in_mean[row], rstd = s->in_rstd[row];
#pragma omp simd
    for (int e = 0; e < U; e++) {
      xhat[e] = (pre[e] - mean) * rstd;
      const float x = xhat[e] * s->g_in[e] + s->b_in[e], sig = sigmoid_f(x);
      d_y[e] *= sig * (1.0f + x * (1.0f - sig));
    }
    layer_norm_backward(U, d_y, xhat, s->g_in, rstd, s->d_in_pre + row * U, s->d_g_in, s->d_b_in);
  }
  matmul(B, U, SC, s->d_in_pre + first * U, U, s->w_in, K, s->carry_z, SC, 0);
  for (int b = 0; b < B; b++) {
    float d_h_prev[D];
    load_row(D, d_x_h, s->bf16, (int64_t)b * (U + D) + U, d_h_prev);
    const float *restrict from_gru = s->d_h_prev + (int64_t)b * D;
    float *restrict carry_h = s->carry_h + (int64_t)b * D;
    if (keeps(s, t, b)) {
#pragma omp simd
      for (int d = 0; d < D; d++) carry_h[d] = d_h_prev[d] + from_gru[d];
    } else {  /* the row restarted: its previous state is the learned initial state */
      for (int d = 0; d < D; d++) s->d_init_deter[d] += d_h_prev[d] + from_gru[d];
      memset(carry_h, 0, sizeof(float) * D);
      memset(s->carry_z + (int64_t)b * SC, 0, sizeof(float) * SC);
    }
  }
  if (t > 0) backward_output(s, t - 1, gru_pre_previous);
}

/* -- the GRU cell alone ------------------------------------------------------------------- */
/* Rows [row_begin, row_end) of an imagination step without gradients: pre (rows, 3D) the gate layer's
 * output (compute dtype), h_prev (rows, D) with row stride ld_h -> h_out (rows, D). Where index is not
 * NULL, the state's rows are shared: row r reads h_prev row index[r] and adds the gate layer's state half
 * state_pre (compute dtype, (*, 3D)) row index[r] to pre. Same arithmetic as the scan's forward.
 * Thread-safe: callers split the rows between threads. */
static void gru_cell_forward(int64_t row_begin, int64_t row_end, int D, const void *pre, int bf16, const void *state_pre,
                      const int64_t *index, const float *g, const float *bias, float eps, const float *h_prev,
                      int ld_h, float *h_out) {
  for (int64_t r = row_begin; r < row_end; r++) {
    float x[3 * D], xhat[3 * D], reset[D], cand_in[D], cand[D], update[D], rstd;
    const int64_t state_row = index ? index[r] : r;
    load_row(3 * D, pre, bf16, r * 3 * D, x);
    if (index) {
      load_row(3 * D, state_pre, bf16, state_row * 3 * D, xhat);
#pragma omp simd
      for (int i = 0; i < 3 * D; i++) x[i] += xhat[i];
    }
    layer_norm(3 * D, x, NULL, NULL, eps, xhat, NULL, NULL, &rstd);
    gru_gates(D, g, bias, xhat, reset, cand_in, cand, update);
    const float *restrict h = h_prev + state_row * ld_h;
    float *restrict out = h_out + r * D;
#pragma omp simd
    for (int d = 0; d < D; d++) out[d] = h[d] + update[d] * (cand[d] - h[d]);
  }
}

/* Rows [row_begin, row_end) of gru_cell_forward's backward, the norm's parameters frozen: pre (rows, 3D)
 * and h_prev as in the forward, d_h (rows, D) -> d_pre (rows, 3D, pre's compute dtype: what the gate layer's
 * matmul backward takes) and d_h_prev (rows, D), the latter only the path through the update (the gate
 * layer's path comes from d_pre's matmul). Recomputes the LayerNorm and gates from pre instead of saving them. */
static void gru_cell_backward_rows(int64_t row_begin, int64_t row_end, int D, const void *pre, int bf16, const float *g,
                       const float *bias, float eps, const float *h_prev, int ld_h, const float *d_h, void *d_pre,
                       float *d_h_prev) {
  for (int64_t r = row_begin; r < row_end; r++) {
    float x[3 * D], xhat[3 * D], d_x[3 * D], rstd;
    load_row(3 * D, pre, bf16, r * 3 * D, x);
    layer_norm(3 * D, x, NULL, NULL, eps, xhat, NULL, NULL, &rstd);
    gru_cell_backward_row(D, g, bias, xhat, rstd, h_prev + r * ld_h, d_h + r * D, d_h_prev + r * D, d_x, NULL,
                          NULL);
    store_row(3 * D, d_x, d_pre, bf16, r * 3 * D);
  }
}

}  // namespace

/* -- PyTorch bindings ----------------------------------------------------------------------- */
namespace {

using Shape = std::vector<int64_t>;

/* A checked view of a contiguous CPU tensor of `dtype` and `shape`: its data for the kernels. */
void *data_of(const at::Tensor &tensor, const char *name, at::ScalarType dtype, const Shape &shape) {
  TORCH_CHECK(tensor.device().is_cpu(), "sb3_mamba kernels: ", name, " must be on the CPU");
  TORCH_CHECK(tensor.scalar_type() == dtype, "sb3_mamba kernels: ", name, " must be ", dtype, ", got ",
              tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(shape), "sb3_mamba kernels: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), "sb3_mamba kernels: ", name, " must be contiguous");
  return tensor.data_ptr();
}

}  // namespace

/* One posterior unroll: the sizes, the buffers the kernels read and write (held here, so they live as long
 * as the unroll's autograd node), and the four step methods of the header comment. */
struct PosteriorScan : torch::CustomClassHolder {
  Scan scan{};
  c10::Dict<std::string, at::Tensor> buffers;
  at::ScalarType compute_dtype = at::kFloat;

  PosteriorScan(c10::Dict<std::string, int64_t> sizes, c10::Dict<std::string, double> scalars,
                c10::Dict<std::string, at::Tensor> tensors) {
    scan.T = sizes.at("T"), scan.B = sizes.at("B"), scan.D = sizes.at("D"), scan.U = sizes.at("U");
    scan.S = sizes.at("S"), scan.C = sizes.at("C"), scan.A = sizes.at("A"), scan.bf16 = sizes.at("bf16");
    TORCH_CHECK(scan.T > 0 && scan.B > 0 && scan.D > 0 && scan.U > 0 && scan.S > 0 && scan.C > 0 && scan.A >= 0,
                "sb3_mamba kernels: PosteriorScan sizes must be positive");
    scan.unimix = scalars.at("unimix"), scan.grad_scale = scalars.at("grad_scale");
    scan.eps_in = scalars.at("eps_in"), scan.eps_gru = scalars.at("eps_gru"), scan.eps_post = scalars.at("eps_post");
    compute_dtype = scan.bf16 ? at::kBFloat16 : at::kFloat;
    attach(tensors);
  }

  /* Hold and point the kernels at these named buffers (checked); a name not listed is an error. */
  void attach(c10::Dict<std::string, at::Tensor> tensors) {
    for (const auto &item : tensors) {
      buffers.insert_or_assign(item.key(), item.value());
      bind(item.key(), item.value());
    }
  }

  /* Drop these buffers (the outputs autograd keeps: holding them here would be a reference cycle). */
  void release(std::vector<std::string> names) {
    for (const auto &name : names) {
      buffers.erase(name);
      bind(name, at::Tensor());
    }
  }

  void forward_input(int64_t t) { forward_input_at(check_step(t)); }
  void forward_output(int64_t t, at::Tensor gru_pre) {
    ::forward_output(&scan, check_step(t), data_of(gru_pre, "gru_pre", compute_dtype, {scan.B, 3 * scan.D}));
  }
  void backward_output(int64_t t, at::Tensor gru_pre) {
    ::backward_output(&scan, check_step(t), data_of(gru_pre, "gru_pre", compute_dtype, {scan.B, 3 * scan.D}));
  }
  void backward_input(int64_t t, at::Tensor d_x_h, std::optional<at::Tensor> gru_pre_previous) {
    check_step(t);
    TORCH_CHECK(t == 0 || gru_pre_previous.has_value(), "sb3_mamba kernels: backward_input needs the previous ",
                "step's gru_pre");
    ::backward_input(&scan, t, data_of(d_x_h, "d_x_h", compute_dtype, {scan.B, scan.U + scan.D}),
                     t > 0 ? data_of(*gru_pre_previous, "gru_pre", compute_dtype, {scan.B, 3 * scan.D}) : nullptr);
  }

 private:
  void forward_input_at(int t) { ::forward_input(&scan, t); }

  int check_step(int64_t t) const {
    TORCH_CHECK(t >= 0 && t < scan.T, "sb3_mamba kernels: step ", t, " outside [0, ", scan.T, ")");
    return static_cast<int>(t);
  }

  void bind(const std::string &name, const at::Tensor &tensor) {
    const int64_t T = scan.T, B = scan.B, D = scan.D, U = scan.U, S = scan.S, SC = scan.S * scan.C, A = scan.A;
    const int64_t K = SC + A;
    const bool none = !tensor.defined();
    auto f32 = [&](const Shape &shape) { return none ? nullptr : static_cast<float *>(data_of(tensor, name.c_str(), at::kFloat, shape)); };
    auto low = [&](const Shape &shape) { return none ? nullptr : data_of(tensor, name.c_str(), compute_dtype, shape); };
    auto i32 = [&](const Shape &shape) { return none ? nullptr : static_cast<int32_t *>(data_of(tensor, name.c_str(), at::kInt, shape)); };
    auto u8 = [&](const Shape &shape) { return none ? nullptr : static_cast<uint8_t *>(data_of(tensor, name.c_str(), at::kByte, shape)); };
    /* weights */
    if (name == "w_in") scan.w_in = f32({U, K});
    else if (name == "w_in_t") scan.w_in_t = f32({K, U});
    else if (name == "g_in") scan.g_in = f32({U});
    else if (name == "b_in") scan.b_in = f32({U});
    else if (name == "g_gru") scan.g_gru = f32({3 * D});
    else if (name == "b_gru") scan.b_gru = f32({3 * D});
    else if (name == "w_pd") scan.w_pd = f32({U, D});
    else if (name == "w_pd_t") scan.w_pd_t = f32({D, U});
    else if (name == "g_post") scan.g_post = f32({U});
    else if (name == "b_post") scan.b_post = f32({U});
    else if (name == "w_out") scan.w_out = f32({SC, U});
    else if (name == "w_out_t") scan.w_out_t = f32({U, SC});
    else if (name == "b_out") scan.b_out = f32({SC});
    else if (name == "init_deter") scan.init_deter = f32({D});
    else if (name == "init_index") scan.init_index = i32({S});
    /* inputs */
    else if (name == "embed_proj") scan.embed_proj = f32({T, B, U});
    else if (name == "action") scan.action = f32({T, B, A});
    else if (name == "uniform") scan.uniform = f32({T, B, S});
    else if (name == "keep") scan.keep = u8({T, B});
    /* forward */
    else if (name == "z_action") scan.z_action = f32({T, B, K});
    else if (name == "x_h") scan.x_h = low({T, B, U + D});
    else if (name == "in_pre") scan.in_pre = f32({T, B, U});
    else if (name == "in_mean") scan.in_mean = f32({T, B});
    else if (name == "in_rstd") scan.in_rstd = f32({T, B});
    else if (name == "gru_mean") scan.gru_mean = f32({T, B});
    else if (name == "gru_rstd") scan.gru_rstd = f32({T, B});
    else if (name == "deter") scan.deter = f32({T, B, D});
    else if (name == "post_pre") scan.post_pre = f32({T, B, U});
    else if (name == "post_mean") scan.post_mean = f32({T, B});
    else if (name == "post_rstd") scan.post_rstd = f32({T, B});
    else if (name == "post_y") scan.post_y = f32({T, B, U});
    else if (name == "logits") scan.logits = f32({T, B, SC});
    else if (name == "softmax") scan.softmax = f32({T, B, SC});
    else if (name == "stoch") scan.stoch = f32({T, B, SC});
    else if (name == "index") scan.index = i32({T, B, S});
    /* backward */
    else if (name == "grad_deter") scan.grad_deter = f32({T, B, D});
    else if (name == "grad_stoch") scan.grad_stoch = f32({T, B, SC});
    else if (name == "grad_logits") scan.grad_logits = f32({T, B, SC});
    else if (name == "d_logits") scan.d_logits = f32({T, B, SC});
    else if (name == "d_post_pre") scan.d_post_pre = f32({T, B, U});
    else if (name == "d_in_pre") scan.d_in_pre = f32({T, B, U});
    else if (name == "d_gru_pre") scan.d_gru_pre = low({T, B, 3 * D});
    else if (name == "d_g_in") scan.d_g_in = f32({U});
    else if (name == "d_b_in") scan.d_b_in = f32({U});
    else if (name == "d_g_gru") scan.d_g_gru = f32({3 * D});
    else if (name == "d_b_gru") scan.d_b_gru = f32({3 * D});
    else if (name == "d_g_post") scan.d_g_post = f32({U});
    else if (name == "d_b_post") scan.d_b_post = f32({U});
    else if (name == "d_init_deter") scan.d_init_deter = f32({D});
    else if (name == "carry_h") scan.carry_h = f32({B, D});
    else if (name == "carry_z") scan.carry_z = f32({B, SC});
    else if (name == "d_h_prev") scan.d_h_prev = f32({B, D});
    else TORCH_CHECK(false, "sb3_mamba kernels: PosteriorScan has no buffer named '", name, "'");
  }
};

namespace {

/* DreamerV3's GRU cell after its gate layer, no gradients: see sb3_mamba.kernels.native.gru_cell. */
at::Tensor gru_cell(const at::Tensor &pre, const at::Tensor &h_prev, const at::Tensor &norm_weight,
                    const at::Tensor &norm_bias, double eps, const std::optional<at::Tensor> &state_pre,
                    const std::optional<at::Tensor> &rows) {
  TORCH_CHECK(pre.dim() == 2 && h_prev.dim() == 2 && pre.size(1) == 3 * h_prev.size(1),
              "sb3_mamba kernels: gru_cell takes pre (N, 3D) and h_prev (N or P, D)");
  TORCH_CHECK(pre.scalar_type() == at::kFloat || pre.scalar_type() == at::kBFloat16,
              "sb3_mamba kernels: gru_cell's pre must be float32 or bfloat16");
  TORCH_CHECK(h_prev.scalar_type() == at::kFloat && h_prev.stride(1) == 1 && h_prev.device().is_cpu(),
              "sb3_mamba kernels: gru_cell's h_prev must be float32 rows (unit stride) on the CPU");
  TORCH_CHECK(rows.has_value() == state_pre.has_value(), "sb3_mamba kernels: state_pre and rows go together");
  const int64_t N = pre.size(0), D = h_prev.size(1);
  const bool bf16 = pre.scalar_type() == at::kBFloat16;
  const at::Tensor pre_c = pre.contiguous();
  const at::Tensor g = norm_weight.contiguous(), bias = norm_bias.contiguous();
  data_of(g, "norm_weight", at::kFloat, {3 * D});
  data_of(bias, "norm_bias", at::kFloat, {3 * D});
  at::Tensor state_c, rows_c;
  if (rows.has_value()) {
    rows_c = rows->contiguous();
    data_of(rows_c, "rows", at::kLong, {N});
    state_c = state_pre->contiguous();
    data_of(state_c, "state_pre", pre.scalar_type(), {h_prev.size(0), 3 * D});
    if (N > 0) {
      const int64_t low = rows_c.min().item<int64_t>(), high = rows_c.max().item<int64_t>();
      TORCH_CHECK_INDEX(low >= 0 && high < h_prev.size(0), "rows must index the ", h_prev.size(0),
                        " states, got values in [", low, ", ", high, "]");
    }
  } else {
    TORCH_CHECK(h_prev.size(0) == N, "sb3_mamba kernels: gru_cell's h_prev must have pre's rows");
  }
  at::Tensor out = at::empty({N, D}, h_prev.options());
  const void *state = rows.has_value() ? state_c.data_ptr() : nullptr;
  const int64_t *index = rows.has_value() ? rows_c.data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    gru_cell_forward(begin, end, D, pre_c.data_ptr(), bf16, state, index, g.data_ptr<float>(),
                     bias.data_ptr<float>(), static_cast<float>(eps), h_prev.data_ptr<float>(),
                     static_cast<int>(h_prev.stride(0)), out.data_ptr<float>());
  });
  return out;
}

/* gru_cell's backward with the norm's parameters frozen: d_h (N, D) -> (d_pre (N, 3D), d_h_prev (N, D)). */
std::tuple<at::Tensor, at::Tensor> gru_cell_backward(const at::Tensor &pre, const at::Tensor &h_prev,
                                                     const at::Tensor &norm_weight, const at::Tensor &norm_bias,
                                                     double eps, const at::Tensor &d_h) {
  TORCH_CHECK(pre.dim() == 2 && h_prev.dim() == 2 && pre.size(1) == 3 * h_prev.size(1) &&
                  pre.size(0) == h_prev.size(0) && h_prev.stride(1) == 1 && h_prev.scalar_type() == at::kFloat,
              "sb3_mamba kernels: gru_cell_backward takes pre (N, 3D) and float32 rows h_prev (N, D)");
  TORCH_CHECK(pre.scalar_type() == at::kFloat || pre.scalar_type() == at::kBFloat16,
              "sb3_mamba kernels: gru_cell_backward's pre must be float32 or bfloat16");
  const int64_t N = pre.size(0), D = h_prev.size(1);
  const bool bf16 = pre.scalar_type() == at::kBFloat16;
  const at::Tensor pre_c = pre.contiguous(), d_h_c = d_h.to(at::kFloat).contiguous();
  const at::Tensor g = norm_weight.contiguous(), bias = norm_bias.contiguous();
  data_of(g, "norm_weight", at::kFloat, {3 * D});
  data_of(bias, "norm_bias", at::kFloat, {3 * D});
  data_of(d_h_c, "d_h", at::kFloat, {N, D});
  at::Tensor d_pre = at::empty({N, 3 * D}, pre.options()), d_h_prev = at::empty({N, D}, h_prev.options());
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    gru_cell_backward_rows(begin, end, D, pre_c.data_ptr(), bf16, g.data_ptr<float>(), bias.data_ptr<float>(),
                           static_cast<float>(eps), h_prev.data_ptr<float>(), static_cast<int>(h_prev.stride(0)),
                           d_h_c.data_ptr<float>(), d_pre.data_ptr(), d_h_prev.data_ptr<float>());
  });
  return {d_pre, d_h_prev};
}

}  // namespace

TORCH_LIBRARY(sb3_mamba, m) {
  m.class_<PosteriorScan>("PosteriorScan")
      .def(torch::init<c10::Dict<std::string, int64_t>, c10::Dict<std::string, double>,
                       c10::Dict<std::string, at::Tensor>>())
      .def("attach", &PosteriorScan::attach)
      .def("release", &PosteriorScan::release)
      .def("forward_input", &PosteriorScan::forward_input)
      .def("forward_output", &PosteriorScan::forward_output)
      .def("backward_output", &PosteriorScan::backward_output)
      .def("backward_input", &PosteriorScan::backward_input);
  m.def("gru_cell(Tensor pre, Tensor h_prev, Tensor norm_weight, Tensor norm_bias, float eps, "
        "Tensor? state_pre=None, Tensor? rows=None) -> Tensor", &gru_cell);
  m.def("gru_cell_backward(Tensor pre, Tensor h_prev, Tensor norm_weight, Tensor norm_bias, float eps, "
        "Tensor d_h) -> (Tensor, Tensor)", &gru_cell_backward);
}
