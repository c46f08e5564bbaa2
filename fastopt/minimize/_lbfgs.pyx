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

include "_lbfgs_kernels.pxi"
include "_more_thuente.pxi"


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

    Examples
    --------
    One pair of :math:`f(x) = x^\\top x` (so :math:`y = 2 s`) and :math:`\\gamma = s^\\top y /
    y^\\top y = 1/2`: the direction is Newton's, :math:`-\\tfrac12 g`.

    >>> import numpy as np
    >>> from fastopt.minimize import two_loop_direction
    >>> s, y = np.array([1.0, 0.0]), np.array([2.0, 0.0])
    >>> history = np.stack([s, y])             # m = 1: row 0 is s, row 1 is y
    >>> rho = np.array([1.0 / (s @ y)])
    >>> two_loop_direction(np.array([2.0, 4.0]), history, rho, 0, 1, (s @ y) / (y @ y))
    array([-1., -2.])
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
# Driver
# ---------------------------------------------------------------------------------------------
# The control flow is L-BFGS-B's (Byrd, Lu, Nocedal & Zhu 1995; SciPy's driver around it), so
# that results, evaluation counts and messages are SciPy's: a Moré–Thuente search with
# c1 = 1e-3, c2 = 0.9, xtol = 0.1 that starts at stp = 1 (at 1 / ||d|| on the first iteration),
# accepts the step dcsrch ends on (also on its warnings), drops the history and retries along
# steepest descent when a search fails, and after each iteration asks, in this order: callback,
# maxiter, maxfun, projected-gradient test, relative reduction of f (``_after_iteration``: the
# order of fastopt.minimize._common.stopping_status, which this module cannot import).
#
# The three drivers -- ``_run`` below, ``_run_bounded`` (_lbfgsb.pxi) and ``_run_owlqn``
# (_owlqn.pxi) -- take their settings as one ``LbfgsOptions``, work in one ``_Workspace``
# (vectors and the history ring with its stride) and return one ``LbfgsResult``.

cdef enum:
    STATUS_RUNNING = -1
    STATUS_CONVERGED = 0
    STATUS_LIMIT = 1
    STATUS_ABNORMAL = 2
    STATUS_CALLBACK = 99

cdef enum:
    LS_OK = 0
    LS_FAILED = 1
    LS_NONFINITE = 2

cdef double STPMAX = 1e10

MSG_PGTOL = "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
MSG_FTOL = "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
MSG_MAXITER = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
MSG_MAXFUN = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
MSG_CALLBACK = "STOP: CALLBACK REQUESTED HALT"
MSG_ABNORMAL = "ABNORMAL: "
MSG_NONFINITE = ("ABNORMAL: fun returned NaN or Inf along the search direction and no finite "
                 "point with sufficient decrease was found")
MSG_NONFINITE_X0 = "ABNORMAL: fun returned a non-finite value or gradient at x0"

# Below this many elements the vector work of a call takes about as long as releasing and
# re-taking the GIL (~0.1 us each way), so it runs with the GIL held -- the trade NumPy makes with
# its own threshold for ufunc loops. A two-loop recursion at n = 8192 takes ~40 us
# (AMD EPYC, 2 cores, 2026).
cdef enum:
    NOGIL_MIN_SIZE = 8192


cimport cython


cdef struct _Box:
    # Bounds with -inf / +inf where a side is open, so clipping is a branch-free min/max.
    const double* lower
    const double* upper
    # L-BFGS-B's nbd: 0 no bound, 1 lower only, 2 both, 3 upper only.
    const int* kind
    # The point a full step (stp = 1) lands on: the subspace minimizer, used as it is.
    const double* full_step


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
    # An object whose ``nfev`` counts evaluations (SciPy's ScalarFunction, which also counts
    # those of finite differences); None: this object's own count.
    cdef object counter

    def __init__(self, fun, jac, tuple args, int typenum, Py_ssize_t n, counter=None):
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
        self.counter = counter

    cdef Py_ssize_t evaluations(self) except -1:
        """Evaluations so far, as the ``maxfun`` test counts them."""
        if self.counter is None:
            return self.nfev
        return self.counter.nfev

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


