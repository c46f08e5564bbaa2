"""Vector kernels of the L-BFGS iteration (included by _lbfgs.pyx)."""
# ---------------------------------------------------------------------------------------------
# Vector kernels
# ---------------------------------------------------------------------------------------------
# LANES independent accumulators: with -ffp-contract=off and without -ffast-math the compiler may
# not reassociate a single running sum, so the lanes are spelled out for it to vectorize. Sixteen
# double lanes are four AVX registers, enough independent add chains to hide the add latency.
cdef enum:
    LANES = 16


cdef inline double _lane_sum(const double* acc) noexcept nogil:
    """Pairwise sum of the LANES partial sums (a fixed order, so results are reproducible)."""
    return ((((acc[0] + acc[8]) + (acc[4] + acc[12])) + ((acc[2] + acc[10]) + (acc[6] + acc[14])))
            + (((acc[1] + acc[9]) + (acc[5] + acc[13])) + ((acc[3] + acc[11]) + (acc[7] + acc[15]))))


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """Return sum_i a_i * b_i, accumulated in double precision."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            acc[j] += <double>a[i + j] * <double>b[i + j]
    for i in range(n8, n):
        acc[0] += <double>a[i] * <double>b[i]
    return _lane_sum(acc)


cdef inline double _copy_dot(floating* dst, const floating* src, const floating* w,
                             Py_ssize_t n) noexcept nogil:
    """dst <- src, then return w'dst (one pass: the gradient copy and its slope g'd)."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    cdef floating t
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            t = src[i + j]
            dst[i + j] = t
            acc[j] += <double>w[i + j] * <double>t
    for i in range(n8, n):
        t = src[i]
        dst[i] = t
        acc[0] += <double>w[i] * <double>t
    return _lane_sum(acc)


cdef inline double _new_pair(floating* s, floating* y, floating stp, const floating* d,
                             const floating* g_new, const floating* g_old,
                             Py_ssize_t n) noexcept nogil:
    """s <- stp d, y <- g_new - g_old; return y'y."""
    cdef Py_ssize_t i
    # Separate loops, not one: with two stores among three loads the compiler needs run-time
    # aliasing checks it may not emit; each of these vectorizes, the later ones read what is
    # still in L1.
    for i in range(n):
        s[i] = stp * d[i]
    for i in range(n):
        y[i] = g_new[i] - g_old[i]
    return _dot(y, y, n)


cdef inline void _scaled_copy(floating* dst, floating alpha, const floating* src,
                              Py_ssize_t n) noexcept nogil:
    """dst <- alpha * src."""
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = alpha * src[i]


cdef inline void _xpay(floating* dst, const floating* x, floating alpha, const floating* p,
                       Py_ssize_t n) noexcept nogil:
    """dst <- x + alpha * p (a trial point of the line search)."""
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = x[i] + alpha * p[i]


