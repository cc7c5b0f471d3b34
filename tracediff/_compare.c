/* The diff engine's comparison of two same-sized float32 or float64 arrays in one pass, for
 * tracediff.compare.metrics.compare (which keeps the NumPy path for every other case).
 *
 * compare(a, b, rtol, atol, floor, rel_floor, pool, chunk, every, keep, threshold, top)
 *   -> None when a or b holds a NaN or an Inf (the caller then takes the NumPy path), else
 *      (max_abs, argmax, sum_abs, sum_sq, sum_aa, sum_bb, sum_ab, mismatches, min_atol,
 *       max_rel, min_rtol, worst, p99, pooled, kept)
 *
 * Per element, in the arrays' own precision as NumPy computes it (d = a - b, |d|, the scale
 * max(|b|, floor), the excess |d| - rtol * scale, ...), so the verdict is the NumPy path's:
 * an element fails when its excess is above atol. Sums are taken per block in that precision
 * (vector lanes of BLOCK / lanes terms each) and across blocks in double. ``worst`` lists the
 * (at most) 10 largest |d|, largest first and the earliest first among equals, each as
 * (flat index, a, b, |d|). The values
 * the caller takes p99 from are |d| of the first ``keep`` elements of every ``every``-th chunk
 * of ``chunk`` elements; ``pooled`` counts them. Of those, the ones >= ``threshold`` (taken in
 * the arrays' type; 0 keeps all) are written to the front of ``pool``, in order; ``kept``
 * counts them. A threshold near the top percent makes p99 a selection among a few values,
 * with no second pass over the tensor. ``top`` > 0 instead keeps the ``top`` largest of them,
 * as a min-heap in pool[:top] (``kept`` counts them); with ``top`` = pooled - floor(0.99 *
 * (pooled - 1)), the ranks np.percentile(pool, 99) reads, ``p99`` is that percentile, in
 * NumPy's arithmetic (its linear method, in the arrays' type). ``p99`` is None without ``top``.
 * at_least(values, threshold, minimum) -> count: the values >= threshold moved to the front,
 * for the p99 selection. same(a, b): whether two buffers hold the same bytes.
 * The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define WORST 10

typedef struct {
    double max_abs, sum_abs, sum_sq, sum_aa, sum_bb, sum_ab, min_atol, max_rel, min_rtol;
    Py_ssize_t argmax, mismatches, pooled, kept;
    Py_ssize_t worst_idx[WORST];
    double worst_abs[WORST];
    int worst_n;
    int nonfinite;
} Result;

static void keep_worst(Result *r, Py_ssize_t index, double value)
{
    /* insertion into a list sorted by decreasing value; among equals the earlier index stays */
    int n = r->worst_n;
    if (n == WORST && value <= r->worst_abs[WORST - 1])
        return;
    int at = n < WORST ? n : WORST - 1;
    while (at > 0 && r->worst_abs[at - 1] < value) {
        r->worst_abs[at] = r->worst_abs[at - 1];
        r->worst_idx[at] = r->worst_idx[at - 1];
        at--;
    }
    r->worst_abs[at] = value;
    r->worst_idx[at] = index;
    if (n < WORST)
        r->worst_n = n + 1;
}

#define BLOCK 1024

/* The values >= threshold, appended to ``out`` in order; returns how many. Eight at a time:
 * with a threshold near the top percent most groups of eight hold none, and that test
 * vectorises where the store cannot. */
#define DEFINE_KEEP_AT_LEAST(T)                                                                \
    static inline Py_ssize_t keep_at_least_##T(const T *values, Py_ssize_t n, T threshold,     \
                                               T *out)                                         \
    {                                                                                          \
        Py_ssize_t kept = 0, i = 0;                                                            \
        for (; i + 8 <= n; i += 8) {                                                           \
            int any = 0;                                                                       \
            for (int j = 0; j < 8; j++)                                                        \
                any |= values[i + j] >= threshold;                                             \
            if (!any)                                                                          \
                continue;                                                                      \
            for (int j = 0; j < 8; j++) {                                                      \
                out[kept] = values[i + j]; /* branch-free: kept when the count moves on */     \
                kept += values[i + j] >= threshold;                                            \
            }                                                                                  \
        }                                                                                      \
        for (; i < n; i++) {                                                                   \
            out[kept] = values[i];                                                             \
            kept += values[i] >= threshold;                                                    \
        }                                                                                      \
        return kept;                                                                           \
    }

