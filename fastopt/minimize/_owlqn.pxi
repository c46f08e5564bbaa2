# OWL-QN: L-BFGS for f(x) + sum_i w_i |x_i| (included by _lbfgs.pyx; float64 only).
#
# Andrew & Gao, "Scalable training of L1-regularized log-linear models", ICML 2007. The L1 term
# is not differentiable where x_i = 0, so the iteration works with the pseudo-gradient
#
#     pg_i = g_i + w_i sign(x_i)                       if x_i != 0
#          = g_i + w_i   if g_i + w_i < 0,  g_i - w_i   if g_i - w_i > 0,  else 0   (x_i = 0)
#
# (the steepest-descent direction of F is -pg). The two-loop recursion over pairs of the smooth
# part (s = x_{k+1} - x_k, y = g_{k+1} - g_k) turns -pg into d; components of d that disagree in
# sign with -pg are zeroed; the line search backtracks along x(a) = P(x + a d), P zeroing every
# coordinate that leaves the orthant sign(x_i) (sign(-pg_i) where x_i = 0), until
# F(x(a)) <= F(x) + c1 pg'(x(a) - x). Within one orthant F is smooth, so this is L-BFGS there.

cdef double _pseudo_gradient(double* pg, const double* x, const double* g, const double* w,
                             Py_ssize_t n) noexcept nogil:
    """pg <- the pseudo-gradient of f + sum w_i |x_i|; returns max |pg_i|."""
    cdef Py_ssize_t i
    cdef double gi, norm = 0.0
    for i in range(n):
        gi = g[i]
        if x[i] > 0.0:
            gi = gi + w[i]
        elif x[i] < 0.0:
            gi = gi - w[i]
        elif gi + w[i] < 0.0:
            gi = gi + w[i]
        elif gi - w[i] > 0.0:
            gi = gi - w[i]
        else:
            gi = 0.0
        pg[i] = gi
        norm = max(norm, fabs(gi))
    return norm