cdef void _trial_point(floating* dst, const floating* x, double stp, const floating* d,
                       Py_ssize_t n, const _Box* box) noexcept nogil:
    """dst <- x + stp d, projected onto the box if there is one (L-BFGS-B's trial point: the
    projection only undoes rounding past a bound; a full step lands on the subspace minimizer
    itself)."""
    cdef Py_ssize_t i
    if box != NULL and stp == 1.0:
        for i in range(n):
            dst[i] = <floating>box.full_step[i]
        return
    _xpay(dst, x, <floating>stp, d, n)
    if box != NULL:
        for i in range(n):
            dst[i] = <floating>min(max(<double>dst[i], box.lower[i]), box.upper[i])


cdef cnp.ndarray _point_for_user(_Objective obj, const floating* x, double stp,
                                 const floating* d, const _Box* box):
    """The user's array filled with the trial point x + stp d (with x if d is NULL).

    Computed with the same operations as the update of x on acceptance, so the point the user
    evaluated and the iterate reported are bit-identical."""
    cdef cnp.ndarray xa = obj.array_for_user()
    cdef floating* dst = <floating*>cnp.PyArray_DATA(xa)
    if d == NULL:
        memcpy(dst, x, obj.n * sizeof(floating))
    elif obj.n >= NOGIL_MIN_SIZE:
        with nogil:
            _trial_point(dst, x, stp, d, obj.n, box)
    else:
        _trial_point(dst, x, stp, d, obj.n, box)
    return xa


cdef int _evaluate(_Objective obj, const floating* x, double stp, const floating* d,
                   const _Box* box, double* f_out, floating* g_out, double* gd_out,
                   double* ws) except -1:
    """f_out <- fun(trial), g_out <- its gradient and, if d is not NULL, gd_out <- g'd, where the
    trial point is x + stp d (projected onto the box), or x itself if d is NULL.

    The user gets the point in an array of its own (as SciPy hands over a copy), so keeping or
    mutating it cannot corrupt the iteration. g'd is accumulated while copying the gradient; a
    NaN or Inf anywhere in g makes it non-finite, so it doubles as the finiteness check."""
    cdef cnp.ndarray xa = _point_for_user(obj, x, stp, d, box)
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
        xa = _point_for_user(obj, x, stp, d, box)
        grad = PyObject_CallOneArg(obj.jac, xa) if obj.no_args else obj.jac(xa, *obj.args)
    obj.nfev += 1
    obj.njev += 1
    f_out[0] = _as_double(value)
    # A byte-swapped gradient has the native type number: it is converted by value, as SciPy does.
    if (cnp.PyArray_CheckExact(grad) and cnp.PyArray_TYPE(<cnp.ndarray>grad) == obj.typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>grad)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>grad)):
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


# How an objective value that is not a float becomes one: fastopt._validation.objective_value,
# handed in by fastopt._backend when it loads this module (set_objective_value), so that the rule
# -- SciPy's: any real number or size-1 array, text refused -- is written once, and this compiled
# module imports nothing from the Python layer above it.
cdef object _objective_value = None


def set_objective_value(converter):
    """Set the function that turns an objective's value that is not a float into one (raising
    TypeError/ValueError for anything else); fastopt._backend sets it at import."""
    global _objective_value
    if not callable(converter):
        raise TypeError(f"converter must be callable, got {type(converter).__name__}")
    _objective_value = converter


cdef inline double _as_double(object value) except? -1.0:
    """The objective's value as a double; like SciPy, any size-1 array or sequence is taken."""
    if isinstance(value, float):     # float and its subclasses, such as np.float64
        return <double>value
    if _objective_value is None:
        raise RuntimeError("fastopt.minimize._lbfgs was imported without fastopt._backend, which sets how "
                           "objective values are read (import fastopt instead)")
    return _objective_value(value)