DEFINE_KEEP_AT_LEAST(float)
DEFINE_KEEP_AT_LEAST(double)

/* The ``cap`` largest of the values seen so far, as a min-heap in ``heap`` (``size`` of them
 * held); returns the new size. Once the heap is full, a group of eight none of which exceeds
 * its least is skipped with one test. */
#define DEFINE_KEEP_TOP(T)                                                                     \
    static inline void heap_put_##T(T *heap, Py_ssize_t cap, Py_ssize_t size, T v)             \
    {                                                                                          \
        Py_ssize_t j;                                                                          \
        if (size < cap) { /* sift up from the end */                                           \
            j = size;                                                                          \
            while (j > 0 && heap[(j - 1) / 2] > v) {                                           \
                heap[j] = heap[(j - 1) / 2];                                                   \
                j = (j - 1) / 2;                                                               \
            }                                                                                  \
        } else { /* replace the least, sift down */                                            \
            j = 0;                                                                             \
            for (;;) {                                                                         \
                Py_ssize_t c = 2 * j + 1;                                                      \
                if (c >= cap)                                                                  \
                    break;                                                                     \
                if (c + 1 < cap && heap[c + 1] < heap[c])                                      \
                    c++;                                                                       \
                if (!(heap[c] < v))                                                            \
                    break;                                                                     \
                heap[j] = heap[c];                                                             \
                j = c;                                                                         \
            }                                                                                  \
        }                                                                                      \
        heap[j] = v;                                                                           \
    }                                                                                          \
    static inline Py_ssize_t keep_top_##T(const T *values, Py_ssize_t n, T *heap,             \
                                          Py_ssize_t cap, Py_ssize_t size)                     \
    {                                                                                          \
        Py_ssize_t i = 0;                                                                      \
        for (; i < n && size < cap; i++)                                                       \
            heap_put_##T(heap, cap, size++, values[i]);                                        \
        for (; i + 8 <= n; i += 8) {                                                           \
            T least = heap[0];                                                                 \
            int any = 0;                                                                       \
            for (int j = 0; j < 8; j++)                                                        \
                any |= values[i + j] > least;                                                  \
            if (!any)                                                                          \
                continue;                                                                      \
            for (int j = 0; j < 8; j++)                                                        \
                if (values[i + j] > heap[0])                                                   \
                    heap_put_##T(heap, cap, cap, values[i + j]);                               \
        }                                                                                      \
        for (; i < n; i++)                                                                     \
            if (values[i] > heap[0])                                                           \
                heap_put_##T(heap, cap, cap, values[i]);                                       \
        return size;                                                                           \
    }

DEFINE_KEEP_TOP(float)
DEFINE_KEEP_TOP(double)
#define SIMD_REDUCTIONS "omp simd reduction(+:bad,fails,s_abs,s_sq,s_aa,s_bb,s_ab) reduction(max:block_max,excess_max,rel_max,ratio_max) reduction(|:zero_over)"

/* Each block of BLOCK elements: one vectorised sweep takes |d| (kept in a block buffer), the
 * sums and the detail statistics; the rare follow-ups (a new maximum, a new worst element,
 * the p99 pool) read the block buffer. Elements with d == 0 change no statistic but the sums
 * (their excess and ratio are <= 0, and the caller's statistics start at 0). */
