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
#      the box and the step bounded by the largest feasible one (at least 1 here, so computed
#      only when the search goes past its first trial);
#   4. stores the pair (``_update_pair``); its inner products with the other pairs, and with
#      them S'Y, S'S and the Cholesky factor of T = theta S'S + L D^-1 L', are completed on the
#      next iteration's first pass over the history (``_finish_pair``, ``_factor_t``).
# Any factorization that fails (loss of positive definiteness in round-off) drops the history
# and restarts from steepest descent, as L-BFGS-B does.
#
# Memory traffic. At large n the 2m stored rows dominate, so an iteration streams them twice,
# as the two-loop recursion does: once with the Cauchy scan (``_cauchy_products``: p = W'd,
# the new pair's products, W'Z Z'g and the new row of K), once for the subspace step
# (``_subspace_pass``). W'Z r, which SciPy takes in a third pass, is assembled from the inner
# products K is built from (``_reduced_gradient``). Taken one inner product or axpy at a time,
# as the Fortran code does, the same iteration read the rows about ten times. The passes over
# the n-vectors are few and fused (``_lbfgsb_kernels.pxi``): the scan of the path, the history
# pass of the subspace step with the projection of its result, and those of the line search.
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


include "_lbfgsb_kernels.pxi"


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


cdef void _history_products(_Compact* c, Py_ssize_t n, const double* g, const double* free,
                            bint new_row, _NewPair* pair, double* p,
                            double* scratch) noexcept nogil:
    """``_cauchy_products`` into p and scratch (pending products, W'Z Z'g, new row of K), and
    theta = y'y / s'y of the pair it wrote, if any."""
    cdef int m = c.m
    _cauchy_products(c, n, g, free, new_row, pair, p, scratch, scratch + 2 * m,
                     scratch + 4 * m)
    if pair != NULL:
        c.theta = pair.yy / c.sy[(c.col - 1) * (m + 1)]


cdef struct _Path:
    # The generalized Cauchy point xcp = P(x - t g): x - t g on the variables free there (never
    # stored as a vector, see ``_cauchy_coordinate``), the bound on the ``n_passed`` variables
    # in ``passed``, which the path fixed at a bound, and x on the others.
    double t
    int n_passed
    Py_ssize_t n_free     # variables free at xcp
    Py_ssize_t n_changed  # variables free at xcp and active before, or the other way round