cdef int _line_search(_Objective obj, bint armijo, int maxls, double c1, double c2,
                      Py_ssize_t n, const floating* x, double f, const floating* g,
                      const floating* d, double gd, double stp0, double stpmax,
                      const _Box* box, double* ft, floating* gt, double* stp_out,
                      double* gdt_out, double* ws) except -1:
    """Search along d from x; on LS_OK, stp_out is the accepted step, ft / gt the value and
    gradient at the trial point of that step, and gdt_out the slope gt'd. x is not changed.

    As in L-BFGS-B, the step Moré–Thuente ends on is taken also when it ends on a warning
    (rounding errors, xtol, stpmax): the value there has been evaluated and the stopping tests
    judge it. Trials with a NaN or Inf value or gradient are never fed to the search: the step is
    cut back towards the best finite step and the largest admissible step lowered below the bad
    one, so the search backtracks into finite territory (as SciPy's line searches do).

    ``stpmax < 0`` says that the largest feasible step along d is at least stp0 = 1 but not
    computed (a pass over four vectors): it matters only once the search goes on past its first
    trial, and is computed then, with the search state set as if it had been known from the
    start.
    """
    cdef SearchState st, trial
    cdef int task, evals = 0
    cdef double stp = stp0, gdt = 0.0, last_bad = INFINITY, lo, stp_new, denom, stp_trial
    cdef bint saw_nonfinite = False, lazy_stpmax = stpmax < 0.0
    st.ftol = c1
    st.gtol = c2
    st.xtol = 0.1
    st.stpmin = 0.0
    st.stpmax = STPMAX if lazy_stpmax else stpmax
    if not armijo:
        task = _dcsrch(&st, &stp, f, gd, TASK_START)
        if task != TASK_FG:
            return LS_FAILED
    while evals < maxls:
        _evaluate(obj, x, stp, d, box, ft, gt, &gdt, ws)
        evals += 1
        if lazy_stpmax:
            lazy_stpmax = False
            if not armijo and isfinite(ft[0]) and isfinite(gdt):
                # Strong Wolfe at once (the usual case) ends the search whatever stpmax is.
                trial = st
                stp_trial = stp
                if _dcsrch(&trial, &stp_trial, ft[0], gdt, TASK_FG) == TASK_CONVERGENCE:
                    stp_out[0] = stp
                    gdt_out[0] = gdt
                    return LS_OK
            _set_stpmax(&st, _max_step_along(n, x, d, box))
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
        if task != TASK_FG:
            if task == TASK_ERROR:
                return LS_FAILED
            stp_out[0] = stp
            gdt_out[0] = gdt
            return LS_OK
        if stp >= last_bad:
            stp = st.stx + 0.5 * (last_bad - st.stx)
    return LS_NONFINITE if saw_nonfinite else LS_FAILED


cdef double _max_step_along(Py_ssize_t n, const floating* x, const floating* d,
                           const _Box* box) noexcept:
    """The largest step along d from x inside the box (only bounded runs, float64, have one)."""
    cdef double stpmax = STPMAX
    if floating is double:
        if n >= NOGIL_MIN_SIZE:
            with nogil:
                stpmax = _max_step(n, x, d, box.lower, box.upper)
        else:
            stpmax = _max_step(n, x, d, box.lower, box.upper)
    return stpmax


def _aligned_empty(Py_ssize_t size, dtype):
    """An uninitialized 1-d array of ``size`` elements whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(size + 64 // itemsize, dtype=dtype)
    offset = (-raw.ctypes.data % 64) // itemsize
    return raw[offset:offset + size]


# ---------------------------------------------------------------------------------------------
# The workspace, the history ring, the options and the result every driver shares
# ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _history_stride(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Elements between history rows: n rounded up to whole 64-byte cache lines, so every row
    starts on a line (unaligned AVX loads that straddle lines slow the L1/L2-bound kernels of
    mid-sized problems by ~10%)."""
    cdef Py_ssize_t per_line = 64 // itemsize
    return (n + per_line - 1) // per_line * per_line


cdef struct _Ring:
    # Bookkeeping of the ring buffer of (s, y) pairs (row 2k of the history is s of slot k, row
    # 2k + 1 its y): the ``count`` pairs in use end at slot ``newest`` and go back (mod
    # ``slots``); ``updates`` pairs were stored since the history was last dropped. OWL-QN
    # keeps one slot more than it uses (``slots = m + 1``) to write a candidate pair into.
    int slots
    int m
    int newest
    int count
    Py_ssize_t updates
    double* rho      # rho_k = 1 / (s_k'y_k) per slot
    double gamma     # H0 = gamma I: s'y / y'y of the newest pair