#define DEFINE_COMPARE(NAME, T, ABS)                                                           \
    static TARGETS void NAME(const T *a, const T *b, Py_ssize_t n, double rtol_d,               \
                             double atol_d, double floor_d, double rel_floor_d, T *pool,        \
                             Py_ssize_t chunk, Py_ssize_t every, Py_ssize_t keep,               \
                             double threshold_d, Py_ssize_t top, Result *r)                     \
    {                                                                                          \
        const T rtol = (T)rtol_d, atol = (T)atol_d, floor_ = (T)floor_d;                       \
        const T threshold = (T)threshold_d;                                                    \
        const T rel_floor = (T)rel_floor_d;                                                    \
        const T scale_floor = floor_ > 0 ? floor_ : 0; /* |b| >= 0: max(|b|, 0) is |b| */      \
        T max_abs = 0, min_atol = 0, max_rel = 0, min_rtol = 0;                                \
        int zero_scale_over = 0;                                                               \
        double sum_abs = 0, sum_sq = 0, sum_aa = 0, sum_bb = 0, sum_ab = 0;                     \
        Py_ssize_t argmax = 0, mismatches = 0, pooled = 0, kept = 0;                           \
        T absd[BLOCK];                                                                         \
        for (Py_ssize_t start = 0; start < n; start += BLOCK) {                                \
            Py_ssize_t len = n - start < BLOCK ? n - start : BLOCK;                            \
            const T *x = a + start, *y = b + start;                                            \
            T bad = 0, block_max = 0, excess_max = min_atol, rel_max = max_rel;                 \
            T ratio_max = min_rtol;                                                            \
            int zero_over = 0, fails = 0;                                                      \
            T s_abs = 0, s_sq = 0, s_aa = 0, s_bb = 0, s_ab = 0;                               \
            _Pragma(SIMD_REDUCTIONS)                                                           \
            for (Py_ssize_t i = 0; i < len; i++) {                                             \
                T xi = x[i], yi = y[i];                                                        \
                bad += (xi - xi) + (yi - yi); /* NaN when either is NaN or Inf */              \
                T ad = ABS(xi - yi);                                                           \
                absd[i] = ad;                                                                  \
                s_abs += ad;                                                                   \
                s_sq += ad * ad;                                                               \
                s_aa += xi * xi;                                                               \
                s_bb += yi * yi;                                                               \
                s_ab += xi * yi;                                                               \
                block_max = ad > block_max ? ad : block_max;                                   \
                T ab = ABS(yi);                                                                \
                T scale = ab > scale_floor ? ab : scale_floor;                                 \
                T excess = ad - scale * rtol;                                                  \
                excess_max = excess > excess_max ? excess : excess_max;                        \
                fails += excess > atol;                                                        \
                T rel = ad / (ab > rel_floor ? ab : rel_floor);                                \
                rel_max = rel > rel_max ? rel : rel_max;                                       \
                T over = ad - atol;                                                            \
                T ratio = over / (scale > 0 ? scale : 1);                                      \
                ratio = scale > 0 ? ratio : 0;                                                 \
                ratio_max = ratio > ratio_max ? ratio : ratio_max;                             \
                zero_over |= (scale == 0) & (over > 0);                                        \
            }                                                                                  \
            if (bad != 0 || !isfinite(bad)) {                                                  \
                r->nonfinite = 1;                                                              \
                return;                                                                        \
            }                                                                                  \
            sum_abs += s_abs;                                                                  \
            sum_sq += s_sq;                                                                    \
            sum_aa += s_aa;                                                                    \
            sum_bb += s_bb;                                                                    \
            sum_ab += s_ab;                                                                    \
            mismatches += fails;                                                               \
            if (block_max > 0) {                                                               \
                min_atol = excess_max;                                                         \
                max_rel = rel_max;                                                             \
                min_rtol = ratio_max;                                                          \
                zero_scale_over |= zero_over;                                                  \
            }                                                                                  \
            if (block_max > max_abs) {                                                         \
                Py_ssize_t i = 0;                                                              \
                while (absd[i] != block_max)                                                   \
                    i++;                                                                       \
                max_abs = block_max;                                                           \
                argmax = start + i;                                                            \
            }                                                                                  \
            if (block_max > 0 && (r->worst_n < WORST || block_max > r->worst_abs[WORST - 1])) { \
                for (Py_ssize_t i = 0; i < len; i++)                                           \
                    if (absd[i] > 0)                                                           \
                        keep_worst(r, start + i, absd[i]);                                     \
            }                                                                                  \
            /* the pool: the first ``keep`` of every ``every``-th chunk */                     \
            Py_ssize_t in_chunk = start % chunk;                                               \
            if ((start / chunk) % every == 0 && in_chunk < keep) {                             \
                Py_ssize_t take = keep - in_chunk < len ? keep - in_chunk : len;               \
                Py_ssize_t chunk_end = chunk - in_chunk;                                       \
                if (take > chunk_end)                                                          \
                    take = chunk_end;                                                          \
                kept = top ? keep_top_##T(absd, take, pool, top, kept)                          \
                           : kept + keep_at_least_##T(absd, take, threshold, pool + kept);      \
                pooled += take;                                                                \
            }                                                                                  \
        }                                                                                      \
        r->max_abs = max_abs;                                                                  \
        r->argmax = argmax;                                                                    \
        r->sum_abs = sum_abs;                                                                  \
        r->sum_sq = sum_sq;                                                                    \
        r->sum_aa = sum_aa;                                                                    \
        r->sum_bb = sum_bb;                                                                    \
        r->sum_ab = sum_ab;                                                                    \
        r->mismatches = mismatches;                                                            \
        r->min_atol = min_atol;                                                                \
        r->max_rel = max_rel;                                                                  \
        r->min_rtol = zero_scale_over ? INFINITY : min_rtol;                                   \
        r->pooled = pooled;                                                                    \
        r->kept = kept;                                                                        \
    }

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__APPLE__)
#define TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define TARGETS
#endif

