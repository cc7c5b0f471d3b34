/* One-pass summary statistics of a contiguous float32 or float64 buffer, for tracediff.stats.
 *
 * moments(buffer) -> (n_finite, mean, m2, sumsq, min, max, nan, inf, zeros)
 *
 * The buffer is read once, in blocks that stay in L1: a first sweep of a block takes its sum
 * (not finite when the block holds a NaN or an Inf), extremes and zero count; a second sweep
 * of the same block takes the deviations from the block's mean, so the variance never cancels. Blocks
 * are folded together in double precision with Chan et al.'s pairwise formula. A block with a
 * NaN or an Inf is redone element by element over its finite values. The GIL is released.
 *
 * The loops are written for the compiler's vectoriser (-fopenmp-simd, and an AVX2 clone on
 * x86); tracediff.stats falls back to NumPy when this module could not be built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 4096

typedef struct {
    double n, mean, m2, sumsq, lo, hi;
    Py_ssize_t nan, inf, zeros;
} Totals;

static void fold(Totals *t, double n, double mean, double m2, double lo, double hi)
{
    if (n == 0)
        return;
    double combined = t->n + n;
    double delta = mean - t->mean;
    t->mean += delta * n / combined;
    t->m2 += m2 + delta * delta * t->n * n / combined;
    t->sumsq += m2 + n * mean * mean;
    t->n = combined;
    if (lo < t->lo)
        t->lo = lo;
    if (hi > t->hi)
        t->hi = hi;
}

/* The finite values of a block that holds a NaN or an Inf, element by element. */
#define DEFINE_SLOW_BLOCK(NAME, T)                                                            \
    static void NAME(const T *x, Py_ssize_t n, Totals *t)                                     \
    {                                                                                         \
        double sum = 0, lo = INFINITY, hi = -INFINITY, count = 0;                            \
        for (Py_ssize_t i = 0; i < n; i++) {                                                  \
            T v = x[i];                                                                       \
            if (v == 0)                                                                       \
                t->zeros++;                                                                   \
            if (isnan(v)) {                                                                   \
                t->nan++;                                                                     \
            } else if (isinf(v)) {                                                            \
                t->inf++;                                                                     \
            } else {                                                                          \
                sum += v;                                                                     \
                count++;                                                                      \
                if (v < lo)                                                                   \
                    lo = v;                                                                   \
                if (v > hi)                                                                   \
                    hi = v;                                                                   \
            }                                                                                 \
        }                                                                                     \
        if (count == 0)                                                                       \
            return;                                                                           \
        double mean = sum / count, m2 = 0;                                                    \
        for (Py_ssize_t i = 0; i < n; i++) {                                                  \
            double v = x[i];                                                                  \
            if (isfinite(v))                                                                  \
                m2 += (v - mean) * (v - mean);                                                \
        }                                                                                     \
        fold(t, count, mean, m2, lo, hi);                                                     \
    }

DEFINE_SLOW_BLOCK(slow_block_f32, float)
DEFINE_SLOW_BLOCK(slow_block_f64, double)

/* A block without NaN or Inf: the first sweep's sum is then finite (an overflowing sum also
 * sends the block to the slow path, which sums in double). The second sweep takes deviations
 * from the first sweep's mean rounded to T; their sum corrects that mean exactly. Each sweep
 * reads the block as four interleaved quarters, so four independent vector accumulators hide
 * the latency of the additions. */