cdef inline void _forget(_Ring* ring) noexcept nogil:
    """Drop the history; the next pair goes to slot 0."""
    ring.newest = ring.slots - 1
    ring.count = 0
    ring.updates = 0


cdef inline int _free_slot(const _Ring* ring) noexcept nogil:
    """The slot the next pair is written to: the one after the newest."""
    return ring.newest + 1 if ring.newest < ring.slots - 1 else 0


cdef inline void _commit_pair(_Ring* ring, double sy, double yy) noexcept nogil:
    """Make the pair just written to the free slot the newest, with s'y = sy and y'y = yy."""
    ring.newest = _free_slot(ring)
    ring.rho[ring.newest] = 1.0 / sy
    ring.gamma = sy / yy
    if ring.count < ring.m:
        ring.count += 1
    ring.updates += 1


@cython.auto_pickle(False)
@cython.final
cdef class _Workspace:
    """Every array an L-BFGS run works in, allocated here for all three drivers: the iterate x,
    the gradient at x and at the line search's trial (swapped on acceptance, never copied), the
    search direction, a trial point (L-BFGS-B and OWL-QN), the history ring of ``slots`` (s, y)
    pairs with its bookkeeping, and the scratch of the blocked reductions.

    x, the vectors and the history rows start on 64-byte boundaries (see ``_history_stride``)."""
    cdef Py_ssize_t n
    cdef Py_ssize_t stride
    cdef cnp.ndarray x
    cdef cnp.ndarray xt
    cdef cnp.ndarray g
    cdef cnp.ndarray gt
    cdef cnp.ndarray d
    cdef cnp.ndarray history
    cdef cnp.ndarray rho
    cdef cnp.ndarray alpha
    cdef cnp.ndarray scratch
    cdef _Ring ring

    def __init__(self, x_init, int slots, int m, bint trial_point):
        dtype = x_init.dtype
        self.n = x_init.shape[0]
        self.stride = _history_stride(self.n, dtype.itemsize)
        self.x = _aligned_empty(self.n, dtype)
        self.x[:] = x_init
        self.xt = _aligned_empty(self.n, dtype) if trial_point else None
        self.g = _aligned_empty(self.n, dtype)
        self.gt = _aligned_empty(self.n, dtype)
        self.d = _aligned_empty(self.n, dtype)
        self.history = _aligned_empty(2 * slots * self.stride, dtype)
        self.rho = np.zeros(slots)
        self.alpha = np.zeros(slots)
        self.scratch = np.zeros(2 * _num_blocks(self.n) + 1)
        self.ring.slots = slots
        self.ring.m = m
        self.ring.rho = <double*>cnp.PyArray_DATA(self.rho)
        self.ring.gamma = 1.0
        _forget(&self.ring)

    cdef object pairs(self):
        """The history as a ``(2 slots, n)`` view: row 2k is s of slot k, row 2k + 1 its y."""
        return self.history.reshape(2 * self.ring.slots, self.stride)[:, :self.n]


