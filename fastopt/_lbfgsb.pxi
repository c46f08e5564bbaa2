# L-BFGS-B: the bound-constrained iteration (included by _lbfgs.pyx; float64 only).
#
# Design note. The method is that of Byrd, Lu, Nocedal & Zhu (1995) with the subspace step of
# Morales & Nocedal (2011), the algorithm SciPy runs for method='L-BFGS-B'. With the m newest
# pairs as columns of S and Y, the quasi-Newton matrix has the compact form
#
#     B = theta I - W M W',   W = [Y, theta S],   M = [[-D, L'], [L, theta S'S]]^-1
#
# (D = diag(s_i'y_i), L the strictly lower part of S'Y, theta = y'y / s'y of the newest pair).
# Each iteration
#   1. finds the generalized Cauchy point: the first minimizer of the quadratic model along the
#      projected steepest-descent path x(t) = P(x - t g), a piecewise-linear path whose
#      breakpoints (where a variable hits its bound) are visited in increasing t with a heap;
#      model slope f1 and curvature f2 are updated per segment in O(m^2) (``_cauchy_point``);
#   2. minimizes the model over the variables still free at that point (the Sherman–Morrison–
#      Woodbury form of the reduced inverse, with the 2m x 2m matrix K of ``_factor_k``), then
#      projects the Newton step into the box and, if the projected step is uphill, backtracks it
#      to the box instead (Morales & Nocedal's correction, ``_subspace_step``);
#   3. searches along d = (subspace minimizer) - x with Moré–Thuente, every trial projected into
#      the box and the step bounded by the largest feasible one;
#   4. stores the pair (``_update_pair``); its inner products with the other pairs, and with
#      them S'Y, S'S and the Cholesky factor of T = theta S'S + L D^-1 L', are completed on the
#      next iteration's first pass over the history (``_finish_pair``, ``_factor_t``).
# Any factorization that fails (loss of positive definiteness in round-off) drops the history
# and restarts from steepest descent, as L-BFGS-B does.
#
# Memory traffic. At large n the 2m stored rows dominate, so an iteration streams them twice,
# as the two-loop recursion does: once with the Cauchy scan (``_cauchy_products``: p = W'd,
# the new pair's products, W'Z Z'g and the new row of K), once for the subspace step
# (``_combine_rows``). W'Z r, which SciPy takes in a third pass, is assembled from the inner
# products K is built from (``_reduced_gradient``). Taken one inner product or axpy at a time,
# as the Fortran code does, the same iteration read the rows about ten times.
#
# Layout: S and Y rows live in the same ring buffer as in the unconstrained iteration (slot k:
# s at history[2k stride], y at history[(2k+1) stride]), so every inner product over a pair is
# a contiguous, vectorized loop. The small matrices (at most 2m x 2m) are column-major: element
# (i, j) of a matrix with leading dimension ld is a[i + ld j]. Pairs are numbered
# chronologically, j = 0 the oldest, living in slot (head + j) mod m.

from libc.string cimport memmove

cdef double EPS64 = 2.220446049250313e-16   # L-BFGS-B's machine epsilon (float64)


cdef struct _Compact:
    double* history
    Py_ssize_t stride
    int m, head, col, tail, updates
    bint pending    # the newest pair's products with the others are not in sy / ss yet
    double theta
    double* sy      # m x m: (i, j) = s_i'y_j (lower triangle and diagonal are used)
    double* ss      # m x m: (i, j) = s_i's_j (upper triangle is used)
    double* wt      # m x m: upper Cholesky factor of T = theta S'S + L D^-1 L'
    double* wn      # 2m x 2m: the factors of K used by the subspace step
    double* wn1     # 2m x 2m: inner products over the free / active sets, kept between iterations


cdef inline const double* _s_of(const _Compact* c, int j) noexcept nogil:
    return c.history + 2 * ((c.head + j) % c.m) * c.stride


cdef inline const double* _y_of(const _Compact* c, int j) noexcept nogil:
    return c.history + (2 * ((c.head + j) % c.m) + 1) * c.stride


cdef inline void _reset_compact(_Compact* c) noexcept nogil:
    c.pending = False
    c.col = 0
    c.head = 0
    c.theta = 1.0
    c.updates = 0


# --- small dense linear algebra (column-major, k <= 2m) ----------------------------------------

cdef int _cholesky_upper(double* a, int lda, int k) noexcept nogil:
    """Overwrite the upper triangle of the k x k matrix a with R, a = R'R; -1 if a is not
    positive definite."""
    cdef int i, j, p
    cdef double diag, t
    for j in range(k):
        diag = a[j + lda * j]
        for p in range(j):
            diag -= a[p + lda * j] * a[p + lda * j]
        if not (diag > 0.0):
            return -1
        diag = sqrt(diag)
        a[j + lda * j] = diag
        for i in range(j + 1, k):
            t = a[j + lda * i]
            for p in range(j):
                t -= a[p + lda * j] * a[p + lda * i]
            a[j + lda * i] = t / diag
    return 0


cdef int _solve_rt(const double* r, int ldr, int k, double* b) noexcept nogil:
    """b <- R'^-1 b for upper-triangular R (forward substitution); -1 if R is singular."""
    cdef int i, p
    cdef double t
    for i in range(k):
        t = b[i]
        for p in range(i):
            t -= r[p + ldr * i] * b[p]
        if r[i + ldr * i] == 0.0:
            return -1
        b[i] = t / r[i + ldr * i]
    return 0


cdef int _solve_r(const double* r, int ldr, int k, double* b) noexcept nogil:
    """b <- R^-1 b for upper-triangular R (back substitution); -1 if R is singular."""
    cdef int i, p
    cdef double t
    for i in range(k - 1, -1, -1):
        t = b[i]
        for p in range(i + 1, k):
            t -= r[i + ldr * p] * b[p]
        if r[i + ldr * i] == 0.0:
            return -1
        b[i] = t / r[i + ldr * i]
    return 0


cdef inline double _dot_small(const double* a, const double* b, int k) noexcept nogil:
    cdef int i
    cdef double acc = 0.0
    for i in range(k):
        acc += a[i] * b[i]
    return acc


cdef inline double _dot_on(const int* index, Py_ssize_t start, Py_ssize_t stop, const double* a,
                           const double* b) noexcept nogil:
    """sum of a_k b_k over k = index[start:stop] (an ascending gather: rows stay in cache)."""
    cdef Py_ssize_t i
    cdef int k
    cdef double acc = 0.0
    for i in range(start, stop):
        k = index[i]
        acc += a[k] * b[k]
    return acc


