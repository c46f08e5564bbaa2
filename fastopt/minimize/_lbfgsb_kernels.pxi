# Vector passes of the L-BFGS-B iteration (included by _lbfgs.pyx before _lbfgsb.pxi; float64).
#
# Design note. Per iteration the bounded method touches each n-vector in a handful of sweeps,
# and each sweep does everything that the data it streams allows:
#
#   1. ``_scan``: the variables free at x, the first breakpoint of the projected-gradient path
#      (the list, ``_list_breakpoints``, is made only if the Cauchy point lies past it, which
#      after the first iterations is rare) and the model slope; branch-free, so it vectorizes
#      (the per-variable branches of a literal transcription mispredict on every change of
#      bound type);
#   2. ``_cauchy_products``: the first pass over the history (eight inner products per stored
#      pair and element, see there), block by block from the last to the first, so that the
#      second pass, which runs forwards, starts on the blocks still in L2 (at n = 1e4 the
#      history is 1.6 MB, most of a 2 MB L2; going the same way both times, each pass evicted
#      the blocks the other needed next);
#   3. ``_subspace_pass``: the second pass over the history (the Newton step on the free
#      variables), fused with everything that follows from it per element: the Cauchy point
#      (never stored: x - t g on the free variables), the projection of the Newton point into
#      the box, d, and the line search's g'd, d'd and largest feasible step.
#
# Masks are 0.0 / 1.0 doubles, so a masked quantity is a product (exact) and the loops mix no
# integer widths.

# Accumulator width of the fused history kernels: one 512-bit register per product with
# AVX-512, so that eight products are eight independent FMA chains; two 256-bit registers with
# AVX2 (GCC spills two of the sixteen, which costs less than the scalar code it makes of four
# lanes).
cdef enum:
    HLANES = 8


cdef extern from *:
    # An output array no other pointer of the function reaches (C99 restrict): a loop that
    # stores through plain pointers into one of several arrays it reads needs run-time alias
    # checks, and with more than ten of them GCC leaves the loop scalar.
    ctypedef double* double_out "double* __restrict__"


# Blocks of the history passes: the vectors a row is combined with stay in L1 over a block
# (four 4 KB buffers in the first pass: half of a 48 KB L1 is left to the rows streaming
# through; 8 KB buffers were ~3% slower at n = 1e4, no faster elsewhere;
# AMD EPYC, 2 cores, 2026).
cdef enum:
    HBLOCK = 512


cdef struct _Scan:
    double gg           # sum of g_i^2 over the free variables (the path's slope is -gg)
    double t_min        # the first breakpoint (+inf if none)
    double n_free
    double n_changed    # variables whose free / active status differs from the mask before
    double open_moves   # free variables moving with no bound ahead (g_i != 0)
    bint gradient_small # max_i |P(x - g)_i - x_i| <= gtol (False if g has a NaN)


cdef struct _Stats:
    double gd           # g'd
    double dd           # d'd
    double stpmax       # largest step with x + stp d in the box (at most STPMAX); -1: not
                        # computed (``_max_step``, when the line search needs it)
    double clipped      # free variables the projection put on a bound


cdef inline double _hsum(const double* acc) noexcept nogil:
    """Sum of HLANES partial sums, pairwise in a fixed order."""
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


cdef inline double _breakpoint(double xi, double gi, double lo, double up) noexcept nogil:
    """Where the path x - t g reaches the bound the variable moves towards: (x - l) / g for
    g > 0, (u - x) / -g for g < 0; +inf with no bound on that side (l, u infinite) or g = 0
    (for a free variable the distance is then positive). Both distances are computed and one
    is selected: arithmetic under a branch (it may trap) is not if-converted, and a loop with a
    branch is not vectorized."""
    cdef double to_lower = xi - lo, to_upper = up - xi
    return (to_lower if gi > 0.0 else to_upper) / fabs(gi)