DEFINE_COMPARE(compare_f32, float, fabsf)
DEFINE_COMPARE(compare_f64, double, fabs)

static int kind_of(Py_buffer *view)
{
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    if (strcmp(format, "f") == 0)
        return 4;
    if (strcmp(format, "d") == 0)
        return 8;
    return 0;
}

/* np.percentile(pool, 99) of ``pooled`` values from the ``size`` >= 2 largest of them, held
 * as a min-heap: its least and the next one are the two ranks NumPy's linear method reads. */
#define DEFINE_P99_OF_HEAP(T)                                                                  \
    static double p99_of_heap_##T(const T *heap, Py_ssize_t size, Py_ssize_t pooled)           \
    {                                                                                          \
        double virtual_index = (double)(pooled - 1) * 0.99;                                    \
        double gamma = virtual_index - floor(virtual_index);                                   \
        T low = heap[0];                                                                       \
        T high = size > 2 && heap[2] < heap[1] ? heap[2] : heap[1];                            \
        T diff = high - low;                                                                   \
        /* NumPy's _lerp; gamma is a weak Python float there, taken in the arrays' type */      \
        T value = gamma < 0.5 ? low + diff * (T)gamma : high - diff * (T)(1.0 - gamma);        \
        return (double)value;                                                                  \
    }

DEFINE_P99_OF_HEAP(float)
DEFINE_P99_OF_HEAP(double)

static PyObject *p99_of_heap(const void *heap, int size, Py_ssize_t kept, Py_ssize_t pooled)
{
    if (pooled == 0)
        return PyFloat_FromDouble(0.0);
    if (pooled == 1)
        return PyFloat_FromDouble(size == 4 ? (double)((const float *)heap)[0]
                                            : ((const double *)heap)[0]);
    return PyFloat_FromDouble(size == 4 ? p99_of_heap_float(heap, kept, pooled)
                                        : p99_of_heap_double(heap, kept, pooled));
}

