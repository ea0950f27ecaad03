/* One step of MAMBA's RSSM posterior unroll, forward and backward, as fused loops.
 *
 * The Python loop in sb3_mamba/rssm_scan.py calls, per time step, the GRU's
 * (B, E + D) x (E + D, 3D) matmul through torch (oneDNN) and one function here
 * for everything else; through ATen that is ~30 small ops per step forward and
 * ~35 backward, each 3-15 us of dispatch and memory traffic on 16 rows.
 *
 *   forward_input(t)        img_in: one-hot latent and action -> Linear -> LayerNorm -> SiLU,
 *                           written with the previous deter as the GRU matmul's input x_h[t]
 *   forward_output(t, pre)  GRU gates from the matmul's output -> deter[t]; posterior
 *                           Linear -> LayerNorm -> SiLU -> Linear -> unimix softmax -> sample;
 *                           then forward_input(t + 1)
 *   backward_output(t)      the same in reverse down to the GRU gates' pre-activations
 *   backward_input(t, dx)   from the matmul's input gradient back to deter[t-1] and stoch[t-1];
 *                           restarts; then backward_output(t - 1)
 *
 * Weight gradients are not computed here: the Python side takes each as one matmul over
 * all T x B rows of the saved buffers after the loop. Shapes: T time, B batch, D deter,
 * E hidden, S latents of C classes (SC = S * C), A action, K = SC + A. All buffers are
 * time-major and contiguous; x_h, d_gru_pre and the matmul outputs are in the compute
 * dtype (float32, or bfloat16 when `bf16`), everything else float32.
 * Built by sb3_mamba/native/__init__.py; tests/test_rssm_scan.py compares it with ATen.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  int T, B, D, E, S, C, A, bf16;
  float unimix, grad_scale, eps_in, eps_gru, eps_post;
  /* weights, float32 (w_*_t: transposed copies) */
  const float *w_in, *w_in_t, *g_in, *b_in;    /* (E, K), (K, E), (E,), (E,) */
  const float *g_gru, *b_gru;                  /* (3D,): the update gate's -1 folded into b_gru */
  const float *w_pd, *w_pd_t, *g_post, *b_post; /* (E, D), (D, E), (E,), (E,) */
  const float *w_out, *w_out_t, *b_out;         /* (SC, E), (E, SC), (SC,) */
  const float *init_deter;                      /* (D,) */
  const int32_t *init_index;                    /* (S,) classes of the initial one-hot latent */
  /* inputs */
  const float *embed_proj, *action, *uniform;   /* (T, B, E), (T, B, A), (T, B, S) or NULL: the mode */
  const uint8_t *keep;                          /* (T, B): 0 where the row restarts */
  /* forward: outputs and what the backward reads */
  float *z_action;                              /* (T, B, K) img_in's input */
  void *x_h;                                    /* (T, B, E + D) the GRU matmul's input */
  float *in_pre, *in_mean, *in_rstd;            /* (T, B, E), (T, B), (T, B) */
  float *gru_xhat, *gru_rstd;                   /* (T, B, 3D) normalised gates, (T, B) */
  float *reset, *cand_in, *cand, *update;       /* (T, B, D) */
  float *deter;                                 /* (T, B, D) */
  float *post_pre, *post_mean, *post_rstd, *post_y; /* (T, B, E), (T, B), (T, B), (T, B, E) */
  float *logits, *softmax, *stoch;              /* (T, B, SC) */
  int32_t *index;                               /* (T, B, S) sampled classes */
  /* backward */
  const float *grad_deter, *grad_stoch, *grad_logits; /* (T, B, D), (T, B, SC), (T, B, SC) */
  float *d_logits, *d_post_pre, *d_in_pre;      /* (T, B, SC), (T, B, E), (T, B, E) */
  void *d_gru_pre;                              /* (T, B, 3D) */
  float *d_g_in, *d_b_in, *d_g_gru, *d_b_gru, *d_g_post, *d_b_post, *d_init_deter; /* accumulated */
  float *carry_h, *carry_z, *d_h_prev;          /* (B, D), (B, SC), (B, D) */
} Scan;

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
/* element i of a compute-dtype buffer */
static inline float load(const void *p, int bf16, int64_t i) {
  return bf16 ? bf16_load((const uint16_t *)p, i) : ((const float *)p)[i];
}
static inline void store(void *p, int bf16, int64_t i, float v) {
  if (bf16) ((uint16_t *)p)[i] = bf16_round(v); else ((float *)p)[i] = v;
}