#define DEFINE_BLOCK(NAME, SLOW, T)                                                           \
    static TARGETS void NAME(const T *restrict x, Py_ssize_t n, Totals *t)                    \
    {                                                                                         \
        Py_ssize_t q = n / 4;                                                                 \
        const T *x0 = x, *x1 = x + q, *x2 = x + 2 * q, *x3 = x + 3 * q;                       \
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0, lo = x[0], hi = x[0];                               \
        int zeros = 0;                                                                        \
        _Pragma("omp simd reduction(+:s0,s1,s2,s3,zeros) reduction(min:lo) reduction(max:hi)") \
        for (Py_ssize_t i = 0; i < q; i++) {                                                  \
            T a = x0[i], b = x1[i], c = x2[i], d = x3[i];                                     \
            s0 += a;                                                                          \
            s1 += b;                                                                          \
            s2 += c;                                                                          \
            s3 += d;                                                                          \
            zeros += (a == 0) + (b == 0) + (c == 0) + (d == 0);                               \
            T l = a < b ? a : b, m = c < d ? c : d, h = a > b ? a : b, k = c > d ? c : d;     \
            l = l < m ? l : m;                                                                \
            h = h > k ? h : k;                                                                \
            lo = l < lo ? l : lo;                                                             \
            hi = h > hi ? h : hi;                                                             \
        }                                                                                     \
        T sum = (s0 + s1) + (s2 + s3);                                                        \
        for (Py_ssize_t i = 4 * q; i < n; i++) {                                              \
            T v = x[i];                                                                       \
            sum += v;                                                                         \
            zeros += v == 0;                                                                  \
            lo = v < lo ? v : lo;                                                             \
            hi = v > hi ? v : hi;                                                             \
        }                                                                                     \
        T shift = sum / (T)n, d0 = 0, d1 = 0, d2 = 0, d3 = 0, e0 = 0, e1 = 0, e2 = 0, e3 = 0;   \
        _Pragma("omp simd reduction(+:d0,d1,d2,d3,e0,e1,e2,e3)")                              \
        for (Py_ssize_t i = 0; i < q; i++) {                                                  \
            T a = x0[i] - shift, b = x1[i] - shift, c = x2[i] - shift, d = x3[i] - shift;     \
            d0 += a;                                                                          \
            d1 += b;                                                                          \
            d2 += c;                                                                          \
            d3 += d;                                                                          \
            e0 += a * a;                                                                      \
            e1 += b * b;                                                                      \
            e2 += c * c;                                                                      \
            e3 += d * d;                                                                      \
        }                                                                                     \
        T dsum = (d0 + d1) + (d2 + d3), dsq = (e0 + e1) + (e2 + e3);                          \
        for (Py_ssize_t i = 4 * q; i < n; i++) {                                              \
            T v = x[i] - shift;                                                               \
            dsum += v;                                                                        \
            dsq += v * v;                                                                     \
        }                                                                                     \
        if (!isfinite(sum) || !isfinite(dsq) || !isfinite(lo) || !isfinite(hi)) {              \
            SLOW(x, n, t);                                                                    \
            return;                                                                           \
        }                                                                                     \
        double mean = (double)shift + (double)dsum / (double)n;                               \
        double m2 = (double)dsq - (double)dsum * (double)dsum / (double)n;                    \
        t->zeros += zeros;                                                                    \
        fold(t, (double)n, mean, m2 > 0 ? m2 : 0, lo, hi);                                    \
    }

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__APPLE__)
#define TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define TARGETS
#endif

DEFINE_BLOCK(block_f32, slow_block_f32, float)
DEFINE_BLOCK(block_f64, slow_block_f64, double)

static void sweep_f32(const float *x, Py_ssize_t n, Totals *t)
{
    for (Py_ssize_t i = 0; i < n; i += BLOCK)
        block_f32(x + i, n - i < BLOCK ? n - i : BLOCK, t);
}

static void sweep_f64(const double *x, Py_ssize_t n, Totals *t)
{
    for (Py_ssize_t i = 0; i < n; i += BLOCK)
        block_f64(x + i, n - i < BLOCK ? n - i : BLOCK, t);
}

static PyObject *moments(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    const char *format = view.format ? view.format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    int is32 = strcmp(format, "f") == 0, is64 = strcmp(format, "d") == 0;
    if (!is32 && !is64) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_TypeError, "moments() takes float32 or float64 data, not format '%s'",
                     view.format ? view.format : "B");
        return NULL;
    }
    Totals t = {0, 0, 0, 0, INFINITY, -INFINITY, 0, 0, 0};
    Py_ssize_t n = view.len / view.itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (is32)
        sweep_f32((const float *)view.buf, n, &t);
    else
        sweep_f64((const double *)view.buf, n, &t);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(ndddddnnn)", (Py_ssize_t)t.n, t.mean, t.m2, t.sumsq, t.lo, t.hi,
                         t.nan, t.inf, t.zeros);
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_O,
     "moments(buffer) -> (n_finite, mean, m2, sumsq, min, max, nan, inf, zeros) of contiguous "
     "float32 or float64 data; min and max are over the finite values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_moments", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__moments(void)
{
    return PyModule_Create(&module);
}
