"""Moré–Thuente line search (included by _lbfgs.pyx)."""
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


cdef inline void _set_stpmax(SearchState* st, double stpmax) noexcept nogil:
    """The largest step, and what TASK_START derives from it (the first bracket widths), for a
    search started with a provisional one."""
    st.stpmax = stpmax
    st.width = st.stpmax - st.stpmin
    st.width1 = st.width / 0.5


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

    Examples
    --------
    Along :math:`\\phi(a) = (a - 3)^2` from a first trial of 0.1, too short for the curvature
    condition (:math:`|\\phi'(0.1)| = 5.8 > 0.9 |\\phi'(0)|`), the search extrapolates:

    >>> from fastopt.minimize import MoreThuente
    >>> phi = lambda a: (a - 3.0) ** 2
    >>> dphi = lambda a: 2.0 * (a - 3.0)
    >>> ls = MoreThuente(c1=1e-4, c2=0.9)
    >>> stp, task = ls.start(phi(0.0), dphi(0.0), 0.1)
    >>> trials = [stp]
    >>> while task == "FG":
    ...     stp, task = ls.iterate(phi(stp), dphi(stp), stp)
    ...     trials.append(round(stp, 6))
    >>> task, trials
    ('CONVERGENCE', [0.1, 0.5, 0.5])
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
