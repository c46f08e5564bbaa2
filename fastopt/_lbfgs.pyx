"""L-BFGS kernels and iteration driver.

Everything an L-BFGS iteration needs besides the user's objective runs here in C: the two-loop
recursion over a ring buffer of correction pairs, the Moré–Thuente line search (a port of
MINPACK-2 ``dcsrch``/``dcstep``), backtracking Armijo, and the stopping tests. The only Python calls
per iteration are to the objective (and the callback, if any), which keeps the per-iteration
overhead at a few microseconds. The vector work releases the GIL from ``NOGIL_MIN_SIZE`` elements.

setup.py builds this module with FMA contraction (and 512-bit vectors where the CPU has them): its
loops are inner products and axpys, bound by the floating-point ports without FMA at n ~ 1e3.

Float32 and float64 are both supported through the fused ``floating`` type. Inner products are
always accumulated in double precision, so float32 keeps float32 storage and bandwidth but not
float32 round-off in the scalars that steer the iteration.
"""
from cython cimport floating
from libc.math cimport sqrt, fabs, isfinite, INFINITY
from libc.string cimport memcpy
from cpython.ref cimport Py_REFCNT

cdef extern from "Python.h":
    # One positional argument, no tuple built (vectorcall); CPython >= 3.9.
    object PyObject_CallOneArg(object callable, object arg)

import numpy as np
cimport numpy as cnp

cnp.import_array()

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


cdef inline double _store_pair(floating* s, floating* y, floating stp, const floating* d,
                               const floating* g_new, const floating* g_old, floating* x,
                               Py_ssize_t n, double gtol, double* n_above_gtol) noexcept nogil:
    """s <- stp d, x <- x + s, y <- g_new - g_old; return y'y and set n_above_gtol to the
    number of |g_new_i| > gtol -- everything an accepted step needs.

    The gradient test max |g_i| <= gtol is asked as "no |g_i| > gtol": a count of comparisons
    vectorizes, a running maximum does not (without -ffinite-math-only). g_new is finite here.
    """
    cdef Py_ssize_t i
    cdef floating u
    # Separate loops, not one: with three stores among three loads the compiler needs more
    # run-time aliasing checks than it will emit (GCC's limit is 10) and ran the fused loop
    # scalar. Each of these vectorizes; the later ones read what is still in L1.
    for i in range(n):
        u = stp * d[i]
        s[i] = u
        x[i] = x[i] + u
    for i in range(n):
        y[i] = g_new[i] - g_old[i]
    # y'y and the count in loops of their own: interleaved in one loop, the two 16-lane sums
    # were vectorized with lane shuffles.
    n_above_gtol[0] = _count_above(g_new, n, gtol)
    return _dot(y, y, n)


