# cython: language_level=3
"""Cross-products of [Z X y], accumulated over row chunks (theory.md, eq. 12).

Each ``add_*`` kernel adds one chunk's contribution to one block of A in
place, so that A can be summed from any partition of the rows: chunks of an
in-memory frame, or partitions of a distributed one.  Rows arrive already
scaled by the square roots of the prior weights.  A random-effects term is
given by its level codes ``refs`` (int64, one per row) and its small per-row
matrix ``z`` (n x k, C-contiguous); Z itself is never formed.

The kernels accumulate in double-double: an accumulator is an ``m x 2``
array whose rows are unevaluated sums ``hi + lo``, every product is split
exactly into two doubles (TwoProduct, by ``fma``) and added with error-free
transformations (TwoSum).  The accumulated error of an entry is of order
``n 2^-106`` times the magnitude of its partial sums, so the sum rounded once
to double (``dd_round``) does not depend on the order in which rows, chunks
or partial sums (``dd_merge``) were added, except for an exact sum within
that distance of a rounding boundary.  Partial cross-products from pandas
chunks and from Dask partitions therefore round to the same A.

Each kernel is one template over the accumulation (``acc_mode``): an
accumulator with two columns is summed in double-double as above, one with
a single column in plain double (one multiply-add a product), for the
cross-products that are re-formed at every PIRLS iteration of a GLMM, whose
result at the mode is formed in double-double again (eq. 93).
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport fma, sqrt, copysign

from lmmfast._kernels cimport blas_int, interrupted, raise_pending, syrk_n, SIGNAL_CHECK_WORK
from lmmfast._response cimport term_response, fixed_response

cnp.import_array()


def set_response(double[::1] a, const cnp.int64_t[::1] off_zy, const cnp.int64_t[::1] q,
                 list refs, list z, const double[:, ::1] x, const double[::1] wy,
                 const double[::1] y_raw, Py_ssize_t off_xy):
    """Overwrite the y parts of A in place: Z_t^T W y (row p of block (T, t), at
    ``off_zy[t]``, p1 x q_t column-major), X^T W y and y^T W y (row p of block
    (T, T), at ``off_xy``); ``wy`` is W y, ``y_raw`` y.  One call, no
    temporaries (eq. 26; the loops are ``_response.pxd``'s)."""
    cdef Py_ssize_t n = wy.shape[0], p = x.shape[1], t
    cdef const cnp.int64_t[::1] rt
    cdef const double[:, ::1] zt
    for t in range(len(refs)):
        rt = refs[t]
        zt = z[t]
        with nogil:
            term_response(&a[off_zy[t] + p], p + 1, q[t], n, zt.shape[1], &rt[0],
                          &zt[0, 0], &wy[0])
    with nogil:
        fixed_response(&a[0], off_xy, n, p, &x[0, 0] if p else NULL, &wy[0], &y_raw[0])


def householder_r(double[:, ::1] a):
    """QR of the rows of ``a`` (m x p, row-major) by Householder reflections, in
    place: R on and above the diagonal, as LAPACK's dgeqrf leaves it (its
    R^T R is the cross-product block of those columns).

    For the few columns of X (the rank and exact-fit checks of X and [X y]),
    where a plain loop costs less than reaching LAPACK.  The reflections are
    LAPACK's (dlarfg: none where a column has nothing below its diagonal), so
    R is LAPACK's up to rounding.
    """
    cdef Py_ssize_t m = a.shape[0], p = a.shape[1], i, j, k
    cdef double norm, alpha, beta, tau, w, inv
    with nogil:
        for j in range(min(m, p)):
            norm = 0.0
            for i in range(j + 1, m):
                norm += a[i, j] * a[i, j]
            if norm == 0.0:     # nothing below the diagonal: no reflection (dlarfg)
                continue
            alpha = a[j, j]
            beta = -copysign(sqrt(alpha * alpha + norm), alpha)
            tau = (beta - alpha) / beta
            inv = 1.0 / (alpha - beta)
            for i in range(j + 1, m):
                a[i, j] *= inv          # v = [1, a[j+1:, j]]
            for k in range(j + 1, p):
                w = a[j, k]
                for i in range(j + 1, m):
                    w += a[i, j] * a[i, k]
                w *= tau
                a[j, k] -= w
                for i in range(j + 1, m):
                    a[i, k] -= a[i, j] * w
            a[j, j] = beta


# ------------------------------------------------------------ double-double

cdef inline void _two_sum(double a, double b, double* s, double* e) noexcept nogil:
    """s + e == a + b exactly, s = fl(a + b) (Knuth's TwoSum)."""
    cdef double x = a + b
    cdef double bv = x - a
    e[0] = (a - (x - bv)) + (b - bv)
    s[0] = x


cdef inline void _dd_add_prod(double* acc, double x, double y) noexcept nogil:
    """acc[0] + acc[1] += x * y, the product split exactly by fma."""
    cdef double p = x * y
    cdef double pe = fma(x, y, -p)
    cdef double s, e, t
    _two_sum(acc[0], p, &s, &e)
    t = (acc[1] + pe) + e
    _two_sum(s, t, &acc[0], &acc[1])


cdef inline void _dd_add_dd(double* acc, double xh, double xl) noexcept nogil:
    """acc[0] + acc[1] += xh + xl (accurate double-word addition)."""
    cdef double sh, sl, th, tl, vh, vl
    _two_sum(acc[0], xh, &sh, &sl)
    _two_sum(acc[1], xl, &th, &tl)
    sl = sl + th
    _two_sum(sh, sl, &vh, &vl)
    vl = vl + tl
    _two_sum(vh, vl, &acc[0], &acc[1])


cdef struct DoubleDouble:
    char tag


cdef struct PlainDouble:
    char tag


ctypedef fused acc_mode:
    DoubleDouble
    PlainDouble


cdef inline void _add_prod(acc_mode* mode, double* acc, double x, double y) noexcept nogil:
    """acc += x * y: in double-double (acc[0] + acc[1]) or in plain double (acc[0])."""
    if acc_mode is PlainDouble:
        acc[0] += x * y
    else:
        _dd_add_prod(acc, x, y)


cdef inline bint _double_double(double[:, ::1] acc) except -1:
    """Whether ``acc`` is a double-double accumulator (2 columns) or plain (1)."""
    if acc.shape[1] == 2:
        return True
    if acc.shape[1] == 1:
        return False
    raise ValueError(f"an accumulator has 1 (plain) or 2 (double-double) columns, "
                     f"got {acc.shape[1]}")


cdef inline void _level_sums(double* out, const cnp.int64_t* refs, const double* a,
                             const double* b, Py_ssize_t n) noexcept nogil:
    """out[refs[r]] += a[r] b[r] in plain double, row after row: a level's run of
    consecutive rows summed in a register (sorted codes do not wait on memory)."""
    cdef Py_ssize_t r = 0, level
    cdef double v
    while r < n:
        level = refs[r]
        v = out[level]
        while r < n and refs[r] == level:
            v += a[r] * b[r]
            r += 1
        out[level] = v


cdef void _diag(acc_mode* mode, const cnp.int64_t[::1] refs, const double[:, ::1] z,
                double[:, ::1] acc) noexcept nogil:
    cdef Py_ssize_t n = refs.shape[0], k = z.shape[1], r, a, b, base
    if acc_mode is PlainDouble:
        if k == 1:   # the loop below for one column
            if n:
                _level_sums(&acc[0, 0], &refs[0], &z[0, 0], &z[0, 0], n)
            return
    for r in range(n):
        base = refs[r] * k * k
        for b in range(k):
            for a in range(k):
                _add_prod(mode, &acc[base + a + b * k, 0], z[r, a], z[r, b])


def add_diag_dd(const cnp.int64_t[::1] refs, const double[:, ::1] z,
                double[:, ::1] acc):
    """Block-diagonal Z_t^T Z_t: ``acc[l*k*k + a + b*k] += sum z[r,a] z[r,b]``
    (rows of ``acc``: hi, lo; or one plain column)."""
    cdef DoubleDouble dd
    cdef PlainDouble plain
    if _double_double(acc):
        with nogil:
            _diag(&dd, refs, z, acc)
    else:
        with nogil:
            _diag(&plain, refs, z, acc)


cdef void _offdiag_dense(acc_mode* mode, const cnp.int64_t[::1] refs_s,
                         const double[:, ::1] z_s, const cnp.int64_t[::1] refs_t,
                         const double[:, ::1] z_t, Py_ssize_t q_s,
                         double[:, ::1] acc) noexcept nogil:
    cdef Py_ssize_t n = refs_s.shape[0], ks = z_s.shape[1], kt = z_t.shape[1]
    cdef Py_ssize_t r, a, b, row0, col0
    cdef double* out
    if acc_mode is PlainDouble:
        if ks == 1 and kt == 1:   # (the loop below for one column each)
            out = &acc[0, 0]
            for r in range(n):
                out[refs_s[r] + refs_t[r] * q_s] += z_s[r, 0] * z_t[r, 0]
            return
    for r in range(n):
        row0 = refs_s[r] * ks
        col0 = refs_t[r] * kt
        for b in range(kt):
            for a in range(ks):
                _add_prod(mode, &acc[row0 + a + (col0 + b) * q_s, 0], z_s[r, a], z_t[r, b])


def add_offdiag_dense_dd(const cnp.int64_t[::1] refs_s, const double[:, ::1] z_s,
                         const cnp.int64_t[::1] refs_t, const double[:, ::1] z_t,
                         Py_ssize_t q_s, double[:, ::1] acc):
    """Dense Z_s^T Z_t (q_s x q_t, column-major)."""
    cdef DoubleDouble dd
    cdef PlainDouble plain
    if _double_double(acc):
        with nogil:
            _offdiag_dense(&dd, refs_s, z_s, refs_t, z_t, q_s, acc)
    else:
        with nogil:
            _offdiag_dense(&plain, refs_s, z_s, refs_t, z_t, q_s, acc)


cdef Py_ssize_t _offdiag_sparse(acc_mode* mode, const cnp.int64_t[::1] refs_s,
                                const double[:, ::1] z_s, const cnp.int64_t[::1] refs_t,
                                const double[:, ::1] z_t, const cnp.int64_t[::1] colptr,
                                const cnp.int64_t[::1] rowidx,
                                double[:, ::1] acc) noexcept nogil:
    cdef Py_ssize_t n = refs_s.shape[0], ks = z_s.shape[1], kt = z_t.shape[1]
    cdef Py_ssize_t r, a, b, lo, hi, mid, e, missing = 0
    cdef cnp.int64_t target
    for r in range(n):
        target = refs_s[r]
        lo = colptr[refs_t[r]]
        hi = colptr[refs_t[r] + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if rowidx[mid] < target:
                lo = mid + 1
            else:
                hi = mid
        if lo == colptr[refs_t[r] + 1] or rowidx[lo] != target:
            missing += 1
            continue
        e = lo * ks * kt
        for b in range(kt):
            for a in range(ks):
                _add_prod(mode, &acc[e + a + b * ks, 0], z_s[r, a], z_t[r, b])
    return missing


def add_offdiag_sparse_dd(const cnp.int64_t[::1] refs_s, const double[:, ::1] z_s,
                          const cnp.int64_t[::1] refs_t, const double[:, ::1] z_t,
                          const cnp.int64_t[::1] colptr,
                          const cnp.int64_t[::1] rowidx, double[:, ::1] acc):
    """Blocked-sparse Z_s^T Z_t over the pattern ``colptr``/``rowidx``.

    Column ``j`` (a level of term t) holds the levels of term s, sorted, that
    occur with it; each entry is a dense ``k_s x k_t`` block.  Every row's pair
    of levels must be in the pattern (it is built from the same data).
    Returns the number of rows whose pair was missing (0 when the pattern is
    complete).
    """
    cdef DoubleDouble dd
    cdef PlainDouble plain
    cdef Py_ssize_t missing
    if _double_double(acc):
        with nogil:
            missing = _offdiag_sparse(&dd, refs_s, z_s, refs_t, z_t, colptr, rowidx, acc)
    else:
        with nogil:
            missing = _offdiag_sparse(&plain, refs_s, z_s, refs_t, z_t, colptr, rowidx, acc)
    return missing


cdef bint _xy_z(acc_mode* mode, const cnp.int64_t[::1] refs, const double[:, ::1] z,
                const double[:, ::1] xy, double[:, ::1] acc) noexcept nogil:
    cdef Py_ssize_t n = refs.shape[0], k = z.shape[1], p1 = xy.shape[1]
    cdef Py_ssize_t r, b, i, col0, work = 0
    cdef double zb, xi
    cdef double* out
    if acc_mode is PlainDouble:
        if k == 1 and p1 == 1:   # the loop below for one column each
            if n:
                _level_sums(&acc[0, 0], &refs[0], &xy[0, 0], &z[0, 0], n)
            return False
    for r in range(n):
        col0 = refs[r] * k
        for b in range(k):
            zb = z[r, b]
            if acc_mode is PlainDouble:   # (a zero adds nothing: no test)
                out = &acc[(col0 + b) * p1, 0]
                for i in range(p1):
                    out[i] += xy[r, i] * zb
                continue
            for i in range(p1):
                xi = xy[r, i]
                if xi != 0.0:
                    _add_prod(mode, &acc[i + (col0 + b) * p1, 0], xi, zb)
        work += k * p1
        if work > SIGNAL_CHECK_WORK:
            work = 0
            if interrupted():
                return True
    return False


def add_xy_z_dd(const cnp.int64_t[::1] refs, const double[:, ::1] z,
                const double[:, ::1] xy, double[:, ::1] acc):
    """[X y]^T Z_t (p1 x q_t, column-major), skipping the zeros of [X y]
    (adding an exact zero leaves a double-double as it is)."""
    cdef DoubleDouble dd
    cdef PlainDouble plain
    cdef bint stopped
    if _double_double(acc):
        with nogil:
            stopped = _xy_z(&dd, refs, z, xy, acc)
    else:
        with nogil:
            stopped = _xy_z(&plain, refs, z, xy, acc)
    if stopped:
        raise_pending()


cdef enum:
    SMALL_ROW = 64
    DENSE_XY = 16    # up to this many columns of [X y], a plain sum is BLAS's dsyrk


cdef bint _xy_xy(acc_mode* mode, const double[:, ::1] xy, double[:, ::1] acc,
                 Py_ssize_t* ix, double* v) noexcept nogil:
    cdef Py_ssize_t n = xy.shape[0], p1 = xy.shape[1], r, i, j, m, col, work = 0
    cdef double xi, xj
    if acc_mode is PlainDouble:
        if p1 <= DENSE_XY and n > 0:   # few columns: one BLAS rank-n update
            syrk_n(<blas_int>p1, <blas_int>n, 1.0, &xy[0, 0], <blas_int>p1, 1.0, &acc[0, 0],
                   <blas_int>p1)
            return False
    for r in range(n):
        m = 0
        for i in range(p1):
            xi = xy[r, i]
            if xi != 0.0:
                ix[m] = i
                v[m] = xi
                m += 1
        for j in range(m):
            col = ix[j] * p1
            xj = v[j]
            for i in range(j, m):
                _add_prod(mode, &acc[ix[i] + col, 0], v[i], xj)
        work += p1 + m * m
        if work > SIGNAL_CHECK_WORK:
            work = 0
            if interrupted():
                return True
    return False


# ------------------------------------------------------------ a chunk's every block

# the kinds of block of A's accumulation plan (``design.layout.BlockLayout.accumulation_codes``)
PLAN_KINDS = ("xy_xy", "xy_z", "diag", "sparse", "dense")
# the operands a block's kind does not use (typed once: a view from them is a copy of
# the view, not a buffer request)
cdef const cnp.int64_t[::1] _NO_CODES = np.zeros(0, dtype=np.int64)
cdef const double[:, ::1] _NO_Z = np.zeros((0, 1))

cdef enum:
    PLAN_XY_XY, PLAN_XY_Z, PLAN_DIAG, PLAN_SPARSE, PLAN_DENSE


cdef Py_ssize_t _plan_block(acc_mode* mode, Py_ssize_t kind, const cnp.int64_t[::1] refs_s,
                            const double[:, ::1] z_s, const cnp.int64_t[::1] refs_t,
                            const double[:, ::1] z_t, const double[:, ::1] xy,
                            const cnp.int64_t[::1] colptr, const cnp.int64_t[::1] rowidx,
                            Py_ssize_t q_s, double[:, ::1] blk, Py_ssize_t* ix,
                            double* v) noexcept nogil:
    """One block of the plan: its kernel's return (-1: interrupted; else the rows
    whose level pair is missing from a sparse pattern)."""
    if kind == PLAN_XY_XY:
        return -1 if _xy_xy(mode, xy, blk, ix, v) else 0
    if kind == PLAN_XY_Z:
        return -1 if _xy_z(mode, refs_t, z_t, xy, blk) else 0
    if kind == PLAN_DIAG:
        _diag(mode, refs_t, z_t, blk)
        return 0
    if kind == PLAN_SPARSE:
        return _offdiag_sparse(mode, refs_s, z_s, refs_t, z_t, colptr, rowidx, blk)
    _offdiag_dense(mode, refs_s, z_s, refs_t, z_t, q_s, blk)
    return 0


cdef void _scaled_rows(list z, const double[:, :] x, const double[::1] y,
                       const double[::1] sw, bint weighted, double[:, ::1] xy,
                       list scaled) except *:
    """xy = W^(1/2) [X y] and scaled[t] = W^(1/2) z_t (row r times sw[r]); not
    ``weighted``, xy = [X y] (eq. 12)."""
    cdef Py_ssize_t n = x.shape[0], p = x.shape[1], t, r, j, k
    cdef const double[:, ::1] zt
    cdef double[:, ::1] out
    cdef double w
    if not weighted:
        with nogil:
            for r in range(n):
                for j in range(p):
                    xy[r, j] = x[r, j]
                xy[r, p] = y[r]
        return
    with nogil:
        for r in range(n):
            w = sw[r]
            for j in range(p):
                xy[r, j] = x[r, j] * w
            xy[r, p] = y[r] * w
    for t in range(len(z)):
        zt = z[t]
        out = scaled[t]
        k = zt.shape[1]
        with nogil:
            for r in range(n):
                w = sw[r]
                for j in range(k):
                    out[r, j] = zt[r, j] * w


cdef const double[::1] _NO_W = np.zeros(0)


def add_chunk(const cnp.int64_t[:, ::1] plan, list patterns, double[:, ::1] acc, list refs,
              list z, const double[:, :] x, const double[::1] y, sqrt_w, double[:, ::1] xy,
              list scaled):
    """One chunk's rows W^(1/2) [Z X y] added to A's accumulator ``acc`` (eq. 12), every
    block in one call.  The rows are first scaled by ``sqrt_w`` (None: unit weights)
    into ``xy`` (n x p1, [X y]) and ``scaled`` (per term, shaped as z).  Row (kind,
    s, t, start, end, q_s) of ``plan`` then adds the kernel of its kind
    (``PLAN_KINDS``: those of ``add_xy_xy_dd`` ... ``add_offdiag_dense_dd``) for
    terms s, t (s = T: [X y]) to ``acc[start:end]``; ``patterns[s]`` is the
    (colptr, rowidx) of a sparse block (s, 0).  Returns the number of rows whose
    level pair was missing from a sparse pattern (0 when complete)."""
    if sqrt_w is None:
        return add_rows(plan, patterns, acc, refs, z, x, y, _NO_W, False, xy, scaled)
    return add_rows(plan, patterns, acc, refs, z, x, y, sqrt_w, True, xy, scaled)


cdef Py_ssize_t add_rows(const cnp.int64_t[:, ::1] plan, list patterns, double[:, ::1] acc,
                         list refs, list z, const double[:, :] x, const double[::1] y,
                         const double[::1] sqrt_w, bint weighted, double[:, ::1] xy,
                         list scaled) except -1:
    """``add_chunk`` on typed views (``weighted``: ``sqrt_w`` holds the weights),
    for compiled callers."""
    if xy.shape[0] != x.shape[0] or xy.shape[1] != x.shape[1] + 1:
        raise ValueError(f"xy must be {x.shape[0]} x {x.shape[1] + 1}")
    if weighted and sqrt_w.shape[0] != x.shape[0]:
        raise ValueError(f"sqrt_w must have {x.shape[0]} values")
    _scaled_rows(z, x, y, sqrt_w, weighted, xy, scaled)
    return _add_blocks(plan, patterns, acc, refs, scaled if weighted else z, xy)


cdef Py_ssize_t _add_blocks(const cnp.int64_t[:, ::1] plan, list patterns, double[:, ::1] acc,
                            list refs, list z, const double[:, ::1] xy) except -1:
    """``add_chunk``'s blocks once the rows are scaled: each row of ``plan`` by the
    kernel of its kind; returns the rows whose level pair was missing from a
    sparse pattern."""
    cdef Py_ssize_t i, kind, s, t, n_terms = len(refs), missing = 0, got
    cdef DoubleDouble dd
    cdef PlainDouble plain
    cdef bint double_double = _double_double(acc)
    cdef const cnp.int64_t[::1] refs_s = _NO_CODES, refs_t = _NO_CODES
    cdef const cnp.int64_t[::1] colptr = _NO_CODES, rowidx = _NO_CODES
    cdef const double[:, ::1] z_s = _NO_Z, z_t = _NO_Z
    cdef double[:, ::1] blk
    cdef Py_ssize_t ix_few[SMALL_ROW]
    cdef double v_few[SMALL_ROW]
    cdef Py_ssize_t* ix = ix_few
    cdef double* v = v_few
    cdef Py_ssize_t[::1] ix_many
    cdef double[::1] v_many
    if xy.shape[1] > SMALL_ROW:
        ix_many = np.empty(xy.shape[1], dtype=np.intp)
        v_many = np.empty(xy.shape[1])
        ix = &ix_many[0]
        v = &v_many[0]
    for i in range(plan.shape[0]):
        kind, s, t = plan[i, 0], plan[i, 1], plan[i, 2]
        blk = acc[plan[i, 3]:plan[i, 4]]
        if t < n_terms:
            refs_t = refs[t]
            z_t = z[t]
        if kind == PLAN_SPARSE or kind == PLAN_DENSE:
            refs_s = refs[s]
            z_s = z[s]
        if kind == PLAN_SPARSE:
            colptr, rowidx = patterns[s]
        with nogil:
            if double_double:
                got = _plan_block(&dd, kind, refs_s, z_s, refs_t, z_t, xy, colptr, rowidx,
                                  plan[i, 5], blk, ix, v)
            else:
                got = _plan_block(&plain, kind, refs_s, z_s, refs_t, z_t, xy, colptr, rowidx,
                                  plan[i, 5], blk, ix, v)
        if got < 0:
            raise_pending()
        missing += got
    return missing


def add_xy_xy_dd(const double[:, ::1] xy, double[:, ::1] acc):
    """Lower triangle of [X y]^T [X y] (p1 x p1, column-major); the strict
    upper triangle is not touched.

    Only the products of a row's nonzero entries are added: a factor's
    indicator columns have one nonzero a row, so the work is O(n nnz^2) rather
    than O(n p1^2).  Adding an exact zero leaves a double-double as it is, so
    the sums are those of every product, whatever the rows' split.  A plain
    accumulator of at most ``DENSE_XY`` columns is summed by BLAS's dsyrk.
    """
    _add_blocks(np.array([[PLAN_XY_XY, 0, 0, 0, acc.shape[0], xy.shape[1]]], dtype=np.int64),
                [], acc, [], [], xy)


def add_sum_dd(const double[::1] values, double[::1] acc):
    """acc[0] + acc[1] += sum(values), in double-double."""
    cdef Py_ssize_t n = values.shape[0], r
    with nogil:
        for r in range(n):
            _dd_add_dd(&acc[0], values[r], 0.0)


def dd_merge(double[:, ::1] acc, const double[:, ::1] other):
    """acc += other, both double-double accumulators of the same shape."""
    cdef Py_ssize_t m = acc.shape[0], i
    if other.shape[0] != m:
        raise ValueError(f"accumulators differ in size: {m} and {other.shape[0]}")
    with nogil:
        for i in range(m):
            _dd_add_dd(&acc[i, 0], other[i, 0], other[i, 1])


def dd_round(const double[:, ::1] acc):
    """The accumulator rounded to double: hi + lo, one rounding per entry."""
    cdef Py_ssize_t m = acc.shape[0], i
    out = np.empty(m)
    cdef double[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = acc[i, 0] + acc[i, 1]
    return out



def dd_left_multiply(double[:, ::1] acc, Py_ssize_t off, Py_ssize_t p1, Py_ssize_t ncols,
                     const double[:, ::1] t):
    """B <- t^T B in double-double, for the p1 x ncols column-major block B of the
    accumulator ``acc`` at ``off``: the rows of A that belong to [X y] in a new
    basis [X y] t (theory.md, eq. 72)."""
    cdef Py_ssize_t c, i, k, base
    cdef double[:, ::1] tmp = np.empty((p1, 2))
    if t.shape[0] != p1 or t.shape[1] != p1:
        raise ValueError(f"t must be {p1} x {p1}, got {t.shape[0]} x {t.shape[1]}")
    with nogil:
        for c in range(ncols):
            base = off + c * p1
            for i in range(p1):
                tmp[i, 0] = 0.0
                tmp[i, 1] = 0.0
                for k in range(p1):
                    if t[k, i] != 0.0:
                        _dd_add_prod(&tmp[i, 0], t[k, i], acc[base + k, 0])
                        _dd_add_prod(&tmp[i, 0], t[k, i], acc[base + k, 1])
            for i in range(p1):
                acc[base + i, 0] = tmp[i, 0]
                acc[base + i, 1] = tmp[i, 1]