/* out (N) (+)= x (K) @ w (K, N) with w's rows ldw apart */
static void vec_mat(int K, int N, const float *restrict x, const float *restrict w, int ldw, float *restrict out,
                    int accumulate) {
  if (!accumulate) memset(out, 0, sizeof(float) * N);
  for (int k = 0; k < K; k++) {
    const float xk = x[k];
    const float *restrict row = w + (int64_t)k * ldw;
#pragma omp simd
    for (int n = 0; n < N; n++) out[n] += xk * row[n];
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
  for (int i = 0; i < W; i++) {
    xhat[i] = (x[i] - mean) * rstd;
    if (y) y[i] = xhat[i] * g[i] + b[i];
  }
  if (mean_out) *mean_out = mean;
  *rstd_out = rstd;
}

/* LayerNorm backward: d_y (W), xhat (W) -> d_x (W); accumulates d_g += d_y * xhat, d_b += d_y */
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
#pragma omp simd
  for (int i = 0; i < W; i++) {
    d_g[i] += d_y[i] * xhat[i];
    d_b[i] += d_y[i];
    d_x[i] = rstd * (d_y[i] * g[i] - mean_d - xhat[i] * mean_dx);
  }
}

static inline int keeps(const Scan *s, int t, int b) { return t > 0 && s->keep[(int64_t)t * s->B + b]; }
static inline const float *previous_deter(const Scan *s, int t, int b) {
  return keeps(s, t, b) ? s->deter + ((int64_t)(t - 1) * s->B + b) * s->D : s->init_deter;
}

/* -- forward ------------------------------------------------------------------------------ */
void forward_input(const Scan *s, int t) {
  const int B = s->B, D = s->D, E = s->E, S = s->S, C = s->C, A = s->A, SC = S * C, K = SC + A;
  for (int b = 0; b < B; b++) {
    const int64_t row = (int64_t)t * B + b;
    const int keep = keeps(s, t, b);
    const int32_t *index = keep ? s->index + (row - B) * S : s->init_index;
    const float *action = s->action + row * A;
    float *z_action = s->z_action + row * K;
    float *pre = s->in_pre + row * E;
    /* z_action = [one-hot latent, action (zero where the state restarts)] */
    memset(z_action, 0, sizeof(float) * SC);
    memset(pre, 0, sizeof(float) * E);
    for (int i = 0; i < S; i++) {  /* one-hot input: the matmul is a sum of S rows of w_in_t */
      z_action[i * C + index[i]] = 1.0f;
      const float *restrict w = s->w_in_t + (int64_t)(i * C + index[i]) * E;
#pragma omp simd
      for (int e = 0; e < E; e++) pre[e] += w[e];
    }
    for (int a = 0; a < A; a++) z_action[SC + a] = keep ? action[a] : 0.0f;
    vec_mat(A, E, z_action + SC, s->w_in_t + (int64_t)SC * E, E, pre, 1);
    float xhat[E], y[E];
    layer_norm(E, pre, s->g_in, s->b_in, s->eps_in, xhat, y, s->in_mean + row, s->in_rstd + row);
    const int64_t xh = row * (E + D);
    for (int e = 0; e < E; e++) store(s->x_h, s->bf16, xh + e, y[e] * sigmoid_f(y[e]));  /* SiLU */
    const float *h_prev = previous_deter(s, t, b);
    for (int d = 0; d < D; d++) store(s->x_h, s->bf16, xh + E + d, h_prev[d]);
  }
}