cdef double _weighted_l1(const double* x, const double* w, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(n):
        total += w[i] * fabs(x[i])
    return total


cdef double _orthant_direction(double* d, const double* pg, Py_ssize_t n) noexcept nogil:
    """Zero the d_i that point against -pg_i; returns pg'd."""
    cdef Py_ssize_t i
    cdef double slope = 0.0
    for i in range(n):
        if d[i] * pg[i] >= 0.0:
            d[i] = 0.0
        slope += d[i] * pg[i]
    return slope


cdef double _orthant_trial(double* xt, const double* x, double stp, const double* d,
                           const double* pg, Py_ssize_t n) noexcept nogil:
    """xt <- P(x + stp d) (coordinates leaving the orthant of x set to 0); returns
    pg'(xt - x)."""
    cdef Py_ssize_t i
    cdef double orthant, slope = 0.0
    for i in range(n):
        orthant = x[i] if x[i] != 0.0 else -pg[i]
        xt[i] = x[i] + stp * d[i]
        if xt[i] * orthant <= 0.0:
            xt[i] = 0.0
        slope += pg[i] * (xt[i] - x[i])
    return slope


def _run_owlqn(object fun, object jac, tuple args, const double[::1] x_init,
               const double[::1] weights, LbfgsOptions options, object counter=None):
    """OWL-QN from ``x_init`` for ``fun + sum weights_i |x_i|``; returns what ``_run`` does, with
    f including the penalty and the pseudo-gradient as the gradient. Backtracking only (the
    Wolfe curvature test has no meaning across orthant projections): ``options.line_search``
    and ``c2`` are ignored."""
    cdef Py_ssize_t n = x_init.shape[0], i
    cdef _Objective obj = _Objective(fun, jac, args, cnp.NPY_FLOAT64, n, counter)
    cdef int m = options.m, maxls = options.maxls
    cdef double gtol = options.gtol, c1 = options.c1
    # One slot more than the m pairs in use: a candidate pair is written there and kept only if
    # its curvature passes, without losing the oldest pair in use.
    cdef _Workspace work = _Workspace(np.asarray(x_init), m + 1, m, True)
    cdef _Ring* ring = &work.ring
    cdef Py_ssize_t stride = work.stride
    x_buf = work.x
    xt_buf = work.xt
    pg_buf = _aligned_empty(n, np.float64)
    cdef double* ws = <double*>cnp.PyArray_DATA(work.scratch)
    cdef double* x = <double*>cnp.PyArray_DATA(work.x)
    cdef double* xt = <double*>cnp.PyArray_DATA(work.xt)
    cdef double* g = <double*>cnp.PyArray_DATA(work.g)
    cdef double* gt = <double*>cnp.PyArray_DATA(work.gt)
    cdef double* pg = <double*>cnp.PyArray_DATA(pg_buf)
    cdef double* d = <double*>cnp.PyArray_DATA(work.d)
    cdef double* history = <double*>cnp.PyArray_DATA(work.history)
    cdef double* alpha = <double*>cnp.PyArray_DATA(work.alpha)
    cdef const double* w = &weights[0]
    cdef double* swap
    cdef double* s_slot
    cdef bint x_is_home = True
    cdef double f, ft = 0.0, big_f, big_ft = 0.0, big_f_old, slope, trial_slope, stp
    cdef double pg_norm, sy, yy, eps = np.finfo(np.float64).eps
    cdef Py_ssize_t nit = 0
    cdef int evals, status = STATUS_RUNNING
    cdef _Ring ring_before = ring[0]
    cdef bint accepted
    message = ""

    _evaluate(obj, x, 0.0, <double*>NULL, <_Box*>NULL, &f, g, <double*>NULL, ws)
    big_f = f + _weighted_l1(x, w, n)
    pg_norm = _pseudo_gradient(pg, x, g, w, n)
    if not (isfinite(big_f) and _all_finite(g, n)):
        status, message = STATUS_ABNORMAL, MSG_NONFINITE_X0
    elif pg_norm <= gtol:
        status, message = STATUS_CONVERGED, MSG_PGTOL
    while status == STATUS_RUNNING:
        _direction(d, pg, history, ring, alpha, n, stride, ws)
        slope = _orthant_direction(d, pg, n)
        accepted = False
        if slope < 0.0:
            stp = _first_step(nit, sqrt(_dot_b(d, d, n, ws)), STPMAX)
            for evals in range(maxls):
                trial_slope = _orthant_trial(xt, x, stp, d, pg, n)
                _evaluate(obj, xt, 0.0, <double*>NULL, <_Box*>NULL, &ft, gt, <double*>NULL, ws)
                big_ft = ft + _weighted_l1(xt, w, n)
                if isfinite(big_ft) and _all_finite(gt, n) and \
                        big_ft <= big_f + c1 * trial_slope:
                    accepted = True
                    break
                stp = stp * (0.1 if not isfinite(big_ft) else 0.5)
        if not accepted:
            if ring.count > 0:
                _forget(ring)
                continue
            status, message = STATUS_ABNORMAL, MSG_ABNORMAL
            break
        # The pair of the smooth part, into the free slot of the ring.
        ring_before = ring[0]
        s_slot = history + 2 * _free_slot(ring) * stride
        sy = 0.0
        yy = 0.0
        for i in range(n):
            s_slot[i] = xt[i] - x[i]
            s_slot[stride + i] = gt[i] - g[i]
            sy += s_slot[i] * s_slot[stride + i]
            yy += s_slot[stride + i] * s_slot[stride + i]
        if sy > eps * fabs(trial_slope) and yy > 0.0:
            _commit_pair(ring, sy, yy)
        swap = x
        x = xt
        xt = swap
        x_is_home = not x_is_home
        swap = g
        g = gt
        gt = swap
        big_f_old = big_f
        big_f = big_ft
        nit += 1
        pg_norm = _pseudo_gradient(pg, x, g, w, n)
        status = _after_iteration(
            obj, options.callback,
            (x_buf if x_is_home else xt_buf).copy() if options.callback is not None else None,
            big_f, big_f_old, nit, options.maxiter, options.maxfun, pg_norm <= gtol,
            options.ftol)
        if status != STATUS_RUNNING:
            message = _stop_message(status, obj, nit, options.maxiter, pg_norm <= gtol)
            # Report the pairs the last direction came from (as _run and L-BFGS-B do).
            ring[0] = ring_before
            break

    return _make_result(work, x_buf if x_is_home else xt_buf, big_f, pg_buf, nit, obj, status,
                        message, ring.newest, ring.count, ring.updates)