static PyObject *compare(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *a_obj, *b_obj, *pool_obj;
    double rtol, atol, floor_, rel_floor, threshold;
    Py_ssize_t chunk, every, keep, top = 0;
    if (!PyArg_ParseTuple(args, "OOddddOnnnd|n", &a_obj, &b_obj, &rtol, &atol, &floor_, &rel_floor,
                          &pool_obj, &chunk, &every, &keep, &threshold, &top))
        return NULL;
    if (chunk < 1 || chunk % BLOCK || every < 1 || keep < 0 || keep > chunk || top < 0) {
        PyErr_Format(PyExc_ValueError,
                     "compare(): chunk must be a positive multiple of %d, every >= 1, 0 <= keep <= chunk, top >= 0",
                     BLOCK);
        return NULL;
    }
    Py_buffer a, b, pool;
    if (PyObject_GetBuffer(a_obj, &a, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(b_obj, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    if (PyObject_GetBuffer(pool_obj, &pool, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        return NULL;
    }
    PyObject *out = NULL;
    int size = kind_of(&a);
    Py_ssize_t n = size ? a.len / size : 0;
    Py_ssize_t pool_needed = 0;
    for (Py_ssize_t start = 0; start < n; start += chunk * every)
        pool_needed += n - start < keep ? n - start : keep;
    if (!size || kind_of(&b) != size || kind_of(&pool) != size || b.len != a.len) {
        PyErr_SetString(PyExc_TypeError,
                        "compare() takes two float32 or two float64 arrays of one size, and a pool of that type");
        goto done;
    }
    if (top)
        pool_needed = top;
    if (pool.len / size < pool_needed) {
        PyErr_Format(PyExc_ValueError, "compare(): the pool holds %zd values, %zd are needed",
                     pool.len / size, pool_needed);
        goto done;
    }
    Result r;
    memset(&r, 0, sizeof(r));
    Py_BEGIN_ALLOW_THREADS
    if (size == 4)
        compare_f32(a.buf, b.buf, n, rtol, atol, floor_, rel_floor, pool.buf, chunk, every, keep,
                    threshold, top, &r);
    else
        compare_f64(a.buf, b.buf, n, rtol, atol, floor_, rel_floor, pool.buf, chunk, every, keep,
                    threshold, top, &r);
    Py_END_ALLOW_THREADS
    if (r.nonfinite) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *worst = PyList_New(r.worst_n);
    if (!worst)
        goto done;
    for (int k = 0; k < r.worst_n; k++) {
        Py_ssize_t i = r.worst_idx[k];
        double x = size == 4 ? (double)((const float *)a.buf)[i] : ((const double *)a.buf)[i];
        double y = size == 4 ? (double)((const float *)b.buf)[i] : ((const double *)b.buf)[i];
        PyObject *item = Py_BuildValue("(nddd)", i, x, y, r.worst_abs[k]);
        if (!item) {
            Py_DECREF(worst);
            goto done;
        }
        PyList_SET_ITEM(worst, k, item);
    }
    PyObject *p99 = top ? p99_of_heap(pool.buf, size, r.kept, r.pooled) : Py_NewRef(Py_None);
    if (!p99) {
        Py_DECREF(worst);
        goto done;
    }
    out = Py_BuildValue("(dndddddnddd" "NNnn)", r.max_abs, r.argmax, r.sum_abs, r.sum_sq,
                        r.sum_aa, r.sum_bb, r.sum_ab, r.mismatches, r.min_atol, r.max_rel,
                        r.min_rtol, worst, p99, r.pooled, r.kept);
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&pool);
    return out;
}

/* The values >= threshold, moved to the front in order, when there are at least ``minimum``
 * of them; otherwise the values are left as they are. Returns how many there are. */
#define DEFINE_AT_LEAST(NAME, T)                                                               \
    static Py_ssize_t NAME(T *values, Py_ssize_t n, T threshold, Py_ssize_t minimum)          \
    {                                                                                          \
        Py_ssize_t count = 0;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++)                                                     \
            count += values[i] >= threshold;                                                   \
        if (count < minimum)                                                                   \
            return count;                                                                      \
        Py_ssize_t kept = 0;                                                                   \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            T v = values[i];                                                                   \
            values[kept] = v; /* branch-free: kept only when the count moves on */            \
            kept += v >= threshold;                                                            \
        }                                                                                      \
        return count;                                                                          \
    }

DEFINE_AT_LEAST(at_least_f32, float)
DEFINE_AT_LEAST(at_least_f64, double)

static PyObject *at_least(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *values_obj;
    double threshold;
    Py_ssize_t minimum;
    if (!PyArg_ParseTuple(args, "Odn", &values_obj, &threshold, &minimum))
        return NULL;
    Py_buffer values;
    if (PyObject_GetBuffer(values_obj, &values, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *result = NULL;
    int size = kind_of(&values);
    if (!size) {
        PyErr_SetString(PyExc_TypeError, "at_least() takes writable float32 or float64 values");
    } else {
        Py_ssize_t n = values.len / size, count;
        Py_BEGIN_ALLOW_THREADS
        if (size == 4)
            count = at_least_f32(values.buf, n, (float)threshold, minimum);
        else
            count = at_least_f64(values.buf, n, threshold, minimum);
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(count);
    }
    PyBuffer_Release(&values);
    return result;
}

static PyObject *same(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "OO", &a_obj, &b_obj))
        return NULL;
    Py_buffer a, b;
    if (PyObject_GetBuffer(a_obj, &a, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(b_obj, &b, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    int equal = a.len == b.len;
    if (equal && a.len) {
        Py_BEGIN_ALLOW_THREADS
        equal = memcmp(a.buf, b.buf, (size_t)a.len) == 0;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(equal);
}

static PyMethodDef methods[] = {
    {"at_least", at_least, METH_VARARGS,
     "at_least(values, threshold, minimum) -> count of the values >= threshold (taken in the "
     "values' type); when there are at least minimum, they are moved to the front, in order."},
    {"same", same, METH_VARARGS,
     "same(a, b) -> whether two C-contiguous buffers hold the same bytes (memcmp)."},
    {"compare", compare, METH_VARARGS,
     "compare(a, b, rtol, atol, floor, rel_floor, pool, chunk, every, keep, threshold, top=0): "
     "the statistics of a - b in one pass, or None when a or b holds a NaN or an Inf."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_compare", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__compare(void)
{
    return PyModule_Create(&module);
}