cdef inline double _feasible_step(double xi, double di, double lo, double up) noexcept nogil:
    """The largest stp >= 0 with l <= x + stp d <= u for this variable (L-BFGS-B's stpmax, per
    variable): 0 if x already lies on the bound ahead, +inf if that bound is open, else the
    distance to it over |d|. For d = 0 it is +inf, or NaN if x is on the upper bound, which
    the minimum over the variables (``_min_step``) ignores."""
    cdef double below = lo - xi, above = up - xi
    cdef bint blocked = ((di < 0.0) & (below >= 0.0)) | ((di > 0.0) & (above <= 0.0))
    cdef double room = below if di < 0.0 else above
    # The select before the division: selecting its result makes GCC branch (and not vectorize).
    cdef double distance = 0.0 if blocked else fabs(room)
    return distance / fabs(di)


cdef inline double _min_step(double current, double step) noexcept nogil:
    """min(current, step), ignoring a NaN step."""
    return step if step < current else current


cdef inline double _scan_one(double xi, double gi, double lo, double up, double gtol,
                             double* t_out, double* t_free, double* above) noexcept nogil:
    """For one variable of the projected-gradient path P(x - t g): returns 0.0 if it is held at
    a bound from the start -- fixed (l = u), or at a bound with -g pointing out of the box (x is
    always inside the box) -- and 1.0 if it is free; t_out <- its breakpoint, t_free <- the
    same for a free variable and +inf for a held one, above <- 1.0 if |P(x - g)_i - x_i|, the
    smaller of |g_i| and the room towards the bound -g points to (0 for a held variable), is
    above gtol, else 0.0.

    Everything is computed for every variable and then masked or compared: GCC moves
    arithmetic that only one side of a test needs into a branch (and the smaller of the two
    into a select it cannot if-convert here), and a loop with a branch is not vectorized."""
    cdef double to_lower = xi - lo, to_upper = up - xi
    cdef double room = to_lower if gi > 0.0 else to_upper
    cdef double t = room / fabs(gi)
    cdef bint held = ((lo == up) | ((to_lower <= 0.0) & (gi >= 0.0))
                      | ((to_upper <= 0.0) & (gi <= 0.0)))
    cdef double floor = INFINITY if held else 0.0
    t_out[0] = t
    t_free[0] = t if t > floor else floor
    above[0] = <double>((room > gtol) & (fabs(gi) > gtol))
    return <double>(not held)


cdef void _scan(Py_ssize_t n, const double* x, const double* g, const double* lower,
                const double* upper, double gtol, const double* free_before, double* free,
                _Scan* out) noexcept nogil:
    """free[i] <- whether variable i moves along (or is free at the start of) the path
    P(x - t g), with the sums of ``_Scan``, among them the projected-gradient test. One
    branch-free pass; a count of components above gtol vectorizes where a running maximum
    does not, and g * 0 summed is non-zero if g has a NaN."""
    cdef double gg[LANES]
    cdef double tmin[LANES]
    cdef double nfree[LANES]
    cdef double nchg[LANES]
    cdef double nopen[LANES]
    cdef double above[LANES]
    cdef double nan_check[LANES]
    cdef Py_ssize_t i, j, n16 = n - n % LANES
    cdef double fr, t, tm, gi, pg
    for j in range(LANES):
        gg[j] = 0.0
        tmin[j] = INFINITY
        nfree[j] = 0.0
        nchg[j] = 0.0
        nopen[j] = 0.0
        above[j] = 0.0
        nan_check[j] = 0.0
    for i in range(0, n16, 16):  # 16 == LANES
        for j in range(LANES):
            gi = g[i + j]
            fr = _scan_one(x[i + j], gi, lower[i + j], upper[i + j], gtol, &t, &tm, &pg)
            free[i + j] = fr
            gg[j] += fr * (gi * gi)
            tmin[j] = min(tmin[j], tm)
            nopen[j] += fr * <double>((t == INFINITY) & (gi != 0.0))
            nfree[j] += fr
            nchg[j] += <double>(fr != free_before[i + j])
            above[j] += pg
            nan_check[j] += gi * 0.0
    for i in range(n16, n):
        gi = g[i]
        fr = _scan_one(x[i], gi, lower[i], upper[i], gtol, &t, &tm, &pg)
        free[i] = fr
        gg[0] += fr * (gi * gi)
        tmin[0] = min(tmin[0], tm)
        nopen[0] += fr * <double>((t == INFINITY) & (gi != 0.0))
        nfree[0] += fr
        nchg[0] += <double>(fr != free_before[i])
        above[0] += pg
        nan_check[0] += gi * 0.0
    for j in range(1, LANES):
        tmin[0] = min(tmin[0], tmin[j])
    out.gg = _lane_sum(gg)
    out.t_min = tmin[0]
    out.n_free = _lane_sum(nfree)
    out.n_changed = _lane_sum(nchg)
    out.open_moves = _lane_sum(nopen)
    out.gradient_small = _lane_sum(above) == 0.0 and _lane_sum(nan_check) == 0.0