cdef inline double _dot_masked(const double* a, const double* b, const double* mask,
                        Py_ssize_t n) noexcept nogil:
    """sum of a_i b_i mask_i (mask_i 1 or 0: an inner product over a subset of the variables),
    with LANES accumulators so it vectorizes (a gathered sum with one accumulator waits on the
    FMA latency every element)."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            acc[j] += (a[i + j] * b[i + j]) * mask[i + j]
    for i in range(n8, n):
        acc[0] += (a[i] * b[i]) * mask[i]
    return _lane_sum(acc)


# --- passes over the history ----------------------------------------------------------------------
# Every product of the compact representation with a vector touches all 2 col stored rows. At
# large n the rows come from memory, so each helper below streams them once, in blocks of
# HBLOCK elements over which the vectors they are combined with stay in L1.

cdef enum:
    HBLOCK = 1024


cdef enum:
    WIDE = 32


cdef inline double _dot_wide(const double* a, const double* b, Py_ssize_t n) noexcept nogil:
    """sum_i a_i b_i with WIDE independent accumulators. The history passes take many short
    inner products of L1-resident blocks, bound by the FMA latency: 16 lanes are two 512-bit
    chains, 32 are four (eight 256-bit ones on AVX2), twice the throughput there."""
    cdef double acc[WIDE]
    cdef Py_ssize_t i, j, n32 = n - n % WIDE
    for j in range(WIDE):
        acc[j] = 0.0
    for i in range(0, n32, 32):  # 32 == WIDE
        for j in range(WIDE):
            acc[j] += a[i + j] * b[i + j]
    for i in range(n32, n):
        acc[0] += a[i] * b[i]
    for j in range(16):
        acc[j] += acc[j + 16]
    return _lane_sum(acc)


cdef void _rows_dot(const _Compact* c, int rows, const double* v, const double* u,
                    Py_ssize_t n, double* out_v, double* out_u) noexcept nogil:
    """out_v[j] <- y_j'v, out_v[rows + j] <- s_j'v for j < rows, and the same with u into out_u
    if u is not NULL (one pass over the rows for both vectors)."""
    cdef Py_ssize_t start, length
    cdef int j
    cdef const double* yj
    cdef const double* sj
    for j in range(rows):
        out_v[j] = 0.0
        out_v[rows + j] = 0.0
        if u != NULL:
            out_u[j] = 0.0
            out_u[rows + j] = 0.0
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block
    for block in range(n_blocks):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        for j in range(rows):
            yj = _y_of(c, j) + start
            sj = _s_of(c, j) + start
            out_v[j] += _dot_wide(yj, v + start, length)
            out_v[rows + j] += _dot_wide(sj, v + start, length)
            if u != NULL:
                out_u[j] += _dot_wide(yj, u + start, length)
                out_u[rows + j] += _dot_wide(sj, u + start, length)


cdef void _new_row_products(const _Compact* c, const double* free, const double* active,
                            Py_ssize_t n, double* out) noexcept nogil:
    """For the newest pair (y_new, s_new) and every stored j, in one pass over the rows:
    out[j] = y_new'Z Z'y_j, out[col + j] = s_new'A A's_j, out[2 col + j] = s_new'A A'y_j,
    out[3 col + j] = s_j'Z Z'y_new (Z: free variables, A: active ones)."""
    cdef Py_ssize_t start, length
    cdef int j, col = c.col
    cdef const double* y_new
    cdef const double* s_new
    for j in range(4 * col):
        out[j] = 0.0
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block
    for block in range(n_blocks):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        y_new = _y_of(c, col - 1) + start
        s_new = _s_of(c, col - 1) + start
        for j in range(col):
            out[j] += _dot_masked(y_new, _y_of(c, j) + start, free + start, length)
            out[col + j] += _dot_masked(s_new, _s_of(c, j) + start, active + start, length)
            out[2 * col + j] += _dot_masked(s_new, _y_of(c, j) + start, active + start, length)
            out[3 * col + j] += _dot_masked(_s_of(c, j) + start, y_new, free + start, length)


cdef void _combine_rows(const _Compact* c, const double* coef, const double* z,
                        const double* x, const double* g, const double* mask, Py_ssize_t n,
                        double* out) noexcept nogil:
    """out <- (r0 + sum_j coef[j] y_j + coef[col + j] s_j) * mask / theta with
    r0 = -theta (z - x) - g, in one pass over the rows (r0 formed per block)."""
    cdef Py_ssize_t start, length, i
    cdef int j, col = c.col
    cdef double a, b, theta = c.theta, scale = 1.0 / c.theta
    cdef const double* yj
    cdef const double* sj
    cdef double* o
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block
    for block in range(n_blocks):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        o = out + start
        for i in range(length):
            o[i] = -theta * (z[start + i] - x[start + i]) - g[start + i]
        for j in range(col):
            a = coef[j]
            b = coef[col + j]
            yj = _y_of(c, j) + start
            sj = _s_of(c, j) + start
            for i in range(length):
                o[i] = o[i] + yj[i] * a + sj[i] * b
        for i in range(length):
            o[i] = scale * o[i] * mask[start + i]


cdef void _cauchy_products(const _Compact* c, Py_ssize_t n, const double* g,
                           const int* where, bint new_row, double* p, double* pending,
                           double* wzg, double* nr) noexcept nogil:
    """The one pass over the history at the start of a bounded iteration, with Z the variables
    free after the Cauchy scan (``where <= 0``) and A the others:

    * p[j] = y_j'd, p[col + j] = s_j'd (the Cauchy path's p = W'd, before theta): the scan's
      d is -g on the variables it leaves free and 0 on the others, so p = -W'Z Z'g exactly;
    * with a pending newest pair: pending[j] = y_j's_new, pending[col + j] = s_j's_new;
    * wzg[j] = y_j'Z Z'g, wzg[col + j] = s_j'Z Z'g (for W'Z r);
    * with ``new_row``: nr as ``_new_row_products`` gives it (the new row of K).

    The masked vectors (Z'g, Z'y_new, A's_new) are formed per block, in L1, so every product is
    a plain inner product of a row with an L1-resident block. Variables the Cauchy path then
    fixes at a bound are moved from Z to A afterwards (``_unfree_products``)."""
    cdef Py_ssize_t start, length, i
    cdef Py_ssize_t n_blocks = (n + HBLOCK - 1) // HBLOCK, block
    cdef int j, col = c.col
    cdef bint has_pending = c.pending
    cdef double zmask
    cdef double gz[HBLOCK]
    cdef double yz[HBLOCK]
    cdef double sa[HBLOCK]
    cdef const double* yj
    cdef const double* sj
    cdef const double* y_new = NULL
    cdef const double* s_new = NULL
    for j in range(2 * col):
        p[j] = 0.0
        pending[j] = 0.0
        wzg[j] = 0.0
    for j in range(4 * col):
        nr[j] = 0.0
    for block in range(n_blocks):
        start = block * HBLOCK
        length = min(<Py_ssize_t>HBLOCK, n - start)
        if new_row or has_pending:
            y_new = _y_of(c, col - 1) + start
            s_new = _s_of(c, col - 1) + start
        for i in range(length):
            zmask = 1.0 if where[start + i] <= 0 else 0.0
            gz[i] = g[start + i] * zmask
        if new_row:
            for i in range(length):
                zmask = 1.0 if where[start + i] <= 0 else 0.0
                yz[i] = y_new[i] * zmask
                sa[i] = s_new[i] - s_new[i] * zmask
        for j in range(col):
            yj = _y_of(c, j) + start
            sj = _s_of(c, j) + start
            wzg[j] += _dot_wide(yj, gz, length)
            wzg[col + j] += _dot_wide(sj, gz, length)
            if has_pending:
                pending[j] += _dot_wide(yj, s_new, length)
                pending[col + j] += _dot_wide(sj, s_new, length)
            if new_row:
                nr[j] += _dot_wide(yz, yj, length)
                nr[col + j] += _dot_wide(sa, sj, length)
                nr[2 * col + j] += _dot_wide(sa, yj, length)
                nr[3 * col + j] += _dot_wide(sj, yz, length)
    for j in range(2 * col):
        p[j] = -wzg[j]


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


# --- the compact representation -----------------------------------------------------------------

cdef int _middle_product(const _Compact* c, const double* v, double* p) noexcept nogil:
    """p <- M v for the 2 col middle matrix M (as two triangular solves with the factors of
    [[D^1/2, 0], [-L D^-1/2, J]] [[-D^1/2, D^-1/2 L'], [0, J']], J J' = T)."""
    cdef int col = c.col, m = c.m, i, k
    cdef double acc
    if col == 0:
        return 0
    # [D^1/2, 0; -L D^-1/2, J] [p1; p2] = [v1; v2]
    p[col] = v[col]
    for i in range(1, col):
        acc = 0.0
        for k in range(i):
            acc += c.sy[i + m * k] * v[k] / c.sy[k + m * k]
        p[col + i] = v[col + i] + acc
    if _solve_rt(c.wt, m, col, p + col):
        return -1
    for i in range(col):
        p[i] = v[i] / sqrt(c.sy[i + m * i])
    # [-D^1/2, D^-1/2 L'; 0, J'] [p1; p2] = [p1; p2]
    if _solve_r(c.wt, m, col, p + col):
        return -1
    for i in range(col):
        p[i] = -p[i] / sqrt(c.sy[i + m * i])
    for i in range(col):
        acc = 0.0
        for k in range(i + 1, col):
            acc += c.sy[k + m * i] * p[col + k] / c.sy[i + m * i]
        p[i] += acc
    return 0


cdef int _factor_t(_Compact* c) noexcept nogil:
    """wt <- upper Cholesky factor of T = theta S'S + L D^-1 L'; -1 if T is not positive
    definite."""
    cdef int m = c.m, col = c.col, i, j, k
    cdef double acc
    for j in range(col):
        c.wt[m * j] = c.theta * c.ss[m * j]
    for i in range(1, col):
        for j in range(i, col):
            acc = 0.0
            for k in range(i):
                acc += c.sy[i + m * k] * c.sy[j + m * k] / c.sy[k + m * k]
            c.wt[i + m * j] = acc + c.theta * c.ss[i + m * j]
    return _cholesky_upper(c.wt, m, col)


cdef double* _next_slot(_Compact* c) noexcept nogil:
    """Make room for a new pair (dropping the oldest when m are stored, and shifting the
    triangles of S'S and S'Y up-left with it); returns where its s goes (y follows at +stride)."""
    cdef int m = c.m, j, col
    c.updates += 1
    if c.updates <= m:
        c.col = c.updates
        c.tail = (c.head + c.updates - 1) % m
    else:
        c.tail = (c.tail + 1) % m
        c.head = (c.head + 1) % m
        col = c.col
        for j in range(1, col):
            memmove(c.ss + m * (j - 1), c.ss + 1 + m * j, j * sizeof(double))
            memmove(c.sy + (j - 1) + m * (j - 1), c.sy + j + m * j, (col - j) * sizeof(double))
    return c.history + 2 * c.tail * c.stride


cdef int _finish_pair(_Compact* c, const double* products) noexcept nogil:
    """Complete the newest pair's row of S'Y and column of S'S from ``products`` (y_j's_new at
    [j], s_j's_new at [col + j], as ``_rows_dot`` gives them) and refactor T; -1 if T is not
    positive definite."""
    cdef int m = c.m, col = c.col, j
    for j in range(col - 1):
        c.sy[col - 1 + m * j] = products[j]
        c.ss[j + m * (col - 1)] = products[col + j]
    c.pending = False
    return _factor_t(c)


# --- generalized Cauchy point -------------------------------------------------------------------

cdef void _sift_down(double* key, int* item, int size, int i) noexcept nogil:
    """Restore the min-heap property of key[0:size] below position i."""
    cdef int child
    cdef double k = key[i]
    cdef int it = item[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and key[child + 1] < key[child]:
            child += 1
        if not (key[child] < k):
            break
        key[i] = key[child]
        item[i] = item[child]
        i = child
    key[i] = k
    item[i] = it


cdef int _cauchy_point(Py_ssize_t n, const double* x, const double* g, const _Box* box,
                       int* where, _Compact* c, double* d, double* xcp, double* brk_t,
                       int* brk_i, double* p, double* cw, double* wbp, double* v,
                       double* scratch, bint new_row, int* passed,
                       double* t_sum_out) noexcept nogil:
    """xcp <- the generalized Cauchy point from x; cw <- W'(xcp - x). Returns 0, -1 if the
    middle matrix is singular, or -2 if T lost positive definiteness when the newest pair was
    completed (``_finish_pair``). The pass over the history that gives p = W'd also takes the
    newest pair's products, W'Z Z'g and (with ``new_row``) the new row of K, in ``scratch``
    ([0, 2m): pending products, [2m, 4m): W'Z Z'g, [4m, 8m): new row), with Z the variables free
    at the Cauchy point. ``passed`` gets the variables the path fixed, t_sum_out the path
    length t of xcp = P(x - t g) on the variables it did not fix.

    ``where`` classifies the variables on entry (-1 never bounded, 3 fixed by l = u) and on exit
    (0 moving along the path or free, 1 / 2 stopped at the lower / upper bound, -3 bounded with
    zero gradient). Along d = -g (zeroed where a variable cannot move) the model is
    q(t) = f1 t + f2 t^2 / 2 on each segment; the minimizer -f1 / f2 is taken if it lies before
    the next breakpoint, else the variable of that breakpoint is fixed and f1, f2 updated.
    """
    cdef Py_ssize_t i
    cdef int col = c.col, col2 = 2 * c.col, m = c.m, j, kind, ibp, n_brk = 0, n_left, first
    cdef int seg
    cdef double theta = c.theta, neg, tl = 0.0, tu = 0.0, f1 = 0.0, f2, f2_start, dtm, dt
    cdef double t_prev, t_now, t_sum, d_bp, z_bp, d_bp2, wmc, wmp, wmw, t_min = 0.0, t_brk
    cdef int w
    cdef bint stops_all = True   # every moving variable reaches a bound
    cdef int n_passed = 0
    cdef Py_ssize_t n_unbounded_moves = 0   # moving variables without a breakpoint
    cdef const double* lower = box.lower
    cdef const double* upper = box.upper
    first = -1
    for i in range(n):
        neg = -g[i]
        w = where[i]
        if w != 3 and w != -1:
            # Distances to the bounds; an open side is infinitely far (lower / upper are -inf /
            # +inf there), so no test of the kind of bound is needed.
            tl = x[i] - lower[i]
            tu = upper[i] - x[i]
            if tl <= 0.0:
                w = 1 if neg <= 0.0 else 0
            elif tu <= 0.0:
                w = 2 if neg >= 0.0 else 0
            else:
                w = -3 if neg == 0.0 else 0
            where[i] = w
        else:
            tl = INFINITY
            tu = INFINITY
        if w != 0 and w != -1:
            d[i] = 0.0
            continue
        d[i] = neg
        f1 -= neg * neg
        t_brk = (tl if neg < 0.0 else tu) / fabs(neg)
        if not (t_brk < INFINITY):
            # No bound in the way (or no move at all).
            n_unbounded_moves += 1
            if neg != 0.0:
                stops_all = False
            continue
        brk_t[n_brk] = t_brk
        brk_i[n_brk] = <int>i
        if first < 0 or t_brk < t_min:
            t_min = t_brk
            first = n_brk
        n_brk += 1
    # p = W'd = [Y'd; theta S'd], and the other products of this pass over the history.
    t_sum_out[0] = 0.0
    if col > 0:
        _cauchy_products(c, n, g, where, new_row, p, scratch, scratch + 2 * m,
                         scratch + 4 * m)
        if c.pending and _finish_pair(c, scratch):
            return -2
        for j in range(col):
            p[col + j] = theta * p[col + j]
    for j in range(col2):
        cw[j] = 0.0
    if n_unbounded_moves == 0 and n_brk == 0:
        memcpy(xcp, x, n * sizeof(double))
        return 0   # d = 0: the Cauchy point is x
    f2 = -theta * f1
    f2_start = f2
    if col > 0:
        if _middle_product(c, p, v):
            return -1
        f2 -= _dot_small(v, p, col2)
    dtm = -f1 / f2
    t_sum = 0.0
    seg = 1
    n_left = n_brk
    t_now = 0.0
    while n_left > 0:
        t_prev = t_now
        if n_left == n_brk:
            # The smallest breakpoint is known from the scan; often it is the only one used, so
            # the heap is built only when a second one is needed.
            t_now = brk_t[first]
            ibp = brk_i[first]
        else:
            if n_left == n_brk - 1:
                brk_t[first] = brk_t[n_brk - 1]
                brk_i[first] = brk_i[n_brk - 1]
                for j in range(n_left // 2 - 1, -1, -1):
                    _sift_down(brk_t, brk_i, n_left, j)
            t_now = brk_t[0]
            ibp = brk_i[0]
            brk_t[0] = brk_t[n_left - 1]
            brk_i[0] = brk_i[n_left - 1]
            _sift_down(brk_t, brk_i, n_left - 1, 0)
        dt = t_now - t_prev
        if dtm < dt:
            break
        # The model's minimizer lies past this breakpoint: fix its variable at the bound.
        t_sum += dt
        n_left -= 1
        passed[n_passed] = ibp
        n_passed += 1
        d_bp = d[ibp]
        d[ibp] = 0.0
        if d_bp > 0.0:
            z_bp = upper[ibp] - x[ibp]
            where[ibp] = 2
        else:
            z_bp = lower[ibp] - x[ibp]
            where[ibp] = 1
        seg += 1
        d_bp2 = d_bp * d_bp
        f1 = f1 + dt * f2 + d_bp2 - theta * d_bp * z_bp
        f2 = f2 - theta * d_bp2
        if col > 0:
            for j in range(col2):
                cw[j] += dt * p[j]
            for j in range(col):
                wbp[j] = _y_of(c, j)[ibp]
                wbp[col + j] = theta * _s_of(c, j)[ibp]
            if _middle_product(c, wbp, v):
                return -1
            wmc = _dot_small(cw, v, col2)
            wmp = _dot_small(p, v, col2)
            wmw = _dot_small(wbp, v, col2)
            for j in range(col2):
                p[j] -= d_bp * wbp[j]
            f1 += d_bp * wmc
            f2 += 2.0 * d_bp * wmp - d_bp2 * wmw
        f2 = max(EPS64 * f2_start, f2)
        if n_left > 0:
            dtm = -f1 / f2
        elif stops_all:
            dtm = 0.0
        else:
            dtm = -f1 / f2
    if dtm <= 0.0:
        dtm = 0.0
    t_sum += dtm
    _xpay(xcp, x, t_sum, d, n)
    for j in range(n_passed):
        ibp = passed[j]
        xcp[ibp] = upper[ibp] if where[ibp] == 2 else lower[ibp]
    t_sum_out[0] = t_sum
    if col > 0:
        for j in range(col2):
            cw[j] += dtm * p[j]
        _unfree_products(c, passed, n_passed, g, new_row, scratch + 2 * m, scratch + 4 * m)
    return 0


cdef bint _free_variables(Py_ssize_t n, int* n_free, double* free, int* n_enter,
                          int* first_leave, int* changed, const int* where, bint updated,
                          Py_ssize_t nit) noexcept nogil:
    """free[i] <- 1.0 for a variable free at the Cauchy point, 0.0 for an active one (free[n + i]
    the opposite), n_free <- their number; with nit > 0, changed[0:n_enter] <- the variables
    that became free since the last call and changed[first_leave:n] those that became active.
    Returns whether the matrix K must be refactored."""
    cdef Py_ssize_t i
    cdef double now
    cdef int count = 0
    n_enter[0] = 0
    first_leave[0] = <int>n
    for i in range(n):
        now = 1.0 if where[i] <= 0 else 0.0
        if nit > 0 and now != free[i]:
            if now == 1.0:
                changed[n_enter[0]] = <int>i
                n_enter[0] += 1
            else:
                first_leave[0] -= 1
                changed[first_leave[0]] = <int>i
        free[i] = now
        free[n + i] = 1.0 - now
        count += <int>now
    n_free[0] = count
    return first_leave[0] < n or n_enter[0] > 0 or updated


cdef int _factor_k(_Compact* c, Py_ssize_t n, const double* free, const double* active,
                   int n_enter, int first_leave, const int* changed, bint updated,
                   const double* new_row) noexcept nogil:
    """Factor K = [[-D - Y'ZZ'Y / theta, L_a' - R_z'], [L_a - R_z, theta S'AA'S]] for the
    subspace step (Z selects the free variables, A the active ones; L_a is the strictly lower
    part of S'AA'Y, R_z the upper triangle of S'ZZ'Y). wn1 keeps the inner products
    [[Y'ZZ'Y, .], [L_a + R_z, S'AA'S]] and is updated for the pair added and the variables that
    changed sets; wn gets the factors. Returns 0, or -1 / -2 if a Cholesky factorization fails."""
    cdef int m = c.m, m2 = 2 * c.m, col = c.col, iy, jy, i, k, upcl
    cdef double theta = c.theta, e1, e2, l1, l2
    cdef double* w1 = c.wn1
    cdef double* wn = c.wn
    if updated:
        if c.updates > m:
            # The oldest pair left: shift each block of wn1 up-left by one.
            for jy in range(m - 1):
                for k in range(m - jy - 1):
                    w1[jy + k + m2 * jy] = w1[jy + 1 + k + m2 * (jy + 1)]
                    w1[m + jy + k + m2 * (m + jy)] = w1[m + jy + 1 + k + m2 * (m + jy + 1)]
                for k in range(m - 1):
                    w1[m + k + m2 * jy] = w1[m + 1 + k + m2 * (jy + 1)]
        # The row of the new pair in blocks (1,1), (2,1), (2,2), and its column of R_z
        # (``_new_row_products``).
        for jy in range(col):
            w1[col - 1 + m2 * jy] = new_row[jy]
            w1[m + col - 1 + m2 * (m + jy)] = new_row[col + jy]
            w1[m + col - 1 + m2 * jy] = new_row[2 * col + jy]
            w1[m + jy + m2 * (col - 1)] = new_row[3 * col + jy]
        upcl = col - 1
    else:
        upcl = col
    # The older entries change only by the variables that entered or left the free set.
    for iy in range(upcl):
        for jy in range(iy + 1):
            e1 = _dot_on(changed, 0, n_enter, _y_of(c, iy), _y_of(c, jy))
            e2 = _dot_on(changed, 0, n_enter, _s_of(c, iy), _s_of(c, jy))
            l1 = _dot_on(changed, first_leave, n, _y_of(c, iy), _y_of(c, jy))
            l2 = _dot_on(changed, first_leave, n, _s_of(c, iy), _s_of(c, jy))
            w1[iy + m2 * jy] += e1 - l1
            w1[m + iy + m2 * (m + jy)] += l2 - e2
    for i in range(upcl):
        for jy in range(upcl):
            e1 = _dot_on(changed, 0, n_enter, _s_of(c, i), _y_of(c, jy))
            l1 = _dot_on(changed, first_leave, n, _s_of(c, i), _y_of(c, jy))
            if i <= jy:
                w1[m + i + m2 * jy] += e1 - l1
            else:
                w1[m + i + m2 * jy] += l1 - e1
    # Upper triangle of [[D + Y'ZZ'Y / theta, -L_a' + R_z'], [., theta S'AA'S]].
    for iy in range(col):
        for jy in range(iy + 1):
            wn[jy + m2 * iy] = w1[iy + m2 * jy] / theta
            wn[col + jy + m2 * (col + iy)] = w1[m + iy + m2 * (m + jy)] * theta
        for jy in range(iy):
            wn[jy + m2 * (col + iy)] = -w1[m + iy + m2 * jy]
        for jy in range(iy, col):
            wn[jy + m2 * (col + iy)] = w1[m + iy + m2 * jy]
        wn[iy + m2 * iy] += c.sy[iy + m * iy]
    # [[R1, R1'^-1 (.)], [., theta S'AA'S + (.)'(.)]] then factor the (2,2) block.
    if _cholesky_upper(wn, m2, col):
        return -1
    for i in range(col, 2 * col):
        _solve_rt(wn, m2, col, wn + m2 * i)
    for i in range(col, 2 * col):
        for k in range(i, 2 * col):
            wn[i + m2 * k] += _dot_small(wn + m2 * i, wn + m2 * k, col)
    if _cholesky_upper(wn + col + m2 * col, m2, col):
        return -2
    return 0


cdef int _reduced_gradient(const _Compact* c, const double* p, const double* cw,
                           const double* wzg, double t_sum, double* coef,
                           double* wv) noexcept nogil:
    """The reduced gradient r = -Z'(g + B (xcp - x)) of the subspace problem, kept implicit:

        r = Z'(r0 + W coef),   r0 = -theta (xcp - x) - g,   coef = [v1; theta v2],  v = M W'(xcp - x),

    and wv <- [Y'Z r; theta S'Z r] without a pass over the n-vectors: Z'(xcp - x) = t Z'd so
    W'Z Z'(xcp - x) = t [Y'd; S'd] (p), W'Z Z'g comes from the Cauchy pass, and W'Z Z'W is
    assembled from the inner products K is built from (wn1), S'S and S'Y. -1 if the middle
    matrix is singular."""
    cdef int i, j, col = c.col, m = c.m, m2 = 2 * c.m, lo, hi
    cdef double theta = c.theta, acc_y, acc_s, yy_z, ss_z, sy_ij, sy_ji
    cdef const double* w1 = c.wn1
    if _middle_product(c, cw, coef):
        return -1
    for j in range(col):
        coef[col + j] = theta * coef[col + j]
    for i in range(col):
        acc_y = -theta * t_sum * p[i] - wzg[i]
        acc_s = -t_sum * p[col + i] - wzg[col + i]
        for j in range(col):
            lo, hi = (i, j) if i <= j else (j, i)
            yy_z = w1[hi + m2 * lo]
            ss_z = c.ss[lo + m * hi] - w1[m + hi + m2 * (m + lo)]
            # s_i'Z Z'y_j: R_z above the diagonal, S'Y - L_a below it.
            sy_ij = w1[m + i + m2 * j] if i <= j else c.sy[i + m * j] - w1[m + i + m2 * j]
            sy_ji = w1[m + j + m2 * i] if j <= i else c.sy[j + m * i] - w1[m + j + m2 * i]
            acc_y += yy_z * coef[j] + sy_ji * coef[col + j]
            acc_s += sy_ij * coef[j] + ss_z * coef[col + j]
        wv[i] = acc_y
        wv[col + i] = theta * acc_s
    return 0


cdef void _add_clipped(double* zn, const double* z, const double* du, const double* lower,
                       const double* upper, const double* x, double* d,
                       Py_ssize_t n) noexcept nogil:
    """zn <- min(max(z + du, lower), upper) and d <- zn - x."""
    cdef Py_ssize_t i
    cdef double t
    for i in range(n):
        t = min(max(z[i] + du[i], lower[i]), upper[i])
        zn[i] = t
        d[i] = t - x[i]


cdef double _count_on_bounds(const double* z, const double* lower, const double* upper,
                             const double* free, Py_ssize_t n) noexcept nogil:
    """How many free variables (free_i = 1) are at a bound."""
    cdef double acc[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            acc[j] += free[i + j] * <double>((z[i + j] == lower[i + j])
                                             | (z[i + j] == upper[i + j]))
    for i in range(n8, n):
        acc[0] += free[i] * <double>((z[i] == lower[i]) | (z[i] == upper[i]))
    return _lane_sum(acc)


cdef int _subspace_step(const _Compact* c, Py_ssize_t n, const double* free, const _Box* box,
                        const double* z, const double* x, const double* g, double* wv,
                        const double* coef, double* du, double* zn, double* d,
                        double* ws) noexcept nogil:
    """zn <- the subspace minimizer from the Cauchy point z, d <- zn - x; du <- the Newton step
    on the free variables:

        du = (1 / theta) r + (1 / theta^2) Z'W K^-1 W'Z r,   r = Z'(r0 + W coef),

    r0 = -theta (z - x) - g (coef NULL: none), ``wv`` = W'Z r on entry. z + du is projected into
    the box; if that projected point is uphill from x (g'(zn - x) > 0), the step from the
    Cauchy point is instead cut back to the box (Morales & Nocedal 2011). Returns 0, or -1 if K
    is singular."""
    cdef Py_ssize_t i, i_hit = 0
    cdef int j, col = c.col, m2 = 2 * c.m, kind
    cdef double theta = c.theta, dk, alpha, step, room
    if _solve_rt(c.wn, m2, 2 * col, wv):
        return -1
    for j in range(col):
        wv[j] = -wv[j]
    if _solve_r(c.wn, m2, 2 * col, wv):
        return -1
    for j in range(col):
        wv[j] = wv[j] / theta
    if coef != NULL:
        for j in range(2 * col):
            wv[j] = wv[j] + coef[j]
    _combine_rows(c, wv, z, x, g, free, n, du)
    # Project the Newton point into the box (du is 0 off the free set, where z already lies in
    # the box); count the free variables that land on a bound.
    _add_clipped(zn, z, du, box.lower, box.upper, x, d, n)
    if _count_on_bounds(zn, box.lower, box.upper, free, n) == 0.0:
        return 0
    if not (_dot_b(d, g, n, ws) > 0.0):
        return 0
    # Uphill: go back to the Cauchy point and take the longest feasible part of the step.
    alpha = 1.0
    step = 1.0
    for i in range(n):
        kind = box.kind[i]
        if free[i] == 0.0 or kind == 0:
            continue
        dk = du[i]
        if dk < 0.0 and kind <= 2:
            room = box.lower[i] - z[i]
            if room >= 0.0:
                step = 0.0
            elif dk * alpha < room:
                step = room / dk
        elif dk > 0.0 and kind >= 2:
            room = box.upper[i] - z[i]
            if room <= 0.0:
                step = 0.0
            elif dk * alpha > room:
                step = room / dk
        if step < alpha:
            alpha = step
            i_hit = i
    for i in range(n):
        zn[i] = z[i]
    if alpha < 1.0:
        dk = du[i_hit]
        if dk > 0.0:
            zn[i_hit] = box.upper[i_hit]
            du[i_hit] = 0.0
        elif dk < 0.0:
            zn[i_hit] = box.lower[i_hit]
            du[i_hit] = 0.0
    for i in range(n):
        zn[i] = zn[i] + alpha * du[i] * free[i]
        d[i] = zn[i] - x[i]
    return 0


cdef bint _projected_gradient_small(Py_ssize_t n, const double* x, const double* g,
                                    const _Box* box, double gtol) noexcept nogil:
    """Whether max_i |P(x - g)_i - x_i| <= gtol (False if g has a NaN).

    The projected component is max(x - u, g) for g < 0 and min(x - l, g) otherwise, which with
    infinite bounds for open sides needs no branch on the kind of bound; like the unconstrained
    gradient test it counts components above gtol (a count vectorizes, a running maximum does
    not), and a NaN anywhere makes g * 0 non-zero."""
    cdef double above[LANES]
    cdef double nan_check[LANES]
    cdef Py_ssize_t i, j, n8 = n - n % LANES
    cdef double gi, pi
    cdef const double* lower = box.lower
    cdef const double* upper = box.upper
    for j in range(LANES):
        above[j] = 0.0
        nan_check[j] = 0.0
    for i in range(0, n8, 16):  # 16 == LANES
        for j in range(LANES):
            gi = g[i + j]
            pi = max(x[i + j] - upper[i + j], gi) if gi < 0.0 else min(x[i + j] - lower[i + j], gi)
            above[j] += <double>(fabs(pi) > gtol)
            nan_check[j] += gi * 0.0
    for i in range(n8, n):
        gi = g[i]
        pi = max(x[i] - upper[i], gi) if gi < 0.0 else min(x[i] - lower[i], gi)
        above[0] += <double>(fabs(pi) > gtol)
        nan_check[0] += gi * 0.0
    return _lane_sum(above) == 0.0 and _lane_sum(nan_check) == 0.0


cdef double _max_feasible_step(Py_ssize_t n, const double* x, const double* d,
                               const _Box* box) noexcept nogil:
    """The largest stp <= 1e10 with x + stp d inside the box."""
    cdef Py_ssize_t i
    cdef double stpmax = STPMAX, room
    cdef int kind
    for i in range(n):
        kind = box.kind[i]
        if d[i] < 0.0 and (kind == 1 or kind == 2):
            room = box.lower[i] - x[i]
            if room >= 0.0:
                stpmax = 0.0
            elif d[i] * stpmax < room:
                stpmax = room / d[i]
        elif d[i] > 0.0 and kind >= 2:
            room = box.upper[i] - x[i]
            if room <= 0.0:
                stpmax = 0.0
            elif d[i] * stpmax > room:
                stpmax = room / d[i]
    return stpmax


cdef const double* _bounded_direction(Py_ssize_t n, const double* x, const double* g,
                                      const _Box* box, bint constrained, int* where,
                                      _Compact* c, int* n_free, double* free, int* changed,
                                      bint* updated, Py_ssize_t nit, double* z, double* d,
                                      double* du, double* zn, double* brk_t, int* brk_i,
                                      double* wa, double* scratch, double* ws) noexcept nogil:
    """d <- (Cauchy point, then subspace minimizer) - x; returns the point itself (z, the Cauchy
    point, or zn, the subspace minimizer). A failed factorization drops the history and starts
    over from the steepest-descent Cauchy point. Without any bound (``constrained`` False; used
    for finite-difference gradients, so that runs are SciPy's to the last evaluation) the Cauchy
    point is skipped once there are pairs: the subspace step from x over all variables is the
    quasi-Newton step."""
    cdef int info, n_enter = 0, first_leave = <int>n
    cdef Py_ssize_t i
    cdef bint refactor, new_row
    cdef int m = c.m
    cdef double t_sum = 0.0
    while True:
        if not constrained and c.col > 0:
            info = 0
            if c.pending:
                _rows_dot(c, c.col, _s_of(c, c.col - 1), <double*>NULL, n, scratch,
                          <double*>NULL)
                info = _finish_pair(c, scratch)
            if updated[0]:
                _new_row_products(c, free, free + n, n, scratch + 4 * m)
            memcpy(z, x, n * sizeof(double))
            refactor = updated[0]
            n_enter = 0
            first_leave = <int>n
        else:
            new_row = updated[0] and c.col > 0
            info = _cauchy_point(n, x, g, box, where, c, d, z, brk_t, brk_i, wa, wa + 2 * m,
                                 wa + 4 * m, wa + 6 * m, scratch, new_row, changed, &t_sum)
            if info == 0:
                refactor = _free_variables(n, n_free, free, &n_enter, &first_leave, changed,
                                           where, updated[0], nit)
        if info == 0 and n_free[0] > 0 and c.col > 0:
            if refactor:
                info = _factor_k(c, n, free, free + n, n_enter, first_leave, changed,
                                 updated[0], scratch + 4 * m)
            if info == 0 and constrained:
                # wa: p, then W'(xcp - x); the coefficients go to wa + 6m, W'Z r to wa + 4m.
                info = _reduced_gradient(c, wa, wa + 2 * m, scratch + 2 * m, t_sum, wa + 6 * m,
                                         wa + 4 * m)
                if info == 0:
                    info = _subspace_step(c, n, free, box, z, x, g, wa + 4 * m, wa + 6 * m, du,
                                          zn, d, ws)
            elif info == 0:
                # r = -g: W'r = -[Y'g; theta S'g].
                _rows_dot(c, c.col, g, <double*>NULL, n, wa + 4 * m, <double*>NULL)
                for i in range(c.col):
                    wa[4 * m + i] = -wa[4 * m + i]
                    wa[4 * m + c.col + i] = -c.theta * wa[4 * m + c.col + i]
                info = _subspace_step(c, n, free, box, z, x, g, wa + 4 * m, <double*>NULL, du,
                                      zn, d, ws)
            if info == 0:
                return zn
        if info == 0:
            for i in range(n):
                d[i] = z[i] - x[i]
            return z
        _reset_compact(c)
        updated[0] = False


cdef bint _update_pair(_Compact* c, Py_ssize_t n, const double* d, const double* g,
                       const double* g_old, double stp, double gd, double gdt, double dd,
                       double* ws) noexcept nogil:
    """Store s = stp d and y = g - g_old unless the curvature s'y is negligible next to the slope
    (L-BFGS-B's rule); theta <- y'y / s'y. The pair's products with the others are taken on the
    next pass over the history (``_finish_pair``). Returns whether a pair was stored."""
    cdef double sy, yy
    cdef double* slot
    cdef int m = c.m, col
    sy = (gdt - gd) if stp == 1.0 else (gdt - gd) * stp
    if sy <= EPS64 * (-gd if stp == 1.0 else -gd * stp):
        return False
    slot = _next_slot(c)
    yy = _new_pair_b(slot, slot + c.stride, stp, d, g, g_old, n, ws)
    c.theta = yy / sy
    col = c.col
    c.ss[col - 1 + m * (col - 1)] = dd if stp == 1.0 else stp * stp * dd
    c.sy[col - 1 + m * (col - 1)] = sy
    c.pending = True
    return True


def _run_bounded(object fun, object jac, tuple args, const double[::1] x_init,
                 const double[::1] lower, const double[::1] upper, const int[::1] kind, int m,
                 double gtol, double ftol, Py_ssize_t maxiter, Py_ssize_t maxfun, int maxls,
                 bint armijo, double c1, double c2, object callback, object counter=None):
    """L-BFGS-B from ``x_init`` (inside the box) with bounds ``lower`` / ``upper`` (-inf / +inf
    for open sides) and L-BFGS-B's ``kind`` (nbd) per variable (all 0: no bounds, L-BFGS-B's
    unconstrained iteration). Returns what ``_run`` does."""
    cdef Py_ssize_t n = x_init.shape[0], i
    cdef _Objective obj = _Objective(fun, jac, args, cnp.NPY_FLOAT64, n, counter)
    cdef Py_ssize_t per_line = 8
    cdef Py_ssize_t stride = (n + per_line - 1) // per_line * per_line
    x_buf = _aligned_empty(n, np.float64)
    x_buf[:] = x_init
    xt_buf = _aligned_empty(n, np.float64)
    g_buf = _aligned_empty(n, np.float64)
    gt_buf = _aligned_empty(n, np.float64)
    d_buf = _aligned_empty(n, np.float64)
    z_buf = _aligned_empty(n, np.float64)
    r_buf = np.empty(n)
    z_saved_buf = np.empty(n)
    brk_t_buf = np.empty(n)
    free_buf = np.ones(2 * n)
    int_bufs = np.empty((3, n), dtype=np.intc)
    history_buf = _aligned_empty(2 * m * stride, np.float64)
    small = np.zeros(3 * m * m + 8 * m * m + 8 * m + 8 * m)
    ws_buf = np.zeros(2 * _num_blocks(n) + 1)
    cdef double* ws = <double*>cnp.PyArray_DATA(ws_buf)
    cdef double* x = <double*>cnp.PyArray_DATA(x_buf)
    cdef double* xt = <double*>cnp.PyArray_DATA(xt_buf)
    cdef double* g = <double*>cnp.PyArray_DATA(g_buf)
    cdef double* gt = <double*>cnp.PyArray_DATA(gt_buf)
    cdef double* d = <double*>cnp.PyArray_DATA(d_buf)
    cdef double* z = <double*>cnp.PyArray_DATA(z_buf)
    cdef double* r = <double*>cnp.PyArray_DATA(r_buf)
    cdef double* z_saved = <double*>cnp.PyArray_DATA(z_saved_buf)
    cdef double* brk_t = <double*>cnp.PyArray_DATA(brk_t_buf)
    cdef double* free = <double*>cnp.PyArray_DATA(free_buf)
    cdef int* where = <int*>cnp.PyArray_DATA(int_bufs)
    cdef int* changed = where + n
    cdef int* brk_i = where + 2 * n
    cdef double* sm = <double*>cnp.PyArray_DATA(small)
    cdef double* swap
    cdef _Compact c
    cdef _Box box
    c.history = <double*>cnp.PyArray_DATA(history_buf)
    c.stride = stride
    c.m = m
    c.tail = 0
    _reset_compact(&c)
    c.sy = sm
    c.ss = sm + m * m
    c.wt = sm + 2 * m * m
    c.wn = sm + 3 * m * m
    c.wn1 = sm + 7 * m * m
    cdef double* wa = sm + 11 * m * m
    cdef double* scratch = wa + 8 * m
    box.lower = &lower[0]
    box.upper = &upper[0]
    box.kind = &kind[0]
    box.full_step = z

    cdef bint constrained = False, boxed = True, updated = False, release_gil = n >= NOGIL_MIN_SIZE
    cdef bint x_is_home = True, g_is_home = True
    cdef int n_free = <int>n, status = STATUS_RUNNING, ls_status
    cdef Py_ssize_t nit = 0
    cdef double f, ft = 0.0, f_old, gd, gdt = 0.0, stp = 0.0, stpmax, dnorm, dd
    cdef bint gradient_small = False
    message = ""
    for i in range(n):
        constrained = constrained or kind[i] != 0
        boxed = boxed and kind[i] == 2
        if kind[i] == 0:
            where[i] = -1
        elif kind[i] == 2 and upper[i] - lower[i] <= 0.0:
            where[i] = 3
        else:
            where[i] = 0

    _evaluate(obj, x, 0.0, <double*>NULL, <_Box*>NULL, &f, g, <double*>NULL, ws)
    if not (isfinite(f) and _all_finite(g, n)):
        status, message = STATUS_ABNORMAL, MSG_NONFINITE_X0
    else:
        if _projected_gradient_small(n, x, g, &box, gtol):
            status, message = STATUS_CONVERGED, MSG_PGTOL
    while status == STATUS_RUNNING:
        if release_gil:
            with nogil:
                box.full_step = _bounded_direction(n, x, g, &box, constrained, where, &c,
                                                   &n_free, free, changed, &updated, nit, z, d,
                                                   r, z_saved, brk_t, brk_i, wa, scratch, ws)
        else:
            box.full_step = _bounded_direction(n, x, g, &box, constrained, where, &c, &n_free,
                                               free, changed, &updated, nit, z, d, r, z_saved,
                                               brk_t, brk_i, wa, scratch, ws)
        dd = _dot_b(d, d, n, ws)
        gd = _dot_b(g, d, n, ws)
        if not constrained:
            stpmax = STPMAX
        else:
            stpmax = 1.0 if nit == 0 else _max_feasible_step(n, x, d, &box)
        dnorm = sqrt(dd)
        ls_status = LS_FAILED
        if gd < 0.0 and stpmax > 0.0:
            ls_status = _line_search(obj, armijo, maxls, c1, c2, n, x, f, g, d, gd,
                                     _first_step(nit, dnorm, stpmax) if not boxed or nit > 0
                                     else min(1.0, stpmax), stpmax, &box, &ft, gt, &stp, &gdt,
                                     ws)
        if ls_status != LS_OK:
            if c.col > 0:
                _reset_compact(&c)
                updated = False
                continue
            status = STATUS_ABNORMAL
            message = MSG_NONFINITE if ls_status == LS_NONFINITE else MSG_ABNORMAL
            break
        _trial_point(xt, x, stp, d, n, &box)
        gradient_small = _projected_gradient_small(n, xt, gt, &box, gtol)
        swap = x
        x = xt
        xt = swap
        x_is_home = not x_is_home
        swap = g
        g = gt
        gt = swap
        g_is_home = not g_is_home
        f_old = f
        f = ft
        nit += 1
        status = _after_iteration(
            obj, callback,
            (x_buf if x_is_home else xt_buf).copy() if callback is not None else None,
            f, f_old, nit, maxiter, maxfun, gradient_small, ftol)
        if status != STATUS_RUNNING:
            message = _stop_message(status, obj, nit, maxiter, gradient_small)
            break
        # The pair: s = stp d (in d), y = g_new - g_old (in gt, the old gradient's buffer).
        if release_gil:
            with nogil:
                updated = _update_pair(&c, n, d, g, gt, stp, gd, gdt, dd, ws)
        else:
            updated = _update_pair(&c, n, d, g, gt, stp, gd, gdt, dd, ws)


    pairs = history_buf.reshape(2 * m, stride)[:, :n]
    return ((x_buf if x_is_home else xt_buf), f, (g_buf if g_is_home else gt_buf), nit,
            obj.nfev, obj.njev, status, message, pairs, (c.head + c.col - 1) % m, c.col,
            c.updates)