@cython.auto_pickle(False)
@cython.final
cdef class LbfgsOptions:
    """The settings of a compiled L-BFGS run, by name (checked by ``fastopt.minimize``).

    Parameters
    ----------
    m : int
        Correction pairs kept, ``m >= 1``.
    gtol, ftol : float
        Projected-gradient and relative-reduction tolerances.
    maxiter, maxfun : int
        The run stops once ``nit >= maxiter`` or ``nfev > maxfun`` (tested after an iteration).
    maxls : int
        Evaluations per line search, ``>= 1``.
    line_search : {"more-thuente", "armijo"}
    c1, c2 : float
        Sufficient-decrease and curvature constants.
    callback : callable, optional
        ``callback(x, f)`` after every iteration with a fresh copy of x; StopIteration stops
        the run with status 99.
    """
    cdef readonly int m
    cdef readonly double gtol
    cdef readonly double ftol
    cdef readonly Py_ssize_t maxiter
    cdef readonly Py_ssize_t maxfun
    cdef readonly int maxls
    cdef readonly bint armijo
    cdef readonly double c1
    cdef readonly double c2
    cdef readonly object callback

    def __init__(self, *, int m, double gtol, double ftol, Py_ssize_t maxiter,
                 Py_ssize_t maxfun, int maxls, str line_search, double c1, double c2,
                 callback=None):
        if m < 1 or maxls < 1:
            raise ValueError(f"m and maxls must be >= 1, got m={m}, maxls={maxls}")
        if line_search not in ("more-thuente", "armijo"):
            raise ValueError(f"line_search must be 'more-thuente' or 'armijo', got "
                             f"{line_search!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self.m = m
        self.gtol = gtol
        self.ftol = ftol
        self.maxiter = maxiter
        self.maxfun = maxfun
        self.maxls = maxls
        self.armijo = line_search == "armijo"
        self.c1 = c1
        self.c2 = c2
        self.callback = callback

    @property
    def line_search(self):
        return "armijo" if self.armijo else "more-thuente"


@cython.auto_pickle(False)
@cython.final
cdef class LbfgsResult:
    """What a compiled L-BFGS run ends with.

    Attributes
    ----------
    x, g : ndarray
        The last iterate and its gradient (OWL-QN: its pseudo-gradient).
    f : float
        f(x) (OWL-QN: with the penalty).
    nit, nfev, njev : int
        Iterations and evaluations (the iteration's own count; SciPy's finite differences
        count theirs on the counter object).
    status : int
        0 converged, 1 a limit reached, 2 abnormal, 99 the callback raised StopIteration.
    message : str
    pairs : ndarray, shape (2 slots, n)
        The history ring: row 2k is s of slot k, row 2k + 1 its y.
    newest, count, updates : int
        The ``count`` pairs the last direction came from end at slot ``newest``; ``updates``
        pairs were stored since the history was last dropped.
    """
    cdef readonly object x
    cdef readonly double f
    cdef readonly object g
    cdef readonly Py_ssize_t nit
    cdef readonly Py_ssize_t nfev
    cdef readonly Py_ssize_t njev
    cdef readonly int status
    cdef readonly str message
    cdef readonly object pairs
    cdef readonly int newest
    cdef readonly int count
    cdef readonly Py_ssize_t updates


cdef LbfgsResult _make_result(_Workspace work, object x, double f, object g, Py_ssize_t nit,
                              _Objective obj, int status, str message, int newest, int count,
                              Py_ssize_t updates):
    cdef LbfgsResult result = LbfgsResult.__new__(LbfgsResult)
    result.x = x
    result.f = f
    result.g = g
    result.nit = nit
    result.nfev = obj.nfev
    result.njev = obj.njev
    result.status = status
    result.message = message
    result.pairs = work.pairs()
    result.newest = newest
    result.count = count
    result.updates = updates
    return result


cdef bint _accept_step(floating* x, const floating* d, const floating* gt, Py_ssize_t n,
                       double stp, double gd, double gdt, double eps, double gtol,
                       double* n_above_gtol) noexcept nogil:
    """x <- x + stp d and n_above_gtol <- the number of |gt_i| > gtol; returns whether the pair
    (s, y) = (stp d, gt - g) is to be stored.

    s'y = stp (gt'd - g'd) costs no pass over memory. A pair with s'y <= eps (-g's) is skipped
    (L-BFGS-B's rule): the curvature along the step is negligible next to the slope, and the pair
    would wreck H."""
    _xpay(x, x, <floating>stp, d, n)
    n_above_gtol[0] = _count_above(gt, n, gtol)
    return stp * (gdt - gd) > eps * (-gd * stp)


cdef void _store_pair(const floating* d, const floating* g, const floating* g_old,
                      Py_ssize_t n, double stp, double gd, double gdt, floating* history,
                      Py_ssize_t stride, _Ring* ring, double* ws) noexcept nogil:
    """The pair (s, y) = (stp d, g - g_old) into the ring buffer, over the oldest pair.

    Done only once the iteration goes on, as L-BFGS-B does: a run that stops keeps the pairs its
    last direction came from (those ``hess_inv`` is built from). The slot written is the one the
    last two-loop recursion read last, so it is still in cache."""
    cdef double sy = stp * (gdt - gd), yy
    cdef floating* slot_start = history + 2 * _free_slot(ring) * stride
    yy = _new_pair_b(slot_start, slot_start + stride, <floating>stp, d, g, g_old, n, ws)
    if yy > 0.0:
        _commit_pair(ring, sy, yy)
    else:
        # y rounded to 0 although s'y > 0: the slot is garbage, so start afresh.
        _forget(ring)


cdef inline double _steepest_descent(floating* d, const floating* g, Py_ssize_t n,
                                     double* ws) noexcept nogil:
    """d <- -g; returns g'd."""
    _scaled_copy(d, <floating>-1.0, g, n)
    return _dot_b(g, d, n, ws)


cdef double _direction(floating* d, const floating* g, const floating* history,
                       const _Ring* ring, double* alpha, Py_ssize_t n, Py_ssize_t stride,
                       double* ws) noexcept nogil:
    """d <- -H g (steepest descent, d = -g, with an empty history); returns g'd."""
    if ring.count == 0:
        return _steepest_descent(d, g, n, ws)
    return _two_loop(d, g, history, ring.rho, alpha, n, stride, ring.slots, ring.newest,
                     ring.count, ring.gamma, ws)


cdef inline double _first_step(Py_ssize_t nit, double dnorm, double stpmax) noexcept nogil:
    """L-BFGS-B's initial trial step: 1 / ||d|| on the first iteration, 1 afterwards."""
    if nit == 0:
        return min(1.0 / dnorm, stpmax)
    return min(1.0, stpmax)


cdef int _after_iteration(_Objective obj, object callback, object x_out, double f,
                          double f_old, Py_ssize_t nit, Py_ssize_t maxiter, Py_ssize_t maxfun,
                          bint gradient_small, double ftol) except -2:
    """The tests after an accepted step, in SciPy's order; returns a status or STATUS_RUNNING.

    ``x_out`` is a fresh array holding the new iterate, handed to the callback."""
    if callback is not None:
        try:
            callback(x_out, f)
        except StopIteration:
            return STATUS_CALLBACK
    if nit >= maxiter or obj.evaluations() > maxfun:
        return STATUS_LIMIT
    if gradient_small:
        return STATUS_CONVERGED
    if (f_old - f) <= ftol * max(fabs(f_old), fabs(f), 1.0):
        return STATUS_CONVERGED
    return STATUS_RUNNING


cdef object _stop_message(int status, _Objective obj, Py_ssize_t nit, Py_ssize_t maxiter,
                          bint gradient_small):
    if status == STATUS_CALLBACK:
        return MSG_CALLBACK
    if status == STATUS_LIMIT:
        return MSG_MAXITER if nit >= maxiter else MSG_MAXFUN
    return MSG_PGTOL if gradient_small else MSG_FTOL


def _run(object fun, object jac, tuple args, floating[::1] x_init, LbfgsOptions options,
         object counter=None):
    """Run L-BFGS from ``x_init`` with ``options``; returns an :class:`LbfgsResult`.

    ``counter``: an object whose ``nfev`` counts the evaluations the ``maxfun`` test sees (SciPy's
    ScalarFunction), or None for the iteration's own count.
    """
    cdef Py_ssize_t n = x_init.shape[0]
    cdef int typenum = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    dtype = np.float32 if floating is float else np.float64
    cdef double eps = np.finfo(dtype).eps
    cdef _Objective obj = _Objective(fun, jac, args, typenum, n, counter)
    cdef int m = options.m, maxls = options.maxls
    cdef double gtol = options.gtol, ftol = options.ftol, c1 = options.c1, c2 = options.c2
    cdef bint armijo = options.armijo
    cdef object callback = options.callback

    # x is updated in place on acceptance; trial points go straight into the array handed to
    # the user.
    cdef _Workspace work = _Workspace(np.asarray(x_init), m, m, False)
    cdef _Ring* ring = &work.ring
    cdef Py_ssize_t stride = work.stride
    x_buf = work.x
    cdef double* ws = <double*>cnp.PyArray_DATA(work.scratch)
    cdef floating* x = <floating*>cnp.PyArray_DATA(work.x)
    cdef floating* g = <floating*>cnp.PyArray_DATA(work.g)
    cdef floating* gt = <floating*>cnp.PyArray_DATA(work.gt)
    cdef floating* d = <floating*>cnp.PyArray_DATA(work.d)
    cdef floating* history = <floating*>cnp.PyArray_DATA(work.history)
    cdef double* alpha = <double*>cnp.PyArray_DATA(work.alpha)
    cdef floating* swap
    cdef bint g_is_home = True   # whether g currently lives in work.g (else in work.gt)

    cdef double f, ft = 0.0, f_old, gd, gdt = 0.0, stp = 0.0
    cdef double n_above_gtol = 0.0   # how many |g_i| > gtol
    cdef Py_ssize_t nit = 0
    cdef int ls_status, status = STATUS_RUNNING
    cdef bint new_pair
    cdef bint release_gil = n >= NOGIL_MIN_SIZE
    message = ""

    _evaluate(obj, x, 0.0, <floating*>NULL, <_Box*>NULL, &f, g, <double*>NULL, ws)
    if not (isfinite(f) and _all_finite(g, n)):
        status, message = STATUS_ABNORMAL, MSG_NONFINITE_X0
    elif _count_above(g, n, gtol) == 0.0:
        status, message = STATUS_CONVERGED, MSG_PGTOL
    else:
        with nogil:
            gd = _steepest_descent(d, g, n, ws)
    while status == STATUS_RUNNING:
        if not (gd < 0.0):
            if ring.count > 0:
                # Round-off made the quasi-Newton direction useless: forget the history.
                _forget(ring)
                with nogil:
                    gd = _steepest_descent(d, g, n, ws)
                continue
            status = STATUS_ABNORMAL
            message = MSG_ABNORMAL
            break
        # On the first iteration d = -g, so ||d|| = sqrt(-g'd).
        ls_status = _line_search(obj, armijo, maxls, c1, c2, n, x, f, g, d, gd,
                                 _first_step(nit, sqrt(-gd), STPMAX), STPMAX, <_Box*>NULL, &ft, gt, &stp, &gdt, ws)
        if ls_status != LS_OK:
            if ring.count > 0:
                # Retry along steepest descent with an empty history before giving up.
                _forget(ring)
                with nogil:
                    gd = _steepest_descent(d, g, n, ws)
                continue
            status = STATUS_ABNORMAL
            message = MSG_NONFINITE if ls_status == LS_NONFINITE else MSG_ABNORMAL
            break

        if release_gil:
            with nogil:
                new_pair = _accept_step(x, d, gt, n, stp, gd, gdt, eps, gtol, &n_above_gtol)
        else:
            new_pair = _accept_step(x, d, gt, n, stp, gd, gdt, eps, gtol, &n_above_gtol)
        swap = g
        g = gt
        gt = swap
        g_is_home = not g_is_home
        f_old = f
        f = ft
        nit += 1

        status = _after_iteration(obj, callback, x_buf.copy() if callback is not None else None,
                                  f, f_old, nit, options.maxiter, options.maxfun,
                                  n_above_gtol == 0.0, ftol)
        if status != STATUS_RUNNING:
            message = _stop_message(status, obj, nit, options.maxiter, n_above_gtol == 0.0)
            break
        # gt holds the previous gradient now.
        if release_gil:
            with nogil:
                if new_pair:
                    _store_pair(d, g, gt, n, stp, gd, gdt, history, stride, ring, ws)
                gd = _direction(d, g, history, ring, alpha, n, stride, ws)
        else:
            if new_pair:
                _store_pair(d, g, gt, n, stp, gd, gdt, history, stride, ring, ws)
            gd = _direction(d, g, history, ring, alpha, n, stride, ws)

    return _make_result(work, x_buf, f, work.g if g_is_home else work.gt, nit, obj, status,
                        message, ring.newest, ring.count, ring.updates)


include "_lbfgsb.pxi"
include "_owlqn.pxi"