void forward_output(const Scan *s, int t, const void *gru_pre) {
  const int B = s->B, D = s->D, E = s->E, S = s->S, C = s->C, SC = S * C;
  for (int b = 0; b < B; b++) {
    const int64_t row = (int64_t)t * B + b;
    /* GRU: LayerNorm over the three gates, DreamerV3's gate functions */
    float pre[3 * D];
    for (int i = 0; i < 3 * D; i++) pre[i] = load(gru_pre, s->bf16, (int64_t)b * 3 * D + i);
    float *xhat = s->gru_xhat + row * 3 * D;
    layer_norm(3 * D, pre, NULL, NULL, s->eps_gru, xhat, NULL, NULL, s->gru_rstd + row);
    const float *restrict g = s->g_gru, *restrict bias = s->b_gru, *restrict h_prev = previous_deter(s, t, b);
    float *restrict reset = s->reset + row * D, *restrict cand_in = s->cand_in + row * D;
    float *restrict cand = s->cand + row * D, *restrict update = s->update + row * D, *restrict h = s->deter + row * D;
#pragma omp simd
    for (int d = 0; d < D; d++) {
      reset[d] = sigmoid_f(xhat[d] * g[d] + bias[d]);
      cand_in[d] = xhat[D + d] * g[D + d] + bias[D + d];
      cand[d] = tanh_f(reset[d] * cand_in[d]);
      update[d] = sigmoid_f(xhat[2 * D + d] * g[2 * D + d] + bias[2 * D + d]);
      h[d] = h_prev[d] + update[d] * (cand[d] - h_prev[d]);
    }
    /* posterior: Linear(deter) + Linear(embed) (precomputed) -> LayerNorm -> SiLU -> Linear */
    float *restrict post_pre = s->post_pre + row * E, *restrict post_y = s->post_y + row * E;
    memcpy(post_pre, s->embed_proj + row * E, sizeof(float) * E);
    vec_mat(D, E, h, s->w_pd_t, E, post_pre, 1);
    float post_xhat[E];
    layer_norm(E, post_pre, s->g_post, s->b_post, s->eps_post, post_xhat, post_y, s->post_mean + row,
               s->post_rstd + row);
#pragma omp simd
    for (int e = 0; e < E; e++) post_y[e] = post_y[e] * sigmoid_f(post_y[e]);
    float *logits = s->logits + row * SC, *softmax = s->softmax + row * SC, *stoch = s->stoch + row * SC;
    memcpy(logits, s->b_out, sizeof(float) * SC);
    vec_mat(E, SC, post_y, s->w_out_t, SC, logits, 1);
    /* unimix softmax per latent, then a one-hot sample (inverse CDF, as torch.searchsorted) or the mode */
    memset(stoch, 0, sizeof(float) * SC);
    for (int i = 0; i < S; i++) {
      const float *l = logits + i * C;
      float *p = softmax + i * C;
      float max = l[0], sum = 0.0f;
      for (int c = 1; c < C; c++) max = l[c] > max ? l[c] : max;
      for (int c = 0; c < C; c++) sum += (p[c] = exp_f(l[c] - max));
      for (int c = 0; c < C; c++) p[c] /= sum;
      int chosen = 0;
      if (s->uniform) {
        const float u = s->uniform[row * S + i];
        double cdf = 0.0;  /* torch's CPU cumsum accumulates in double */
        chosen = C - 1;
        for (int c = 0; c < C; c++) {
          cdf += (double)(s->unimix / C + (1.0f - s->unimix) * p[c]);
          if ((float)cdf >= u) { chosen = c; break; }
        }
      } else {
        for (int c = 1; c < C; c++) chosen = p[c] > p[chosen] ? c : chosen;
      }
      stoch[i * C + chosen] = 1.0f;
      s->index[row * S + i] = chosen;
    }
  }
  if (t + 1 < s->T) forward_input(s, t + 1);
}