cdef Py_ssize_t _first_breakpoint_at(Py_ssize_t n, const double* x, const double* g,
                                     const double* lower, const double* upper,
                                     const double* free, double t) noexcept nogil:
    """The first free variable whose breakpoint is t (the minimum ``_scan`` found)."""
    cdef Py_ssize_t i
    for i in range(n):
        if free[i] != 0.0 and _breakpoint(x[i], g[i], lower[i], upper[i]) == t:
            return i
    return -1


cdef int _list_breakpoints(Py_ssize_t n, const double* x, const double* g, const double* lower,
                           const double* upper, const double* free, double* brk_t,
                           int* brk_i) noexcept nogil:
    """brk_t / brk_i <- the breakpoints of the free variables and the variables, in index
    order; returns their number."""
    cdef Py_ssize_t i
    cdef int count = 0
    cdef double t
    for i in range(n):
        if free[i] != 0.0:
            t = _breakpoint(x[i], g[i], lower[i], upper[i])
            if t < INFINITY:
                brk_t[count] = t
                brk_i[count] = <int>i
                count += 1
    return count


cdef inline double _passed_bound(Py_ssize_t i, const double* g, const double* lower,
                                 const double* upper) noexcept nogil:
    """The bound at which the path fixed variable i (it moves along -g)."""
    return upper[i] if g[i] < 0.0 else lower[i]


cdef inline double _cauchy_coordinate(double xi, double gi, double fr, double t) noexcept nogil:
    """The Cauchy point x - t g on the free variables, x on the others (without those the path
    fixed at a bound, ``_passed_bound``)."""
    return xi - t * (gi * fr)


cdef void _cauchy_vector(Py_ssize_t n, const double* x, const double* g, const double* free,
                         double t, const int* passed, int n_passed, const double* lower,
                         const double* upper, double* z) noexcept nogil:
    """z <- the generalized Cauchy point (for the iterations that step to it)."""
    cdef Py_ssize_t i
    for i in range(n):
        z[i] = _cauchy_coordinate(x[i], g[i], free[i], t)
    for i in range(n_passed):
        z[passed[i]] = _passed_bound(passed[i], g, lower, upper)


cdef double _max_step(Py_ssize_t n, const double* x, const double* d, const double* lower,
                      const double* upper) noexcept nogil:
    """The largest stp <= STPMAX with x + stp d inside the box (L-BFGS-B's stpmax)."""
    cdef double smax[LANES]
    cdef double step[LANES]
    cdef Py_ssize_t i, j, n16 = n - n % LANES
    for j in range(LANES):
        smax[j] = STPMAX
    for i in range(0, n16, 16):  # 16 == LANES
        for j in range(LANES):
            step[j] = _feasible_step(x[i + j], d[i + j], lower[i + j], upper[i + j])
        # The minimum in a loop of its own: with it, GCC's partial redundancy elimination
        # turns the loop above into control flow the vectorizer gives up on.
        for j in range(LANES):
            smax[j] = _min_step(smax[j], step[j])
    for i in range(n16, n):
        smax[0] = _min_step(smax[0], _feasible_step(x[i], d[i], lower[i], upper[i]))
    for j in range(1, LANES):
        smax[0] = _min_step(smax[0], smax[j])
    return smax[0]