cdef int _cauchy_point(Py_ssize_t n, const double* x, const double* g, const _Box* box,
                       const _Scan* scan, double* free, _Compact* c, _NewPair* pair,
                       double* brk_t, int* brk_i, double* p, double* cw, double* wbp, double* v,
                       double* scratch, bint new_row, int* passed,
                       _Path* path) noexcept nogil:
    """The generalized Cauchy point from x (``path``), given the scan of the path (``scan``,
    with ``free`` the variables it found free; those the path fixes are cleared there);
    cw <- W'(xcp - x). Returns 0, -1 if the middle matrix is singular, or -2 if T lost positive
    definiteness when the newest pair was completed (``_finish_pair``). The pass over the
    history that gives p = W'd also writes the newest pair (``pair``, if not NULL) and takes
    its products, W'Z Z'g and (with ``new_row``) the new row of K, in ``scratch`` ([0, 2m):
    pending products, [2m, 4m): W'Z Z'g, [4m, 8m): new row), with Z the variables free at the
    Cauchy point.

    Along d = -g (zeroed where a variable cannot move) the model is q(t) = f1 t + f2 t^2 / 2 on
    each segment; the minimizer -f1 / f2 is taken if it lies before the next breakpoint, else
    the variable of that breakpoint is fixed and f1, f2 updated. The breakpoints are visited in
    increasing order with a heap, built only once the first is passed.
    """
    cdef int col = c.col, col2 = 2 * c.col, m = c.m, j, n_brk, n_left, first = 0
    cdef Py_ssize_t ibp, first_ibp = -1
    cdef double theta, f1, f2, f2_start, dtm, dt, t_prev, t_now, t_sum
    cdef double d_bp, z_bp, d_bp2, wmc, wmp, wmw
    cdef const double* lower = box.lower
    cdef const double* upper = box.upper
    cdef bint stops_all = scan.open_moves == 0.0   # every moving variable reaches a bound
    path.t = 0.0
    path.n_passed = 0
    path.n_free = <Py_ssize_t>scan.n_free
    path.n_changed = <Py_ssize_t>scan.n_changed
    # p = W'd = [Y'd; theta S'd], and the other products of this pass over the history.
    if col > 0:
        _history_products(c, n, g, free, new_row, pair, p, scratch)
        if c.pending and _finish_pair(c, scratch):
            return -2
        for j in range(col):
            p[col + j] = c.theta * p[col + j]
    theta = c.theta
    for j in range(col2):
        cw[j] = 0.0
    if scan.gg == 0.0:
        return 0   # d = 0: the Cauchy point is x
    f1 = -scan.gg
    f2 = -theta * f1
    f2_start = f2
    if col > 0:
        if _middle_product(c, p, v):
            return -1
        f2 -= _dot_small(v, p, col2)
    dtm = -f1 / f2
    t_sum = 0.0
    # The number of breakpoints is counted when they are listed, once the first is passed.
    n_left = 1 if scan.t_min < INFINITY else 0
    t_now = 0.0
    while n_left > 0:
        t_prev = t_now
        if first_ibp < 0:
            # The smallest breakpoint is known from the scan; often the Cauchy point lies
            # before it, and the breakpoints are listed only when it is passed.
            t_now = scan.t_min
            ibp = -1
        else:
            t_now = brk_t[0]
            ibp = brk_i[0]
            brk_t[0] = brk_t[n_left - 1]
            brk_i[0] = brk_i[n_left - 1]
            _sift_down(brk_t, brk_i, n_left - 1, 0)
        dt = t_now - t_prev
        if dtm < dt:
            break
        if ibp < 0:
            ibp = _first_breakpoint_at(n, x, g, lower, upper, free, t_now)
            first_ibp = ibp
            # The others into a heap (the first's slot taken by the last one listed).
            n_brk = _list_breakpoints(n, x, g, lower, upper, free, brk_t, brk_i)
            for j in range(n_brk):
                if brk_i[j] == first_ibp:
                    first = j
            brk_t[first] = brk_t[n_brk - 1]
            brk_i[first] = brk_i[n_brk - 1]
            n_left = n_brk
            for j in range((n_left - 1) // 2 - 1, -1, -1):
                _sift_down(brk_t, brk_i, n_left - 1, j)
        # The model's minimizer lies past this breakpoint: fix its variable at the bound.
        t_sum += dt
        n_left -= 1
        passed[path.n_passed] = <int>ibp
        path.n_passed += 1
        free[ibp] = 0.0
        d_bp = -g[ibp]
        z_bp = _passed_bound(ibp, g, lower, upper) - x[ibp]
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
    path.t = t_sum
    path.n_free -= path.n_passed
    if col > 0:
        for j in range(col2):
            cw[j] += dtm * p[j]
        _unfree_products(c, passed, path.n_passed, g, new_row, scratch + 2 * m,
                         scratch + 4 * m)
    return 0


cdef bint _changed_variables(Py_ssize_t n, const double* free, const double* free_before,
                             const _Path* path, int* n_enter, int* first_leave, int* changed,
                             bint updated, Py_ssize_t nit) noexcept nogil:
    """With nit > 0, changed[0:n_enter] <- the variables that became free since the last
    iteration and changed[first_leave:n] those that became active (listed only if the scan
    counted any, or the path fixed some). Returns whether the matrix K must be refactored."""
    cdef Py_ssize_t i
    n_enter[0] = 0
    first_leave[0] = <int>n
    if nit > 0 and (path.n_changed > 0 or path.n_passed > 0):
        for i in range(n):
            if free[i] != free_before[i]:
                if free[i] != 0.0:
                    changed[n_enter[0]] = <int>i
                    n_enter[0] += 1
                else:
                    first_leave[0] -= 1
                    changed[first_leave[0]] = <int>i
    return first_leave[0] < n or n_enter[0] > 0 or updated


cdef int _factor_k(_Compact* c, Py_ssize_t n, int n_enter, int first_leave, const int* changed,
                   bint updated, const double* new_row) noexcept nogil:
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


cdef int _subspace_step(const _Compact* c, Py_ssize_t n, const double* free, const _Box* box,
                        const _Path* path, const int* passed, const double* x, const double* g,
                        double* wv, const double* coef, double* du, double* z, double* zn,
                        double* d, _Stats* stats) noexcept nogil:
    """zn <- the subspace minimizer from the Cauchy point (``path``), d <- zn - x, and the
    sums of ``_Stats`` for d; du and z are workspace. The Newton step on the free variables is

        du = (1 / theta) r + (1 / theta^2) Z'W K^-1 W'Z r,   r = Z'(r0 + W coef),

    r0 = -theta (xcp - x) - g (coef NULL: none), ``wv`` = W'Z r on entry. xcp + du is projected
    into the box; if that projected point is uphill from x (g'(zn - x) > 0), the step from the
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
    _subspace_pass(c, wv, n, x, g, free, path.t, box.lower, box.upper, zn, d, stats)
    _fix_passed(passed, path.n_passed, x, g, box.lower, box.upper, zn, d, stats)
    if stats.clipped == 0.0 or not (stats.gd > 0.0):
        return 0
    # Uphill: go back to the Cauchy point and take the longest feasible part of the step.
    _cauchy_vector(n, x, g, free, path.t, passed, path.n_passed, box.lower, box.upper, z)
    _newton_step(c, wv, n, x, g, free, path.t, du)
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
    _direction_stats(n, x, d, g, box.lower, box.upper, stats)
    return 0


cdef const double* _bounded_direction(Py_ssize_t n, const double* x, const double* g,
                                      const _Box* box, bint constrained, _Compact* c,
                                      const _Scan* scan, const double* free_before,
                                      double* free, _NewPair* pair, int* changed, bint updated,
                                      Py_ssize_t nit, double* z, double* d, double* du,
                                      double* zn, double* brk_t, int* brk_i, int* passed,
                                      double* wa, double* scratch,
                                      _Stats* stats) noexcept nogil:
    """d <- (Cauchy point, then subspace minimizer) - x, and ``stats`` for it; returns the point
    itself (z, the Cauchy point, or zn, the subspace minimizer). ``scan`` and ``free`` are the
    scan of the path from x (``_scan``); ``pair``, if not NULL, the pair to store first
    (registered by ``_register_pair``, written by the first history pass). A failed
    factorization drops the history and starts over from the steepest-descent Cauchy point.
    Without any bound (``constrained`` False; used for finite-difference gradients, so that
    runs are SciPy's to the last evaluation) the Cauchy point is skipped once there are pairs:
    the subspace step from x over all variables (``free`` all 1) is the quasi-Newton step."""
    cdef int info, n_enter = 0, first_leave = <int>n, k
    cdef Py_ssize_t i
    cdef bint refactor, new_row
    cdef int m = c.m
    cdef _Path path
    path.n_passed = 0
    while True:
        new_row = updated and c.col > 0
        if not constrained and c.col > 0:
            # x is the Cauchy point; the history pass gives the pending products, the new row
            # of K and W'g.
            _history_products(c, n, g, free, new_row, pair, wa, scratch)
            info = _finish_pair(c, scratch) if c.pending else 0
            path.t = 0.0
            path.n_passed = 0
            path.n_free = n
            refactor = updated
            n_enter = 0
            first_leave = <int>n
        else:
            info = _cauchy_point(n, x, g, box, scan, free, c, pair, brk_t, brk_i, wa,
                                 wa + 2 * m, wa + 4 * m, wa + 6 * m, scratch, new_row, passed,
                                 &path)
            if info == 0:
                refactor = _changed_variables(n, free, free_before, &path, &n_enter,
                                              &first_leave, changed, updated, nit)
        if info == 0 and path.n_free > 0 and c.col > 0:
            if refactor:
                info = _factor_k(c, n, n_enter, first_leave, changed, updated,
                                 scratch + 4 * m)
            if info == 0 and constrained:
                # wa: p, then W'(xcp - x); the coefficients go to wa + 6m, W'Z r to wa + 4m.
                info = _reduced_gradient(c, wa, wa + 2 * m, scratch + 2 * m, path.t,
                                         wa + 6 * m, wa + 4 * m)
                if info == 0:
                    info = _subspace_step(c, n, free, box, &path, passed, x, g, wa + 4 * m,
                                          wa + 6 * m, du, z, zn, d, stats)
            elif info == 0:
                # r = -g: W'r = -[Y'g; theta S'g] (W'g from the history pass).
                for i in range(c.col):
                    wa[4 * m + i] = -scratch[2 * m + i]
                    wa[4 * m + c.col + i] = -c.theta * scratch[2 * m + c.col + i]
                info = _subspace_step(c, n, free, box, &path, passed, x, g, wa + 4 * m,
                                      <double*>NULL, du, z, zn, d, stats)
            if info == 0:
                return zn
        if info == 0:
            _cauchy_vector(n, x, g, free, path.t, passed, path.n_passed, box.lower,
                           box.upper, z)
            for i in range(n):
                d[i] = z[i] - x[i]
            _direction_stats(n, x, d, g, box.lower, box.upper, stats)
            return z
        # Start over with an empty history: the path is taken again from the scan.
        for k in range(path.n_passed):
            free[passed[k]] = 1.0
        path.n_passed = 0
        _reset_compact(c)
        updated = False
        pair = NULL


cdef bint _register_pair(_Compact* c, double stp, double gd, double gdt, double dd,
                         _NewPair* pair) noexcept nogil:
    """Make room for the pair s = stp d, y = g_new - g_old of the step just taken, unless the
    curvature s'y is negligible next to the slope (L-BFGS-B's rule); returns whether it is to
    be stored. Its vectors, y'y (theta) and its products with the others are made by the next
    pass over the history (``_cauchy_products``, ``_finish_pair``)."""
    cdef double sy
    cdef int m = c.m, col
    sy = (gdt - gd) if stp == 1.0 else (gdt - gd) * stp
    if sy <= EPS64 * (-gd if stp == 1.0 else -gd * stp):
        return False
    _next_slot(c)
    col = c.col
    c.ss[col - 1 + m * (col - 1)] = dd if stp == 1.0 else stp * stp * dd
    c.sy[col - 1 + m * (col - 1)] = sy
    c.pending = True
    pair.stp = stp
    return True


def _run_bounded(object fun, object jac, tuple args, const double[::1] x_init,
                 const double[::1] lower, const double[::1] upper, const int[::1] kind,
                 LbfgsOptions options, object counter=None):
    """L-BFGS-B from ``x_init`` (inside the box) with bounds ``lower`` / ``upper`` (-inf / +inf
    for open sides) and L-BFGS-B's ``kind`` (nbd) per variable (all 0: no bounds, L-BFGS-B's
    unconstrained iteration). Returns what ``_run`` does.

    The history ring is the workspace's, its bookkeeping the compact form's (``_Compact``): a
    new pair enters the ring and the compact matrices in the one pass that writes it."""
    cdef Py_ssize_t n = x_init.shape[0], i
    cdef _Objective obj = _Objective(fun, jac, args, cnp.NPY_FLOAT64, n, counter)
    cdef int m = options.m, maxls = options.maxls
    cdef double gtol = options.gtol, ftol = options.ftol, c1 = options.c1, c2 = options.c2
    cdef bint armijo = options.armijo
    cdef _Workspace work = _Workspace(np.asarray(x_init), m, m, True)
    # Points: x, the next x (a trial point, or the point a full step lands on: the Cauchy point
    # z or the subspace minimizer zn, whose buffer then becomes x's), and the workspace.
    x_buf = work.x
    xt_buf = work.xt
    z_buf = _aligned_empty(n, np.float64)
    zn_buf = _aligned_empty(n, np.float64)
    g_buf = work.g
    gt_buf = work.gt
    du_buf = np.empty(n)
    brk_t_buf = np.empty(n)
    # The free / active masks of this iteration and the last (1.0 free, 0.0 active).
    free_buf = np.ones(n)
    free_before_buf = np.ones(n)
    int_bufs = np.empty((3, n), dtype=np.intc)
    small = np.zeros(3 * m * m + 8 * m * m + 8 * m + 8 * m)
    cdef double* ws = <double*>cnp.PyArray_DATA(work.scratch)
    cdef double* x = <double*>cnp.PyArray_DATA(x_buf)
    cdef double* xt = <double*>cnp.PyArray_DATA(xt_buf)
    cdef double* z = <double*>cnp.PyArray_DATA(z_buf)
    cdef double* zn = <double*>cnp.PyArray_DATA(zn_buf)
    cdef double* g = <double*>cnp.PyArray_DATA(g_buf)
    cdef double* gt = <double*>cnp.PyArray_DATA(gt_buf)
    cdef double* d = <double*>cnp.PyArray_DATA(work.d)
    cdef double* du = <double*>cnp.PyArray_DATA(du_buf)
    cdef double* brk_t = <double*>cnp.PyArray_DATA(brk_t_buf)
    cdef double* free = <double*>cnp.PyArray_DATA(free_buf)
    cdef double* free_before = <double*>cnp.PyArray_DATA(free_before_buf)
    cdef int* changed = <int*>cnp.PyArray_DATA(int_bufs)
    cdef int* brk_i = changed + n
    cdef int* passed = changed + 2 * n
    cdef double* sm = <double*>cnp.PyArray_DATA(small)
    cdef double* swap
    cdef _Compact c
    cdef _Box box
    cdef _Stats stats
    cdef _Scan scan
    cdef _NewPair pair
    c.history = <double*>cnp.PyArray_DATA(work.history)
    c.stride = work.stride
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
    cdef bint g_is_home = True, rescan = False
    cdef int status = STATUS_RUNNING, ls_status
    cdef Py_ssize_t nit = 0
    cdef double f, ft = 0.0, f_old, gd, gdt = 0.0, stp = 0.0, stpmax, dnorm, dd
    message = ""
    for i in range(n):
        constrained = constrained or kind[i] != 0
        boxed = boxed and kind[i] == 2

    _evaluate(obj, x, 0.0, <double*>NULL, <_Box*>NULL, &f, g, <double*>NULL, ws)
    if not (isfinite(f) and _all_finite(g, n)):
        status, message = STATUS_ABNORMAL, MSG_NONFINITE_X0
    else:
        _scan(n, x, g, box.lower, box.upper, gtol, free_before, free, &scan)
        if scan.gradient_small:
            status, message = STATUS_CONVERGED, MSG_PGTOL
    while status == STATUS_RUNNING:
        if release_gil:
            with nogil:
                if rescan:
                    _scan(n, x, g, box.lower, box.upper, gtol, free_before, free, &scan)
                box.full_step = _bounded_direction(n, x, g, &box, constrained, &c, &scan,
                                                   free_before, free,
                                                   &pair if updated else <_NewPair*>NULL,
                                                   changed, updated, nit, z, d, du, zn, brk_t,
                                                   brk_i, passed, wa, scratch, &stats)
        else:
            if rescan:
                _scan(n, x, g, box.lower, box.upper, gtol, free_before, free, &scan)
            box.full_step = _bounded_direction(n, x, g, &box, constrained, &c, &scan,
                                               free_before, free,
                                               &pair if updated else <_NewPair*>NULL, changed,
                                               updated, nit, z, d, du, zn, brk_t, brk_i, passed,
                                               wa, scratch, &stats)
        rescan = False
        dd = stats.dd
        gd = stats.gd
        if not constrained:
            stpmax = STPMAX
        else:
            # -1: at least 1, computed by the line search if it needs it.
            stpmax = 1.0 if nit == 0 else stats.stpmax
        dnorm = sqrt(dd)
        ls_status = LS_FAILED
        if gd < 0.0 and stpmax != 0.0:
            ls_status = _line_search(obj, armijo, maxls, c1, c2, n, x, f, g, d, gd,
                                     _first_step(nit, dnorm, stpmax if stpmax > 0.0 else 1.0)
                                     if not boxed or nit > 0 else min(1.0, stpmax), stpmax,
                                     &box, &ft, gt, &stp, &gdt, ws)
        if ls_status != LS_OK:
            if c.col > 0:
                # Retry from steepest descent: the path is scanned again (the last one fixed
                # variables in ``free``).
                _reset_compact(&c)
                updated = False
                rescan = True
                continue
            status = STATUS_ABNORMAL
            message = MSG_NONFINITE if ls_status == LS_NONFINITE else MSG_ABNORMAL
            break
        # The new x: a full step lands on the point the direction was made from, whose buffer
        # becomes x's (no copy); other steps are projected trial points.
        if stp == 1.0 and box.full_step == zn:
            x_buf, zn_buf = zn_buf, x_buf
            swap = x
            x = zn
            zn = swap
        elif stp == 1.0:
            x_buf, z_buf = z_buf, x_buf
            swap = x
            x = z
            z = swap
        else:
            _trial_point(xt, x, stp, d, n, &box)
            x_buf, xt_buf = xt_buf, x_buf
            swap = x
            x = xt
            xt = swap
        swap = g
        g = gt
        gt = swap
        g_is_home = not g_is_home
        swap = free
        free = free_before
        free_before = swap
        f_old = f
        f = ft
        nit += 1
        # The scan of the next path also answers the projected-gradient test.
        if release_gil:
            with nogil:
                _scan(n, x, g, box.lower, box.upper, gtol, free_before, free, &scan)
        else:
            _scan(n, x, g, box.lower, box.upper, gtol, free_before, free, &scan)
        status = _after_iteration(obj, options.callback,
                                  x_buf.copy() if options.callback is not None else None,
                                  f, f_old, nit, options.maxiter, options.maxfun,
                                  scan.gradient_small, ftol)
        if status != STATUS_RUNNING:
            message = _stop_message(status, obj, nit, options.maxiter, scan.gradient_small)
            break
        # The pair s = stp d, y = g_new - g_old (in gt, the old gradient's buffer), written by
        # the next direction's first history pass.
        updated = _register_pair(&c, stp, gd, gdt, dd, &pair)
        pair.d = d
        pair.g_old = gt

    return _make_result(work, x_buf, f, g_buf if g_is_home else gt_buf, nit, obj, status,
                        message, (c.head + c.col - 1) % m, c.col, c.updates)