/* -- backward ----------------------------------------------------------------------------- */
void backward_output(const Scan *s, int t) {
  const int B = s->B, D = s->D, E = s->E, S = s->S, C = s->C, SC = S * C;
  for (int b = 0; b < B; b++) {
    const int64_t row = (int64_t)t * B + b;
    /* straight-through sample -> unimix softmax -> logits */
    const float *softmax = s->softmax + row * SC, *grad_stoch = s->grad_stoch + row * SC;
    float *d_logits = s->d_logits + row * SC;
    for (int i = 0; i < S; i++) {
      float d_p[C], dot = 0.0f;
      for (int c = 0; c < C; c++) {
        d_p[c] = (grad_stoch[i * C + c] + s->carry_z[(int64_t)b * SC + i * C + c]) * s->grad_scale;
        dot += d_p[c] * softmax[i * C + c];
      }
      for (int c = 0; c < C; c++)
        d_logits[i * C + c] = s->grad_logits[row * SC + i * C + c] + softmax[i * C + c] * (d_p[c] - dot);
    }
    /* posterior layers back to deter_t */
    float d_y[E], post_xhat[E], d_pre_post[E];
    vec_mat(SC, E, d_logits, s->w_out, E, d_y, 0);
    const float *post_pre = s->post_pre + row * E, mean = s->post_mean[row], rstd = s->post_rstd[row];
#pragma omp simd
    for (int e = 0; e < E; e++) {
      post_xhat[e] = (post_pre[e] - mean) * rstd;
      const float x = post_xhat[e] * s->g_post[e] + s->b_post[e], sig = sigmoid_f(x);
      d_y[e] *= sig * (1.0f + x * (1.0f - sig));  /* SiLU backward */
    }
    layer_norm_backward(E, d_y, post_xhat, s->g_post, rstd, d_pre_post, s->d_g_post, s->d_b_post);
    memcpy(s->d_post_pre + row * E, d_pre_post, sizeof(float) * E);
    float d_h[D];
    const float *grad_deter = s->grad_deter + row * D, *carry = s->carry_h + (int64_t)b * D;
#pragma omp simd
    for (int d = 0; d < D; d++) d_h[d] = grad_deter[d] + carry[d];
    vec_mat(E, D, d_pre_post, s->w_pd, D, d_h, 1);
    /* GRU cell: deter_t = h_prev + u * (c - h_prev), c = tanh(r * cand_in) */
    const float *restrict reset = s->reset + row * D, *restrict cand_in = s->cand_in + row * D;
    const float *restrict cand = s->cand + row * D, *restrict update = s->update + row * D;
    const float *restrict h_prev = previous_deter(s, t, b);
    float *restrict d_h_prev = s->d_h_prev + (int64_t)b * D;
    float d_gates[3 * D], d_pre[3 * D];
#pragma omp simd
    for (int d = 0; d < D; d++) {
      const float d_cand = d_h[d] * update[d];
      d_h_prev[d] = d_h[d] - d_cand;
      const float d_tanh = d_cand * (1.0f - cand[d] * cand[d]);
      d_gates[d] = d_tanh * cand_in[d] * reset[d] * (1.0f - reset[d]);
      d_gates[D + d] = d_tanh * reset[d];
      d_gates[2 * D + d] = d_h[d] * (cand[d] - h_prev[d]) * update[d] * (1.0f - update[d]);
    }
    layer_norm_backward(3 * D, d_gates, s->gru_xhat + row * 3 * D, s->g_gru, s->gru_rstd[row], d_pre, s->d_g_gru,
                        s->d_b_gru);
    for (int i = 0; i < 3 * D; i++) store(s->d_gru_pre, s->bf16, row * 3 * D + i, d_pre[i]);
  }
}

void backward_input(const Scan *s, int t, const void *d_x_h) {
  const int B = s->B, D = s->D, E = s->E, S = s->S, C = s->C, A = s->A, SC = S * C, K = SC + A;
  for (int b = 0; b < B; b++) {
    const int64_t row = (int64_t)t * B + b;
    /* img_in back to stoch_{t-1}: SiLU, LayerNorm, Linear */
    float d_y[E], xhat[E];
    const float *pre = s->in_pre + row * E, mean = s->in_mean[row], rstd = s->in_rstd[row];
    for (int e = 0; e < E; e++) {
      xhat[e] = (pre[e] - mean) * rstd;
      const float x = xhat[e] * s->g_in[e] + s->b_in[e], sig = sigmoid_f(x);
      d_y[e] = load(d_x_h, s->bf16, (int64_t)b * (E + D) + e) * sig * (1.0f + x * (1.0f - sig));
    }
    float *d_in_pre = s->d_in_pre + row * E;
    layer_norm_backward(E, d_y, xhat, s->g_in, rstd, d_in_pre, s->d_g_in, s->d_b_in);
    float *carry_h = s->carry_h + (int64_t)b * D, *carry_z = s->carry_z + (int64_t)b * SC;
    const float *d_h_prev = s->d_h_prev + (int64_t)b * D;
    if (keeps(s, t, b)) {
      for (int d = 0; d < D; d++) carry_h[d] = d_h_prev[d] + load(d_x_h, s->bf16, (int64_t)b * (E + D) + E + d);
      vec_mat(E, SC, d_in_pre, s->w_in, K, carry_z, 0);
    } else {  /* the row restarted: its previous state is the learned initial state */
      for (int d = 0; d < D; d++)
        s->d_init_deter[d] += d_h_prev[d] + load(d_x_h, s->bf16, (int64_t)b * (E + D) + E + d);
      memset(carry_h, 0, sizeof(float) * D);
      memset(carry_z, 0, sizeof(float) * SC);
    }
  }
  if (t > 0) backward_output(s, t - 1);
}