cdef void _direction_stats(Py_ssize_t n, const double* x, const double* d, const double* g,
                           const double* lower, const double* upper,
                           _Stats* out) noexcept nogil:
    """g'd, d'd and the largest feasible step along d (for the directions that do not come
    from ``_subspace_pass``, all rare)."""
    cdef double gd[LANES]
    cdef double dd[LANES]
    cdef Py_ssize_t i, j, n16 = n - n % LANES
    cdef double di
    for j in range(LANES):
        gd[j] = 0.0
        dd[j] = 0.0
    for i in range(0, n16, 16):  # 16 == LANES
        for j in range(LANES):
            di = d[i + j]
            gd[j] += g[i + j] * di
            dd[j] += di * di
    for i in range(n16, n):
        di = d[i]
        gd[0] += g[i] * di
        dd[0] += di * di
    out.gd = _lane_sum(gd)
    out.dd = _lane_sum(dd)
    out.stpmax = _max_step(n, x, d, lower, upper)
    out.clipped = 0.0


# --- the two passes over the history -------------------------------------------------------------

cdef inline void _dots_2x4(const double* a, const double* b, const double* v0,
                           const double* v1, const double* v2, const double* v3, Py_ssize_t n,
                           double* out) noexcept nogil:
    """out[k] += a'v_k and out[4 + k] += b'v_k (k < 4) in one sweep.

    a and b are history rows, streamed from L2 or memory, and each is loaded once for its four
    products (taken one inner product at a time, every row element was loaded four times and
    the loads, not the FMAs, bound the pass); the eight accumulators are eight independent FMA
    chains."""
    cdef double p0[HLANES]
    cdef double p1[HLANES]
    cdef double p2[HLANES]
    cdef double p3[HLANES]
    cdef double q0[HLANES]
    cdef double q1[HLANES]
    cdef double q2[HLANES]
    cdef double q3[HLANES]
    cdef Py_ssize_t i, k, nv = n - n % HLANES
    cdef int j
    cdef double ai, bi
    for j in range(HLANES):
        p0[j] = 0.0
        p1[j] = 0.0
        p2[j] = 0.0
        p3[j] = 0.0
        q0[j] = 0.0
        q1[j] = 0.0
        q2[j] = 0.0
        q3[j] = 0.0
    for i in range(0, nv, 8):  # 8 == HLANES
        for j in range(HLANES):
            ai = a[i + j]
            bi = b[i + j]
            p0[j] += ai * v0[i + j]
            p1[j] += ai * v1[i + j]
            p2[j] += ai * v2[i + j]
            p3[j] += ai * v3[i + j]
            q0[j] += bi * v0[i + j]
            q1[j] += bi * v1[i + j]
            q2[j] += bi * v2[i + j]
            q3[j] += bi * v3[i + j]
    for i in range(nv, n):
        p0[0] += a[i] * v0[i]
        p1[0] += a[i] * v1[i]
        p2[0] += a[i] * v2[i]
        p3[0] += a[i] * v3[i]
        q0[0] += b[i] * v0[i]
        q1[0] += b[i] * v1[i]
        q2[0] += b[i] * v2[i]
        q3[0] += b[i] * v3[i]
    out[0] += _hsum(p0)
    out[1] += _hsum(p1)
    out[2] += _hsum(p2)
    out[3] += _hsum(p3)
    out[4] += _hsum(q0)
    out[5] += _hsum(q1)
    out[6] += _hsum(q2)
    out[7] += _hsum(q3)


cdef extern from *:
    """
    /* Two pairs of history rows per sweep of the first history pass where there are 32 vector
       registers (AVX-512): sixteen accumulators, four rows and four vectors stay in registers. */
    #if defined(__AVX512F__)
    #define FASTOPT_DOTS_4X4 1
    #else
    #define FASTOPT_DOTS_4X4 0
    #endif
    """
    bint FASTOPT_DOTS_4X4