cdef inline double _count_above(const floating* x, Py_ssize_t n, double threshold) noexcept nogil:
    """Return the number of |x_i| > threshold (the gradient test max |g_i| <= gtol asked as
    "no |g_i| > gtol": a count of comparisons vectorizes, a running maximum does not without
    -ffinite-math-only)."""
    cdef double above[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    for j in range(LANES):
        above[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            above[j] += <double>(fabs(<double>x[i + j]) > threshold)
    for i in range(n8, n):
        above[0] += <double>(fabs(<double>x[i]) > threshold)
    return _lane_sum(above)


cdef inline bint _all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    """True if no x_i is NaN or +-Inf.

    ``x_i * 0`` is 0 for finite ``x_i`` and NaN otherwise, so one vectorizable sum answers it.
    """
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            acc[j] += <double>x[i + j] * 0.0
    for i in range(n8, n):
        acc[0] += <double>x[i] * 0.0
    return _lane_sum(acc) == 0.0


# ---------------------------------------------------------------------------------------------
# Two-loop recursion
# ---------------------------------------------------------------------------------------------

cdef inline double _axpy_dot(floating* q, floating a, const floating* x, const floating* w,
                             Py_ssize_t n) noexcept nogil:
    """q <- q + a x, then return w'q -- one pass, so q is read and written once, not twice."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    cdef floating t
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            t = q[i + j] + a * x[i + j]
            q[i + j] = t
            acc[j] += <double>w[i + j] * <double>t
    for i in range(n8, n):
        t = q[i] + a * x[i]
        q[i] = t
        acc[0] += <double>w[i] * <double>t
    return _lane_sum(acc)


cdef inline double _scaled_axpy_dot(floating* out, floating sign, const floating* src, floating a,
                                    const floating* x, floating scale, const floating* w,
                                    Py_ssize_t n) noexcept nogil:
    """out <- scale (sign src + a x), then return w'out (``src`` may be ``out``).

    ``sign`` is +1 or -1, so ``sign src`` is exact; it lets the first update read -g without a
    separate negated copy."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    cdef floating t
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            t = scale * (sign * src[i + j] + a * x[i + j])
            out[i + j] = t
            acc[j] += <double>w[i + j] * <double>t
    for i in range(n8, n):
        t = scale * (sign * src[i] + a * x[i])
        out[i] = t
        acc[0] += <double>w[i] * <double>t
    return _lane_sum(acc)


# ---------------------------------------------------------------------------------------------
# Blocked, optionally parallel versions
# ---------------------------------------------------------------------------------------------
# Vectors longer than BLOCK are processed in blocks of BLOCK elements whose partial sums are added
# in block order: a fixed, pairwise-like summation order that keeps rounding errors of long
# inner products small.
#
# (An OpenMP version ran the blocks in a prange. It was dropped: the variables a parallel region
# shares become addressable, which made GCC assume every store in the serial kernels could
# overwrite them and leave those loops scalar; and on a loaded two-core machine the threads lost
# more at the barriers than the second core's bandwidth gained.)

cdef enum:
    BLOCK = 4096


cdef inline Py_ssize_t _num_blocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


cdef inline double _sum_blocks(const double* partial, Py_ssize_t nb) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t k
    for k in range(nb):
        total += partial[k]
    return total


cdef double _dot_b(const floating* a, const floating* b, Py_ssize_t n, double* ws) noexcept nogil:
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _dot(a, b, n)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _dot(a + start, b + start, min(<Py_ssize_t>BLOCK, n - start))
    return _sum_blocks(ws, nb)


cdef double _axpy_dot_b(floating* q, floating a, const floating* x, const floating* w,
                        Py_ssize_t n, double* ws) noexcept nogil:
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _axpy_dot(q, a, x, w, n)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _axpy_dot(q + start, a, x + start, w + start, min(<Py_ssize_t>BLOCK, n - start))
    return _sum_blocks(ws, nb)


cdef double _scaled_axpy_dot_b(floating* out, floating sign, const floating* src, floating a,
                               const floating* x, floating scale, const floating* w,
                               Py_ssize_t n, double* ws) noexcept nogil:
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _scaled_axpy_dot(out, sign, src, a, x, scale, w, n)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _scaled_axpy_dot(out + start, sign, src + start, a, x + start, scale,
                                 w + start, min(<Py_ssize_t>BLOCK, n - start))
    return _sum_blocks(ws, nb)


cdef double _copy_dot_b(floating* dst, const floating* src, const floating* w, Py_ssize_t n,
                        double* ws) noexcept nogil:
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _copy_dot(dst, src, w, n)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _copy_dot(dst + start, src + start, w + start, min(<Py_ssize_t>BLOCK, n - start))
    return _sum_blocks(ws, nb)


cdef double _new_pair_b(floating* s, floating* y, floating stp, const floating* d,
                        const floating* g_new, const floating* g_old, Py_ssize_t n,
                        double* ws) noexcept nogil:
    """Blocked ``_new_pair``."""
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _new_pair(s, y, stp, d, g_new, g_old, n)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _new_pair(s + start, y + start, stp, d + start, g_new + start, g_old + start,
                          min(<Py_ssize_t>BLOCK, n - start))
    return _sum_blocks(ws, nb)


cdef double _two_loop(floating* d, const floating* g, const floating* history, const double* rho,
                      double* alpha, Py_ssize_t n, Py_ssize_t stride, int m, int newest,
                      int count, double gamma, double* ws) noexcept nogil:
    """d <- -H g with the L-BFGS inverse Hessian H of the stored pairs; returns the slope g'd.

    ``history`` is a ring buffer of ``m`` slots, slot ``k`` holding ``s_k`` at
    ``history[2k stride]`` and ``y_k`` at ``history[(2k+1) stride]`` (``stride >= n``, so rows can
    start on cache-line boundaries); ``newest`` is the slot of the latest pair and ``count`` how
    many slots are valid. ``rho_k = 1 / (s_k' y_k)``; ``gamma = s'y / y'y`` of the newest pair
    scales the initial matrix ``H0 = gamma I``.

    Each update ``q -= a_i y_i`` is fused with the next inner product, so every stored vector is
    streamed once per loop and d once per pair: at large n the recursion is bound by memory
    bandwidth, and this is the least traffic the two-loop form allows.
    """
    cdef int k, slot, prev
    cdef double a, b, acc
    cdef const floating* y_oldest
    if count == 0:
        _scaled_copy(d, <floating>(-gamma), g, n)
        return _dot_b(g, d, n, ws)
    # First loop, newest to oldest: a_i = rho_i s_i'q, q -= a_i y_i, starting from q = -g.
    slot = newest
    a = -(rho[slot] * _dot_b(history + 2 * slot * stride, g, n, ws))
    alpha[slot] = a
    for k in range(1, count):
        prev = slot
        slot = slot - 1 if slot > 0 else m - 1
        if k == 1:
            acc = _scaled_axpy_dot_b(d, <floating>-1.0, g, <floating>(-a),
                                     history + (2 * prev + 1) * stride, <floating>1.0,
                                     history + 2 * slot * stride, n, ws)
        else:
            acc = _axpy_dot_b(d, <floating>(-a), history + (2 * prev + 1) * stride,
                              history + 2 * slot * stride, n, ws)
        a = rho[slot] * acc
        alpha[slot] = a
    # Last update of q, the scaling r = gamma q, and the first inner product of the second loop.
    y_oldest = history + (2 * slot + 1) * stride
    if count == 1:
        acc = _scaled_axpy_dot_b(d, <floating>-1.0, g, <floating>(-a), y_oldest, <floating>gamma,
                                 y_oldest, n, ws)
    else:
        acc = _scaled_axpy_dot_b(d, <floating>1.0, d, <floating>(-a), y_oldest, <floating>gamma,
                                 y_oldest, n, ws)
    # Second loop, oldest to newest: b_i = rho_i y_i'r, r += (a_i - b_i) s_i.
    for k in range(count):
        b = rho[slot] * acc
        prev = slot
        slot = slot + 1 if slot < m - 1 else 0
        if k < count - 1:
            acc = _axpy_dot_b(d, <floating>(alpha[prev] - b), history + 2 * prev * stride,
                              history + (2 * slot + 1) * stride, n, ws)
        else:
            acc = _axpy_dot_b(d, <floating>(alpha[prev] - b), history + 2 * prev * stride, g,
                              n, ws)
    return acc