cdef inline void _axpy(floating alpha, const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    """y <- y + alpha * x."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = y[i] + alpha * x[i]


cdef inline void _scale(floating alpha, floating* x, Py_ssize_t n) noexcept nogil:
    """x <- alpha * x."""
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = alpha * x[i]


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
    """Return the number of |x_i| > threshold (the gradient test, see ``_store_pair``)."""
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


cdef double _store_pair_b(floating* s, floating* y, floating stp, const floating* d,
                          const floating* g_new, const floating* g_old, floating* x,
                          Py_ssize_t n, double gtol, double* n_above_gtol,
                          double* ws) noexcept nogil:
    """Blocked ``_store_pair``; ``ws`` needs room for 2 * number of blocks."""
    cdef Py_ssize_t nb = _num_blocks(n), k, start
    if nb <= 1:
        return _store_pair(s, y, stp, d, g_new, g_old, x, n, gtol, n_above_gtol)
    for k in range(nb):
        start = k * BLOCK
        ws[k] = _store_pair(s + start, y + start, stp, d + start, g_new + start,
                            g_old + start, x + start, min(<Py_ssize_t>BLOCK, n - start),
                            gtol, ws + nb + k)
    n_above_gtol[0] = _sum_blocks(ws + nb, nb)
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


def two_loop_direction(const floating[::1] grad, const floating[:, ::1] history,
                       const double[::1] rho, int newest, int count, double gamma):
    """Return the L-BFGS search direction ``d = -H grad`` (two-loop recursion).

    Parameters
    ----------
    grad : ndarray, shape (n,), float32 or float64
    history : ndarray, shape (2 m, n), same dtype
        Ring buffer of correction pairs: row ``2k`` is ``s_k = x_{k+1} - x_k`` and row ``2k+1`` is
        ``y_k = g_{k+1} - g_k`` of slot ``k``.
    rho : ndarray, shape (m,), float64
        ``rho_k = 1 / (s_k' y_k)``.
    newest : int
        Slot of the most recent pair; older pairs are at ``newest - 1, newest - 2, ...`` (mod m).
    count : int
        Number of valid pairs (0 <= count <= m).
    gamma : float
        Initial inverse-Hessian scale, ``H0 = gamma I`` (usually ``s'y / y'y`` of the newest pair).

    Returns
    -------
    d : ndarray, shape (n,)
        With ``q = -grad``: for i from newest to oldest, ``a_i = rho_i s_i'q``, ``q -= a_i y_i``;
        then ``r = gamma q``; for i from oldest to newest, ``b_i = rho_i y_i'r``,
        ``r += (a_i - b_i) s_i``; ``d = r``.
    """
    cdef Py_ssize_t n = grad.shape[0]
    cdef int m = rho.shape[0]
    if history.shape[0] != 2 * m or history.shape[1] != n:
        raise ValueError(f"history must have shape (2*m, n) = ({2 * m}, {n}), got "
                         f"({history.shape[0]}, {history.shape[1]})")
    if m < 1 or not (0 <= count <= m) or not (0 <= newest < m):
        raise ValueError("need m >= 1, 0 <= count <= m and 0 <= newest < m")
    dtype = np.float32 if floating is float else np.float64
    out = np.empty(n, dtype=dtype)
    cdef floating[::1] d = out
    cdef double[::1] alpha = np.empty(m)
    cdef double[::1] ws = np.empty(2 * _num_blocks(n) + 1)
    if n > 0:
        with nogil:
            _two_loop(&d[0], &grad[0], &history[0, 0], &rho[0], &alpha[0], n, n, m, newest,
                      count, gamma, &ws[0])
    return out


# ---------------------------------------------------------------------------------------------
# Moré–Thuente line search (MINPACK-2 dcsrch / dcstep)
# ---------------------------------------------------------------------------------------------

cdef enum:
    TASK_START = 0
    TASK_FG = 1
    TASK_CONVERGENCE = 2
    TASK_WARN_ROUNDING = 3
    TASK_WARN_XTOL = 4
    TASK_WARN_STPMAX = 5
    TASK_WARN_STPMIN = 6
    TASK_ERROR = 7

TASK_NAMES = {
    TASK_START: "START",
    TASK_FG: "FG",
    TASK_CONVERGENCE: "CONVERGENCE",
    TASK_WARN_ROUNDING: "WARNING: ROUNDING ERRORS PREVENT PROGRESS",
    TASK_WARN_XTOL: "WARNING: XTOL TEST SATISFIED",
    TASK_WARN_STPMAX: "WARNING: STP = STPMAX",
    TASK_WARN_STPMIN: "WARNING: STP = STPMIN",
    TASK_ERROR: "ERROR",
}


cdef struct SearchState:
    double ftol, gtol, xtol, stpmin, stpmax
    bint brackt
    int stage
    double ginit, gtest, gx, gy, finit, fx, fy, stx, sty, stmin, stmax, width, width1


cdef inline double _clip(double v, double lo, double hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline double _sign(double v) noexcept nogil:
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)


cdef void _dcstep(double* stx, double* fx, double* dx, double* sty, double* fy, double* dy,
                  double* stp, double fp, double dp, bint* brackt, double stpmin,
                  double stpmax) noexcept nogil:
    """Safeguarded step of MINPACK-2 ``dcstep``: a cubic or quadratic step from the interval
    ``[stx, sty]`` and the trial ``stp``, and the updated interval (see Moré & Thuente, 1994)."""
    cdef double sgnd = _sign(dp) * _sign(dx[0])
    cdef double theta, s, gamma, p, q, r, stpc, stpq, stpf
    if fp > fx[0]:
        # Higher function value: the minimum is bracketed.
        theta = 3.0 * (fx[0] - fp) / (stp[0] - stx[0]) + dx[0] + dp
        s = max(fabs(theta), fabs(dx[0]), fabs(dp))
        gamma = s * sqrt((theta / s) * (theta / s) - (dx[0] / s) * (dp / s))
        if stp[0] < stx[0]:
            gamma = -gamma
        p = (gamma - dx[0]) + theta
        q = ((gamma - dx[0]) + gamma) + dp
        r = p / q
        stpc = stx[0] + r * (stp[0] - stx[0])
        stpq = stx[0] + ((dx[0] / ((fx[0] - fp) / (stp[0] - stx[0]) + dx[0])) / 2.0) * (stp[0] - stx[0])
        if fabs(stpc - stx[0]) <= fabs(stpq - stx[0]):
            stpf = stpc
        else:
            stpf = stpc + (stpq - stpc) / 2.0
        brackt[0] = True
    elif sgnd < 0.0:
        # Derivatives of opposite sign: the minimum is bracketed.
        theta = 3.0 * (fx[0] - fp) / (stp[0] - stx[0]) + dx[0] + dp
        s = max(fabs(theta), fabs(dx[0]), fabs(dp))
        gamma = s * sqrt((theta / s) * (theta / s) - (dx[0] / s) * (dp / s))
        if stp[0] > stx[0]:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = ((gamma - dp) + gamma) + dx[0]
        r = p / q
        stpc = stp[0] + r * (stx[0] - stp[0])
        stpq = stp[0] + (dp / (dp - dx[0])) * (stx[0] - stp[0])
        if fabs(stpc - stp[0]) > fabs(stpq - stp[0]):
            stpf = stpc
        else:
            stpf = stpq
        brackt[0] = True
    elif fabs(dp) < fabs(dx[0]):
        # Same sign, derivative magnitude decreases.
        theta = 3.0 * (fx[0] - fp) / (stp[0] - stx[0]) + dx[0] + dp
        s = max(fabs(theta), fabs(dx[0]), fabs(dp))
        gamma = s * sqrt(max(0.0, (theta / s) * (theta / s) - (dx[0] / s) * (dp / s)))
        if stp[0] > stx[0]:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = (gamma + (dx[0] - dp)) + gamma
        r = p / q
        if r < 0.0 and gamma != 0.0:
            stpc = stp[0] + r * (stx[0] - stp[0])
        elif stp[0] > stx[0]:
            stpc = stpmax
        else:
            stpc = stpmin
        stpq = stp[0] + (dp / (dp - dx[0])) * (stx[0] - stp[0])
        if brackt[0]:
            if fabs(stpc - stp[0]) < fabs(stpq - stp[0]):
                stpf = stpc
            else:
                stpf = stpq
            if stp[0] > stx[0]:
                stpf = min(stp[0] + 0.66 * (sty[0] - stp[0]), stpf)
            else:
                stpf = max(stp[0] + 0.66 * (sty[0] - stp[0]), stpf)
        else:
            if fabs(stpc - stp[0]) > fabs(stpq - stp[0]):
                stpf = stpc
            else:
                stpf = stpq
            stpf = _clip(stpf, stpmin, stpmax)
    else:
        # Same sign, derivative magnitude does not decrease.
        if brackt[0]:
            theta = 3.0 * (fp - fy[0]) / (sty[0] - stp[0]) + dy[0] + dp
            s = max(fabs(theta), fabs(dy[0]), fabs(dp))
            gamma = s * sqrt((theta / s) * (theta / s) - (dy[0] / s) * (dp / s))
            if stp[0] > sty[0]:
                gamma = -gamma
            p = (gamma - dp) + theta
            q = ((gamma - dp) + gamma) + dy[0]
            r = p / q
            stpc = stp[0] + r * (sty[0] - stp[0])
            stpf = stpc
        elif stp[0] > stx[0]:
            stpf = stpmax
        else:
            stpf = stpmin
    # Update the interval that contains a minimizer.
    if fp > fx[0]:
        sty[0] = stp[0]
        fy[0] = fp
        dy[0] = dp
    else:
        if sgnd < 0.0:
            sty[0] = stx[0]
            fy[0] = fx[0]
            dy[0] = dx[0]
        stx[0] = stp[0]
        fx[0] = fp
        dx[0] = dp
    stp[0] = stpf


cdef int _dcsrch(SearchState* st, double* stp, double f, double g, int task) noexcept nogil:
    """One reverse-communication call of MINPACK-2 ``dcsrch``.

    Searches for a step satisfying the strong Wolfe conditions
    ``phi(stp) <= phi(0) + ftol stp phi'(0)`` and ``|phi'(stp)| <= gtol |phi'(0)|``.
    On ``TASK_START`` pass ``f = phi(0)``, ``g = phi'(0)`` and the initial ``stp``; afterwards pass
    ``phi`` and ``phi'`` at the ``stp`` returned with ``TASK_FG``.
    """
    cdef double ftest, fm, fxm, fym, gm, gxm, gym
    cdef double xtrapl = 1.1, xtrapu = 4.0
    if task == TASK_START:
        if (stp[0] < st.stpmin or stp[0] > st.stpmax or g >= 0.0 or st.ftol < 0.0
                or st.gtol < 0.0 or st.xtol < 0.0 or st.stpmin < 0.0 or st.stpmax < st.stpmin):
            return TASK_ERROR
        st.brackt = False
        st.stage = 1
        st.finit = f
        st.ginit = g
        st.gtest = st.ftol * st.ginit
        st.width = st.stpmax - st.stpmin
        st.width1 = st.width / 0.5
        st.stx = 0.0
        st.fx = st.finit
        st.gx = st.ginit
        st.sty = 0.0
        st.fy = st.finit
        st.gy = st.ginit
        st.stmin = 0.0
        st.stmax = stp[0] + xtrapu * stp[0]
        return TASK_FG

    ftest = st.finit + stp[0] * st.gtest
    if st.stage == 1 and f <= ftest and g >= 0.0:
        st.stage = 2
    task = TASK_FG
    if st.brackt and (stp[0] <= st.stmin or stp[0] >= st.stmax):
        task = TASK_WARN_ROUNDING
    if st.brackt and st.stmax - st.stmin <= st.xtol * st.stmax:
        task = TASK_WARN_XTOL
    if stp[0] == st.stpmax and f <= ftest and g <= st.gtest:
        task = TASK_WARN_STPMAX
    if stp[0] == st.stpmin and (f > ftest or g >= st.gtest):
        task = TASK_WARN_STPMIN
    if f <= ftest and fabs(g) <= st.gtol * (-st.ginit):
        task = TASK_CONVERGENCE
    if task != TASK_FG:
        return task

    if st.stage == 1 and f <= st.fx and f > ftest:
        # Use the modified function psi(stp) = f(stp) - f(0) - ftol stp f'(0) until a step with
        # psi <= 0 and f' >= 0 is found.
        fm = f - stp[0] * st.gtest
        fxm = st.fx - st.stx * st.gtest
        fym = st.fy - st.sty * st.gtest
        gm = g - st.gtest
        gxm = st.gx - st.gtest
        gym = st.gy - st.gtest
        _dcstep(&st.stx, &fxm, &gxm, &st.sty, &fym, &gym, stp, fm, gm, &st.brackt,
                st.stmin, st.stmax)
        st.fx = fxm + st.stx * st.gtest
        st.fy = fym + st.sty * st.gtest
        st.gx = gxm + st.gtest
        st.gy = gym + st.gtest
    else:
        _dcstep(&st.stx, &st.fx, &st.gx, &st.sty, &st.fy, &st.gy, stp, f, g, &st.brackt,
                st.stmin, st.stmax)

    # Force sufficient decrease of the bracket width (bisect if it did not shrink enough).
    if st.brackt:
        if fabs(st.sty - st.stx) >= 0.66 * st.width1:
            stp[0] = st.stx + 0.5 * (st.sty - st.stx)
        st.width1 = st.width
        st.width = fabs(st.sty - st.stx)
        st.stmin = min(st.stx, st.sty)
        st.stmax = max(st.stx, st.sty)
    else:
        st.stmin = stp[0] + xtrapl * (stp[0] - st.stx)
        st.stmax = stp[0] + xtrapu * (stp[0] - st.stx)
    stp[0] = _clip(stp[0], st.stpmin, st.stpmax)
    # No further progress possible: return the best step so far.
    if (st.brackt and (stp[0] <= st.stmin or stp[0] >= st.stmax)) or \
            (st.brackt and st.stmax - st.stmin <= st.xtol * st.stmax):
        stp[0] = st.stx
    return TASK_FG


cdef class MoreThuente:
    """Moré–Thuente line search in reverse communication (MINPACK-2 ``dcsrch``).

    Finds ``stp`` with the strong Wolfe conditions

        phi(stp) <= phi(0) + c1 * stp * phi'(0)      (sufficient decrease)
        |phi'(stp)| <= c2 * |phi'(0)|                 (curvature)

    for ``phi(stp) = f(x + stp d)``. Usage::

        ls = MoreThuente(c1=1e-4, c2=0.9)
        stp, task = ls.start(phi0, dphi0, stp0)
        while task == "FG":
            stp, task = ls.iterate(phi(stp), dphi(stp), stp)

    ``task`` ends as ``"CONVERGENCE"``, a ``"WARNING: ..."`` (``stp`` is then the last trial), or
    ``"ERROR"`` (bad arguments, e.g. a non-descent direction).
    """
    cdef SearchState state
    cdef int task

    def __init__(self, double c1=1e-4, double c2=0.9, double xtol=0.1, double stpmin=0.0,
                 double stpmax=1e10):
        if not (0.0 < c1 < c2 < 1.0):
            raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        self.state.ftol = c1
        self.state.gtol = c2
        self.state.xtol = xtol
        self.state.stpmin = stpmin
        self.state.stpmax = stpmax
        self.task = TASK_START

    def start(self, double phi0, double dphi0, double stp):
        """Begin a search from ``phi(0)``, ``phi'(0)`` with first trial ``stp``; returns (stp, task)."""
        self.task = _dcsrch(&self.state, &stp, phi0, dphi0, TASK_START)
        return stp, TASK_NAMES[self.task]

    def iterate(self, double phi, double dphi, double stp):
        """Report ``phi(stp)``, ``phi'(stp)`` for the last requested ``stp``; returns (stp, task)."""
        if self.task != TASK_FG:
            raise RuntimeError("iterate() called without a pending 'FG' request; call start()")
        self.task = _dcsrch(&self.state, &stp, phi, dphi, self.task)
        return stp, TASK_NAMES[self.task]

    def limit_step(self, double stpmax):
        """Lower the largest admissible step (used after a trial gave a non-finite value)."""
        self.state.stpmax = min(self.state.stpmax, stpmax)
        if self.state.stmax > self.state.stpmax:
            self.state.stmax = self.state.stpmax

    @property
    def best_step(self):
        """The step with the lowest value seen so far (``stx`` of dcsrch)."""
        return self.state.stx


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

cdef enum:
    STATUS_CONVERGED = 0
    STATUS_LIMIT = 1
    STATUS_ABNORMAL = 2
    STATUS_CALLBACK = 99

cdef enum:
    LS_OK = 0
    LS_FAILED = 1
    LS_NONFINITE = 2
    LS_MAXFUN = 3

cdef double STPMAX = 1e10

# Below this many elements the vector work of a call takes about as long as releasing and
# re-taking the GIL (~0.1 us each way), so it runs with the GIL held -- the trade NumPy makes with
# its own threshold for ufunc loops. A two-loop recursion at n = 8192 takes ~40 us.
cdef enum:
    NOGIL_MIN_SIZE = 8192


cimport cython


@cython.auto_pickle(False)
cdef class _Objective:
    """The user's objective, the evaluation counters, and the array x is handed over in."""
    cdef object fun
    cdef object jac
    cdef tuple args
    cdef bint no_args
    cdef bint combined
    cdef int typenum
    cdef Py_ssize_t n
    cdef public Py_ssize_t nfev
    cdef public Py_ssize_t njev
    cdef cnp.ndarray x_for_user

    def __init__(self, fun, jac, tuple args, int typenum, Py_ssize_t n):
        self.fun = fun
        self.jac = jac
        self.args = args
        self.no_args = len(args) == 0
        self.combined = jac is True
        self.typenum = typenum
        self.n = n
        self.nfev = 0
        self.njev = 0
        self.x_for_user = None

    cdef cnp.ndarray array_for_user(self):
        """An array to hand the point to the user in (the caller fills it).

        The previous one is reused when nothing but this object refers to it any more (the user
        neither kept it nor a view of it), which saves an allocation -- at large n, fresh pages
        and their page faults -- per evaluation. Otherwise a new one is made, so whatever the
        user kept is never overwritten. The iteration never reads it back, so a user who
        mutates it changes nothing."""
        cdef cnp.npy_intp dims = self.n
        if self.x_for_user is None or Py_REFCNT(self.x_for_user) != 1:
            self.x_for_user = cnp.PyArray_EMPTY(1, &dims, self.typenum, 0)
        return self.x_for_user


cdef cnp.ndarray _point_for_user(_Objective obj, const floating* x, double stp,
                                 const floating* d):
    """The user's array filled with x + stp d (with x if d is NULL).

    Computed with the same operations as the in-place update of x on acceptance, so the point
    the user evaluated and the iterate reported are bit-identical."""
    cdef cnp.ndarray xa = obj.array_for_user()
    cdef floating* dst = <floating*>cnp.PyArray_DATA(xa)
    if d == NULL:
        memcpy(dst, x, obj.n * sizeof(floating))
    elif obj.n >= NOGIL_MIN_SIZE:
        with nogil:
            _xpay(dst, x, <floating>stp, d, obj.n)
    else:
        _xpay(dst, x, <floating>stp, d, obj.n)
    return xa


cdef int _evaluate(_Objective obj, const floating* x, double stp, double* f_out,
                   floating* g_out, const floating* d, double* gd_out, double* ws) except -1:
    """f_out <- fun(x + stp d), g_out <- its gradient and, if d is not NULL, gd_out <- g'd.

    The user gets the point in an array of its own (as SciPy hands over a copy), so keeping or
    mutating it cannot corrupt the iteration. g'd is accumulated while copying the gradient; a
    NaN or Inf anywhere in g makes it non-finite, so it doubles as the finiteness check."""
    cdef cnp.ndarray xa = _point_for_user(obj, x, stp, d)
    cdef cnp.ndarray ga
    if obj.combined:
        result = PyObject_CallOneArg(obj.fun, xa) if obj.no_args else obj.fun(xa, *obj.args)
        try:
            value, grad = result
        except (TypeError, ValueError):
            raise TypeError("with jac=True, fun must return a pair (f, gradient), got "
                            f"{type(result).__name__}") from None
    else:
        value = PyObject_CallOneArg(obj.fun, xa) if obj.no_args else obj.fun(xa, *obj.args)
        xa = None
        xa = _point_for_user(obj, x, stp, d)
        grad = PyObject_CallOneArg(obj.jac, xa) if obj.no_args else obj.jac(xa, *obj.args)
    obj.nfev += 1
    obj.njev += 1
    f_out[0] = _as_double(value)
    if (cnp.PyArray_CheckExact(grad) and cnp.PyArray_TYPE(<cnp.ndarray>grad) == obj.typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>grad)):
        ga = <cnp.ndarray>grad
    else:
        ga = np.ascontiguousarray(grad, dtype=np.float32 if floating is float else np.float64)
    if cnp.PyArray_NDIM(ga) != 1 or cnp.PyArray_DIM(ga, 0) != obj.n:
        raise ValueError(f"jac: the gradient must have shape ({obj.n},) like x, got shape "
                         f"{np.shape(grad)}")
    xa = None  # drop our extra reference, so the array can be reused next time
    cdef const floating* src = <const floating*>cnp.PyArray_DATA(ga)
    if d == NULL:
        memcpy(g_out, src, obj.n * sizeof(floating))
    elif obj.n >= NOGIL_MIN_SIZE:
        with nogil:
            gd_out[0] = _copy_dot_b(g_out, src, d, obj.n, ws)
    else:
        gd_out[0] = _copy_dot_b(g_out, src, d, obj.n, ws)
    return 0


cdef inline double _as_double(object value) except? -1.0:
    if type(value) is float:
        return <double>value
    try:
        return float(value)
    except TypeError:
        raise TypeError(f"fun must return a real scalar, got {type(value).__name__} with shape "
                        f"{np.shape(value)}") from None


cdef int _line_search(_Objective obj, bint armijo, int maxls, Py_ssize_t maxfun, double c1,
                      double c2, Py_ssize_t n, const floating* x, double f, const floating* g,
                      const floating* d, double gd, double stp0, double* ft,
                      floating* gt, double* stp_out, double* gdt_out, double* ws) except -1:
    """Search along d from x; on LS_OK, stp_out is the accepted step, ft / gt the value and
    gradient at x + stp d, and gdt_out the slope gt'd. x itself is not changed.

    Trials with a NaN or Inf value or gradient are never fed to the search: the step is cut back
    towards the best finite step and the largest admissible step lowered below the bad one, so
    the search backtracks into finite territory (as SciPy's line searches do).
    """
    cdef SearchState st
    cdef int task, evals = 0
    cdef double stp = stp0, gdt = 0.0, last_bad = INFINITY, lo, stp_new, denom
    cdef bint saw_nonfinite = False
    st.ftol = c1
    st.gtol = c2
    st.xtol = 0.1
    st.stpmin = 0.0
    st.stpmax = STPMAX
    if not armijo:
        task = _dcsrch(&st, &stp, f, gd, TASK_START)
        if task != TASK_FG:
            return LS_FAILED
    while evals < maxls:
        if obj.nfev >= maxfun and evals > 0:
            return LS_MAXFUN
        _evaluate(obj, x, stp, ft, gt, d, &gdt, ws)
        evals += 1
        if not (isfinite(ft[0]) and isfinite(gdt)):
            saw_nonfinite = True
            last_bad = stp
            # Back off towards the best finite step (0 or stx); never extrapolate past here.
            lo = 0.0 if armijo else st.stx
            stp = lo + 0.1 * (stp - lo)
            if not armijo:
                st.stpmax = min(st.stpmax, last_bad)
                if not st.brackt:
                    st.stmax = min(st.stmax, last_bad)
            if not (stp > lo):
                break
            continue
        if armijo:
            if ft[0] <= f + c1 * stp * gd:
                stp_out[0] = stp
                gdt_out[0] = gdt
                return LS_OK
            # Minimizer of the quadratic through f, f'(0) and f(stp), kept in [0.1, 0.5] stp.
            denom = 2.0 * (ft[0] - f - gd * stp)
            stp_new = -gd * stp * stp / denom if denom > 0.0 else 0.5 * stp
            stp = _clip(stp_new, 0.1 * stp, 0.5 * stp)
            continue
        task = _dcsrch(&st, &stp, ft[0], gdt, TASK_FG)
        if task == TASK_CONVERGENCE:
            stp_out[0] = stp
            gdt_out[0] = gdt
            return LS_OK
        if task != TASK_FG:
            # dcsrch gives up (rounding, xtol, stpmax): keep the trial if it decreases f enough.
            if ft[0] <= f + c1 * stp * gd and ft[0] < f:
                stp_out[0] = stp
                gdt_out[0] = gdt
                return LS_OK
            return LS_NONFINITE if saw_nonfinite else LS_FAILED
        if stp >= last_bad:
            stp = st.stx + 0.5 * (last_bad - st.stx)
    return LS_NONFINITE if saw_nonfinite else LS_FAILED


def _aligned_empty(Py_ssize_t size, dtype):
    """An uninitialized 1-d array of ``size`` elements whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(size + 64 // itemsize, dtype=dtype)
    offset = (-raw.ctypes.data % 64) // itemsize
    return raw[offset:offset + size]


cdef void _accept_step(floating* x, const floating* d, const floating* g, const floating* gt,
                       Py_ssize_t n, double stp, double gd, double gdt, double eps, double gtol,
                       floating* history, Py_ssize_t stride, int m, double* rho, int* newest,
                       int* count, double* gamma, double* n_above_gtol,
                       double* ws) noexcept nogil:
    """x <- x + stp d, the new pair (s, y) = (stp d, gt - g) into the ring buffer unless its
    curvature is negligible, and n_above_gtol <- the number of |gt_i| > gtol."""
    cdef double sy, yy
    cdef floating* slot_start
    # s = stp d and y = gt - g, so s'y = stp (gt'd - g'd) costs no pass over memory.
    # Skip the pair when s'y <= eps (-g's), the rule of L-BFGS-B: the curvature along
    # the step is negligible next to the slope, and the pair would wreck H.
    sy = stp * (gdt - gd)
    if sy > eps * (-gd * stp):
        newest[0] = newest[0] + 1 if newest[0] < m - 1 else 0
        slot_start = history + 2 * newest[0] * stride
        yy = _store_pair_b(slot_start, slot_start + stride, <floating>stp, d, gt, g, x,
                           n, gtol, n_above_gtol, ws)
        if yy > 0.0:
            rho[newest[0]] = 1.0 / sy
            gamma[0] = sy / yy
            if count[0] < m:
                count[0] += 1
        else:
            # y rounded to 0 although s'y > 0: the slot is garbage, so start afresh.
            count[0] = 0
    else:
        _xpay(x, x, <floating>stp, d, n)
        n_above_gtol[0] = _count_above(gt, n, gtol)


cdef inline double _steepest_descent(floating* d, const floating* g, Py_ssize_t n,
                                     double* ws) noexcept nogil:
    """d <- -g; returns g'd."""
    _scaled_copy(d, <floating>-1.0, g, n)
    return _dot_b(g, d, n, ws)


cdef double _direction(floating* d, const floating* g, const floating* history,
                       const double* rho, double* alpha, Py_ssize_t n, Py_ssize_t stride, int m,
                       int newest, int count, double gamma, double* ws) noexcept nogil:
    """d <- -H g (steepest descent, d = -g, with an empty history); returns g'd."""
    if count == 0:
        return _steepest_descent(d, g, n, ws)
    return _two_loop(d, g, history, rho, alpha, n, stride, m, newest, count, gamma, ws)


def _run(object fun, object jac, tuple args, floating[::1] x_init, int m, double gtol,
         double ftol, Py_ssize_t maxiter, Py_ssize_t maxfun, int maxls, bint armijo,
         double c1, double c2, object callback):
    """Run L-BFGS from ``x_init``; returns ``(x, f, g, nit, nfev, njev, status, message)``.

    ``callback(x, f)`` is called after every iteration with a fresh copy of x; if it raises
    StopIteration the run stops with status 99.
    """
    cdef Py_ssize_t n = x_init.shape[0]
    cdef int typenum = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    dtype = np.float32 if floating is float else np.float64
    cdef double eps = np.finfo(dtype).eps
    cdef _Objective obj = _Objective(fun, jac, args, typenum, n)

    # Workspace: x (updated in place on acceptance; trial points go straight into the array
    # handed to the user), g of the current point and of the line-search trial (swapped on
    # acceptance, never copied), the direction, and the ring buffer of m (s, y) pairs.
    # All vectors and history rows start on 64-byte boundaries: unaligned AVX loads that straddle
    # cache lines slow the L1/L2-bound kernels of mid-sized problems by ~10%.
    cdef Py_ssize_t per_line = 64 // sizeof(floating)
    cdef Py_ssize_t stride = (n + per_line - 1) // per_line * per_line
    x_buf = _aligned_empty(n, dtype)
    x_buf[:] = x_init
    g_buf = _aligned_empty(n, dtype)
    gt_buf = _aligned_empty(n, dtype)
    d_buf = _aligned_empty(n, dtype)
    history_buf = _aligned_empty(2 * m * stride, dtype)
    rho_buf = np.zeros(m)
    alpha_buf = np.zeros(m)
    ws_buf = np.zeros(2 * _num_blocks(n) + 1)
    cdef double* ws = <double*>cnp.PyArray_DATA(ws_buf)
    cdef floating* x = <floating*>cnp.PyArray_DATA(x_buf)
    cdef floating* g = <floating*>cnp.PyArray_DATA(g_buf)
    cdef floating* gt = <floating*>cnp.PyArray_DATA(gt_buf)
    cdef floating* d = <floating*>cnp.PyArray_DATA(d_buf)
    cdef floating* history = <floating*>cnp.PyArray_DATA(history_buf)
    cdef double* rho = <double*>cnp.PyArray_DATA(rho_buf)
    cdef double* alpha = <double*>cnp.PyArray_DATA(alpha_buf)
    cdef floating* swap
    cdef bint g_is_home = True   # whether g currently lives in g_buf (else in gt_buf)

    cdef double f, ft = 0.0, f_old, gd, gdt = 0.0, stp = 0.0, stp0, gamma = 1.0
    cdef double n_above_gtol = 0.0   # how many |g_i| > gtol
    cdef Py_ssize_t nit = 0
    cdef int newest = m - 1, count = 0, ls_status, status = -1
    cdef bint fresh_start = True   # d = -g, after the start or a reset of the history
    cdef bint release_gil = n >= NOGIL_MIN_SIZE
    message = ""

    _evaluate(obj, x, 0.0, &f, g, <floating*>NULL, <double*>NULL, ws)
    if not (isfinite(f) and _all_finite(g, n)):
        return (x_buf, f, g_buf, 0, obj.nfev, obj.njev, STATUS_ABNORMAL,
                "ABNORMAL: fun returned a non-finite value or gradient at x0")
    if _count_above(g, n, gtol) == 0.0:
        return (x_buf, f, g_buf, 0, obj.nfev, obj.njev, STATUS_CONVERGED,
                "CONVERGENCE: NORM OF GRADIENT <= GTOL")

    with nogil:
        gd = _steepest_descent(d, g, n, ws)
    while True:
        if not (gd < 0.0) and not fresh_start:
            # Round-off made the quasi-Newton direction useless: forget the history.
            count = 0
            fresh_start = True
            with nogil:
                gd = _steepest_descent(d, g, n, ws)
        if not (gd < 0.0):
            status = STATUS_ABNORMAL
            message = "ABNORMAL: the gradient is not a descent direction (g'd >= 0)"
            break
        # Like L-BFGS-B, a step along -g starts at length 1 (||d|| = ||g|| = sqrt(-g'd)).
        stp0 = min(1.0 / sqrt(-gd), STPMAX) if fresh_start else 1.0

        ls_status = _line_search(obj, armijo, maxls, maxfun, c1, c2, n, x, f, g, d, gd, stp0,
                                 &ft, gt, &stp, &gdt, ws)
        if ls_status == LS_MAXFUN:
            status = STATUS_LIMIT
            message = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
            break
        if ls_status != LS_OK:
            if not fresh_start:
                # Retry once along steepest descent with an empty history before giving up.
                count = 0
                fresh_start = True
                with nogil:
                    gd = _steepest_descent(d, g, n, ws)
                continue
            status = STATUS_ABNORMAL
            if ls_status == LS_NONFINITE:
                message = ("ABNORMAL: fun returned NaN or Inf along the search direction and no "
                           "finite point with sufficient decrease was found")
            else:
                message = "ABNORMAL: LINE SEARCH FAILED (no step with sufficient decrease)"
            break

        if release_gil:
            with nogil:
                _accept_step(x, d, g, gt, n, stp, gd, gdt, eps, gtol, history, stride, m, rho,
                             &newest, &count, &gamma, &n_above_gtol, ws)
        else:
            _accept_step(x, d, g, gt, n, stp, gd, gdt, eps, gtol, history, stride, m, rho,
                         &newest, &count, &gamma, &n_above_gtol, ws)
        swap = g
        g = gt
        gt = swap
        g_is_home = not g_is_home
        f_old = f
        f = ft
        nit += 1

        if callback is not None:
            xa = np.empty(n, dtype=dtype)
            memcpy(cnp.PyArray_DATA(xa), x, n * sizeof(floating))
            try:
                callback(xa, f)
            except StopIteration:
                status = STATUS_CALLBACK
                message = "`callback` raised `StopIteration`."
                break

        if n_above_gtol == 0.0:
            status = STATUS_CONVERGED
            message = "CONVERGENCE: NORM OF GRADIENT <= GTOL"
            break
        if (f_old - f) <= ftol * max(fabs(f_old), fabs(f), 1.0):
            status = STATUS_CONVERGED
            message = "CONVERGENCE: RELATIVE REDUCTION OF F <= FTOL"
            break
        if nit >= maxiter:
            status = STATUS_LIMIT
            message = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
            break
        if obj.nfev > maxfun:
            status = STATUS_LIMIT
            message = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
            break
        fresh_start = count == 0
        if release_gil:
            with nogil:
                gd = _direction(d, g, history, rho, alpha, n, stride, m, newest, count, gamma, ws)
        else:
            gd = _direction(d, g, history, rho, alpha, n, stride, m, newest, count, gamma, ws)

    return (x_buf, f, g_buf if g_is_home else gt_buf, nit, obj.nfev, obj.njev, status, message)