cdef inline void _dots_4x4(const double* a0, const double* b0, const double* a1,
                           const double* b1, const double* v0, const double* v1,
                           const double* v2, const double* v3, Py_ssize_t n, double* out0,
                           double* out1) noexcept nogil:
    """``_dots_2x4`` for two pairs of rows at once (a0, b0 into out0; a1, b1 into out1), with
    the same partial sums, so the same results.

    Each vector element is loaded once for sixteen FMAs instead of twice for eight (GCC folds
    the loads of the 2x4 sweep into its FMAs: ten 512-bit loads per eight FMAs, for two load
    ports; here eight per sixteen). Needs 32 vector registers: with AVX2's sixteen it would
    spill, so AVX2 builds keep the 2x4 sweep."""
    cdef double p0[HLANES]
    cdef double p1[HLANES]
    cdef double p2[HLANES]
    cdef double p3[HLANES]
    cdef double q0[HLANES]
    cdef double q1[HLANES]
    cdef double q2[HLANES]
    cdef double q3[HLANES]
    cdef double r0[HLANES]
    cdef double r1[HLANES]
    cdef double r2[HLANES]
    cdef double r3[HLANES]
    cdef double t0[HLANES]
    cdef double t1[HLANES]
    cdef double t2[HLANES]
    cdef double t3[HLANES]
    cdef Py_ssize_t i, nv = n - n % HLANES
    cdef int j
    cdef double ai, bi, ci, di, w0, w1, w2, w3
    for j in range(HLANES):
        p0[j] = 0.0
        p1[j] = 0.0
        p2[j] = 0.0
        p3[j] = 0.0
        q0[j] = 0.0
        q1[j] = 0.0
        q2[j] = 0.0
        q3[j] = 0.0
        r0[j] = 0.0
        r1[j] = 0.0
        r2[j] = 0.0
        r3[j] = 0.0
        t0[j] = 0.0
        t1[j] = 0.0
        t2[j] = 0.0
        t3[j] = 0.0
    for i in range(0, nv, 8):  # 8 == HLANES
        for j in range(HLANES):
            ai = a0[i + j]
            bi = b0[i + j]
            ci = a1[i + j]
            di = b1[i + j]
            w0 = v0[i + j]
            w1 = v1[i + j]
            w2 = v2[i + j]
            w3 = v3[i + j]
            p0[j] += ai * w0
            p1[j] += ai * w1
            p2[j] += ai * w2
            p3[j] += ai * w3
            q0[j] += bi * w0
            q1[j] += bi * w1
            q2[j] += bi * w2
            q3[j] += bi * w3
            r0[j] += ci * w0
            r1[j] += ci * w1
            r2[j] += ci * w2
            r3[j] += ci * w3
            t0[j] += di * w0
            t1[j] += di * w1
            t2[j] += di * w2
            t3[j] += di * w3
    for i in range(nv, n):
        p0[0] += a0[i] * v0[i]
        p1[0] += a0[i] * v1[i]
        p2[0] += a0[i] * v2[i]
        p3[0] += a0[i] * v3[i]
        q0[0] += b0[i] * v0[i]
        q1[0] += b0[i] * v1[i]
        q2[0] += b0[i] * v2[i]
        q3[0] += b0[i] * v3[i]
        r0[0] += a1[i] * v0[i]
        r1[0] += a1[i] * v1[i]
        r2[0] += a1[i] * v2[i]
        r3[0] += a1[i] * v3[i]
        t0[0] += b1[i] * v0[i]
        t1[0] += b1[i] * v1[i]
        t2[0] += b1[i] * v2[i]
        t3[0] += b1[i] * v3[i]
    out0[0] += _hsum(p0)
    out0[1] += _hsum(p1)
    out0[2] += _hsum(p2)
    out0[3] += _hsum(p3)
    out0[4] += _hsum(q0)
    out0[5] += _hsum(q1)
    out0[6] += _hsum(q2)
    out0[7] += _hsum(q3)
    out1[0] += _hsum(r0)
    out1[1] += _hsum(r1)
    out1[2] += _hsum(r2)
    out1[3] += _hsum(r3)
    out1[4] += _hsum(t0)
    out1[5] += _hsum(t1)
    out1[6] += _hsum(t2)
    out1[7] += _hsum(t3)


cdef struct _NewPair:
    # The pair (s, y) = (stp d, g - g_old) of the step just taken, written into the newest slot
    # by the history pass that then uses it (``_cauchy_products``): every element of it is
    # still in L1 there, and d, g and g_old are read once.
    const double* d
    const double* g_old
    double stp
    double yy           # y'y, on return


cdef double _pair_block(double_out s, double_out y, double stp, const double* d,
                        const double* g, const double* g_old, Py_ssize_t n) noexcept nogil:
    """s <- stp d, y <- g - g_old over a block; returns y'y."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n16 = n - n % LANES
    cdef double yi
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n16, 16):  # 16 == LANES
        for j in range(LANES):
            s[i + j] = stp * d[i + j]
            yi = g[i + j] - g_old[i + j]
            y[i + j] = yi
            acc[j] += yi * yi
    for i in range(n16, n):
        s[i] = stp * d[i]
        yi = g[i] - g_old[i]
        y[i] = yi
        acc[0] += yi * yi
    return _lane_sum(acc)


cdef inline void _take_products(const double* out, int j, int col, bint has_pending,
                                bint new_row, double* wzg, double* pending,
                                double* nr) noexcept nogil:
    """Add the eight products ``_dots_2x4`` took for pair j of a block to their sums."""
    wzg[j] += out[0]
    wzg[col + j] += out[4]
    if has_pending:
        pending[j] += out[1]
        pending[col + j] += out[5]
    if new_row:
        nr[j] += out[2]
        nr[2 * col + j] += out[3]
        nr[3 * col + j] += out[6]
        nr[col + j] += out[7]


cdef void _cauchy_products(const _Compact* c, Py_ssize_t n, const double* g, const double* free,
                           bint new_row, _NewPair* pair, double* p, double* pending,
                           double* wzg, double* nr) noexcept nogil:
    """The first pass over the history in an iteration, with Z the variables ``free`` marks
    and A the others. With ``pair`` (not NULL) it first writes the newest pair (``_NewPair``)
    into its slot, block by block. Then:

    * p[j] = y_j'd, p[col + j] = s_j'd (the Cauchy path's p = W'd, before theta): the path's
      d is -g on the free variables and 0 on the others, so p = -W'Z Z'g exactly;
    * pending[j] = y_j's_new, pending[col + j] = s_j's_new (the newest pair's products, when
      they are pending);
    * wzg[j] = y_j'Z Z'g, wzg[col + j] = s_j'Z Z'g (for W'Z r);
    * with ``new_row``, the new row of K: nr[j] = y_new'Z Z'y_j, nr[col + j] = s_new'A A's_j,
      nr[2 col + j] = s_new'A A'y_j, nr[3 col + j] = s_j'Z Z'y_new.

    The masked vectors (Z'g, Z'y_new, A's_new) are formed per block, in L1, so every product is
    a plain inner product of a row with an L1-resident block, eight per pair of rows
    (``_dots_2x4``; with AVX-512 two pairs at a time, ``_dots_4x4``). Variables the Cauchy
    path then fixes at a bound are moved from Z to A afterwards (``_unfree_products``). The
    blocks are taken in reverse order (design note)."""
    cdef Py_ssize_t start, length, i
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block
    cdef int j, col = c.col
    cdef bint has_pending = c.pending
    cdef double gz[HBLOCK]
    cdef double yz[HBLOCK]
    cdef double sa[HBLOCK]
    cdef double out[16]
    cdef double yy = 0.0
    cdef const double* s_new
    cdef const double* y_new
    cdef const double* v2
    cdef const double* v3
    for j in range(2 * col):
        p[j] = 0.0
        pending[j] = 0.0
        wzg[j] = 0.0
    for j in range(4 * col):
        nr[j] = 0.0
    for block in range(n_blocks - 1, -1, -1):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        y_new = _y_of(c, col - 1) + start
        s_new = _s_of(c, col - 1) + start
        if pair != NULL:
            yy += _pair_block(<double*>s_new, <double*>y_new, pair.stp, pair.d + start,
                              g + start, pair.g_old + start, length)
        for i in range(length):
            gz[i] = g[start + i] * free[start + i]
        if new_row:
            for i in range(length):
                yz[i] = y_new[i] * free[start + i]
                sa[i] = s_new[i] - s_new[i] * free[start + i]
        # Without a new row its products are not used: any L1-resident vector will do.
        v2 = &yz[0] if new_row else &gz[0]
        v3 = &sa[0] if new_row else &gz[0]
        j = 0
        while j < col:
            for i in range(16):
                out[i] = 0.0
            if FASTOPT_DOTS_4X4 and j + 1 < col:
                _dots_4x4(_y_of(c, j) + start, _s_of(c, j) + start, _y_of(c, j + 1) + start,
                          _s_of(c, j + 1) + start, gz, s_new, v2, v3, length, out, out + 8)
                _take_products(out, j, col, has_pending, new_row, wzg, pending, nr)
                _take_products(out + 8, j + 1, col, has_pending, new_row, wzg, pending, nr)
                j += 2
            else:
                _dots_2x4(_y_of(c, j) + start, _s_of(c, j) + start, gz, s_new, v2, v3, length,
                          out)
                _take_products(out, j, col, has_pending, new_row, wzg, pending, nr)
                j += 1
    for j in range(2 * col):
        p[j] = -wzg[j]
    if pair != NULL:
        pair.yy = yy


cdef void _unfree_products(const _Compact* c, const int* passed, int n_passed, const double* g,
                           bint new_row, double* wzg, double* nr) noexcept nogil:
    """Move the variables the Cauchy path fixed at a bound (few) from the free to the active
    side of the products ``_cauchy_products`` took."""
    cdef int i, j, k, col = c.col
    cdef const double* y_new = _y_of(c, col - 1)
    cdef const double* s_new = _s_of(c, col - 1)
    cdef const double* yj
    cdef const double* sj
    for i in range(n_passed):
        k = passed[i]
        for j in range(col):
            yj = _y_of(c, j)
            sj = _s_of(c, j)
            wzg[j] -= yj[k] * g[k]
            wzg[col + j] -= sj[k] * g[k]
            if new_row:
                nr[j] -= y_new[k] * yj[k]
                nr[col + j] += s_new[k] * sj[k]
                nr[2 * col + j] += s_new[k] * yj[k]
                nr[3 * col + j] -= sj[k] * y_new[k]


cdef inline void _add_two_pairs(double* o, const double* y1, const double* s1, double a1,
                                double b1, const double* y2, const double* s2, double a2,
                                double b2, Py_ssize_t n) noexcept nogil:
    """o <- o + a1 y1 + b1 s1 + a2 y2 + b2 s2 (o read and written once for two pairs)."""
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = (((o[i] + y1[i] * a1) + s1[i] * b1) + y2[i] * a2) + s2[i] * b2


cdef inline void _add_pair(double* o, const double* y1, const double* s1, double a1, double b1,
                           Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = (o[i] + y1[i] * a1) + s1[i] * b1


cdef void _newton_block(const _Compact* c, const double* coef, Py_ssize_t start,
                        Py_ssize_t length, const double* x, const double* g, const double* free,
                        double t, double* du) noexcept nogil:
    """du[0:length] <- elements start ... of the Newton step on the free variables,
    (r0 + sum_j coef[j] y_j + coef[col + j] s_j) * free / theta, with r0 = -theta (z - x) - g
    and z the Cauchy point (``_cauchy_coordinate``)."""
    cdef Py_ssize_t i
    cdef int j, col = c.col
    cdef double theta = c.theta, scale = 1.0 / c.theta, xi
    for i in range(length):
        xi = x[start + i]
        du[i] = -theta * (_cauchy_coordinate(xi, g[start + i], free[start + i], t) - xi) \
            - g[start + i]
    for j in range(0, col - 1, 2):
        _add_two_pairs(du, _y_of(c, j) + start, _s_of(c, j) + start, coef[j], coef[col + j],
                       _y_of(c, j + 1) + start, _s_of(c, j + 1) + start, coef[j + 1],
                       coef[col + j + 1], length)
    if col % 2 == 1:
        _add_pair(du, _y_of(c, col - 1) + start, _s_of(c, col - 1) + start, coef[col - 1],
                  coef[2 * col - 1], length)
    for i in range(length):
        du[i] = scale * du[i] * free[start + i]


cdef inline void _projected_newton(Py_ssize_t k, Py_ssize_t lane, const double* x,
                                   const double* g, const double* free, const double* lower,
                                   const double* upper, const double* du, double t,
                                   double_out zn, double_out d, double* gd, double* dd,
                                   double* clip) noexcept nogil:
    """Element k of ``_subspace_pass``: zn, d, and the lane's sums."""
    cdef double lo = lower[k], up = upper[k]
    cdef double zi = min(max(_cauchy_coordinate(x[k], g[k], free[k], t) + du[k], lo), up)
    cdef double di = zi - x[k]
    zn[k] = zi
    d[k] = di
    gd[lane] += g[k] * di
    dd[lane] += di * di
    clip[lane] += free[k] * <double>((zi == lo) | (zi == up))


cdef void _subspace_pass(const _Compact* c, const double* coef, Py_ssize_t n, const double* x,
                         const double* g, const double* free, double t, const double* lower,
                         const double* upper, double_out zn, double_out d,
                         _Stats* out) noexcept nogil:
    """The second pass over the history: zn <- P(z + du), the Newton point from the Cauchy
    point z projected into the box, d <- zn - x, and the sums of ``_Stats`` but the largest
    feasible step, which is at least 1 for d = zn - x and matters only if the line search goes
    past 1 (a variable the path fixed at a bound gets zn = x and d = 0 here; ``_fix_passed``
    corrects it)."""
    cdef double du[HBLOCK]
    cdef double gd[LANES]
    cdef double dd[LANES]
    cdef double clip[LANES]
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block, start, length, k, k16, j
    for j in range(LANES):
        gd[j] = 0.0
        dd[j] = 0.0
        clip[j] = 0.0
    for block in range(n_blocks):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        _newton_block(c, coef, start, length, x, g, free, t, du)
        k16 = length - length % LANES
        for k in range(0, k16, 16):  # 16 == LANES
            for j in range(LANES):
                _projected_newton(k + j, j, x + start, g + start, free + start, lower + start,
                                  upper + start, du, t, zn + start, d + start, gd, dd, clip)
        for k in range(k16, length):
            _projected_newton(k, 0, x + start, g + start, free + start, lower + start,
                              upper + start, du, t, zn + start, d + start, gd, dd, clip)
    out.gd = _lane_sum(gd)
    out.dd = _lane_sum(dd)
    out.stpmax = -1.0
    out.clipped = _lane_sum(clip)


cdef void _fix_passed(const int* passed, int n_passed, const double* x, const double* g,
                      const double* lower, const double* upper, double* zn, double* d,
                      _Stats* stats) noexcept nogil:
    """Put the variables the Cauchy path fixed at a bound there (zn, d and the sums)."""
    cdef int k
    cdef Py_ssize_t i
    cdef double b, di
    for k in range(n_passed):
        i = passed[k]
        b = _passed_bound(i, g, lower, upper)
        di = b - x[i]
        zn[i] = b
        d[i] = di
        stats.gd += g[i] * di
        stats.dd += di * di


cdef void _newton_step(const _Compact* c, const double* coef, Py_ssize_t n, const double* x,
                       const double* g, const double* free, double t, double* du) noexcept nogil:
    """du <- the Newton step on the free variables (``_newton_block``) as a whole vector."""
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block, start
    for block in range(n_blocks):
        start = block * HBLOCK
        _newton_block(c, coef, start, min(<Py_ssize_t>HBLOCK, n - start), x, g, free, t,
                      du + start)
