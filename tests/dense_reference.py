"""Dense reference implementation of the linear mixed-model criteria.

This module is the executable statement of the method that ``lmmfast``
implements, written with dense matrices and textbook formulas so that every
quantity can be checked by eye.  It is slow (it forms and factorises an
n x n covariance matrix) and is meant only for tests on small data sets.

The model
---------
For n observations, p fixed effects and q random effects::

    y | b  ~  N(X beta + Z b + offset,  sigma^2 W^-1)
    b      ~  N(0,  sigma^2 Lambda_theta Lambda_theta^T)

with ``W = diag(weights)`` the prior weights (all ones by default).
Integrating out b gives the marginal distribution of the response::

    y - offset  ~  N(X beta,  sigma^2 V0),    V0 = Z Lambda Lambda^T Z^T + W^-1

Everything below follows from this marginal normal distribution: beta is
estimated by generalised least squares with covariance V0, sigma^2 by its
maximum-likelihood (ML) or restricted maximum-likelihood (REML) value, and
the criterion reported is lme4's: the deviance -2 log L for ML and the REML
criterion -2 log L_R for REML, both profiled over beta and sigma at the
given theta.

Random-effects terms
--------------------
A term is a tuple ``(refs, z, nl)``: integer level codes ``refs`` (length n,
values 0..nl-1), a per-row covariate matrix ``z`` (n x k; a column of ones
for a random intercept) and the number of levels ``nl``.  The term
contributes nl*k random effects, ordered level-major (all k effects of level
0, then those of level 1, ...), and nl identical k x k blocks ``lambda`` to
the block-diagonal Lambda.  ``lambda`` is lower triangular and takes
k(k+1)/2 entries of theta, filled column by column (for k = 2: lambda11,
lambda21, lambda22), which is lme4's order.  Z and Lambda of a model are the
terms' blocks placed side by side (Z) and along the diagonal (Lambda), in
the order of the terms; theta is the concatenation of the terms' entries.
"""

import numpy as np
import scipy.linalg


def term_dimensions(term):
    """Return ``(nl, k)`` of a term: its number of levels and of effects per level."""
    refs, z, nl = term
    return nl, np.asarray(z).reshape(len(refs), -1).shape[1]


def dense_Z_term(refs, z, nl):
    """Return the n x (nl*k) model matrix of one random-effects term.

    Column ``level*k + j`` holds ``z[:, j]`` on the rows whose level code is
    ``level`` and zero elsewhere, so that ``(Z_t b_t)[i] = z[i] . b_t[refs[i]]``:
    each row picks up the k effects of its own level, weighted by its
    covariates.
    """
    refs = np.asarray(refs)
    z = np.asarray(z, dtype=float).reshape(len(refs), -1)
    n, k = z.shape
    Z = np.zeros((n, nl * k))
    for j in range(k):
        Z[np.arange(n), refs * k + j] = z[:, j]
    return Z


def dense_Z(terms, n):
    """Return the dense n x q random-effects model matrix Z of all terms.

    The terms' matrices (see :func:`dense_Z_term`) are concatenated column-wise
    in the order of ``terms``; q is the total number of random effects.
    """
    blocks = [dense_Z_term(refs, z, nl) for refs, z, nl in terms]
    for block in blocks:
        if block.shape[0] != n:
            raise ValueError(f"term has {block.shape[0]} rows, expected {n}")
    return np.hstack(blocks) if blocks else np.zeros((n, 0))


def lower_triangular_factor(theta_term, k):
    """Return the k x k lower-triangular ``lambda`` of one term.

    The k(k+1)/2 entries of ``theta_term`` fill the lower triangle column by
    column: for k = 2 the order is lambda11, lambda21, lambda22.  The
    covariance of the term's k effects at one level is
    ``sigma^2 lambda lambda^T``.
    """
    lam = np.zeros((k, k))
    position = 0
    for col in range(k):
        for row in range(col, k):
            lam[row, col] = theta_term[position]
            position += 1
    return lam


def dense_Lambda(terms, theta):
    """Return the dense q x q relative covariance factor Lambda_theta.

    Each term with nl levels and k effects per level contributes nl copies of
    its k x k ``lambda`` (see :func:`lower_triangular_factor`) along the
    diagonal, matching the level-major order of the term's random effects;
    the terms' blocks follow one another in the order of ``terms``, each
    taking the next k(k+1)/2 entries of ``theta``.
    """
    theta = np.asarray(theta, dtype=float)
    blocks = []
    position = 0
    for term in terms:
        nl, k = term_dimensions(term)
        size = k * (k + 1) // 2
        if position + size > theta.size:
            raise ValueError("theta is shorter than the terms require")
        lam = lower_triangular_factor(theta[position:position + size], k)
        blocks.append(np.kron(np.eye(nl), lam))
        position += size
    if position != theta.size:
        raise ValueError(f"theta has {theta.size} entries, the terms use {position}")
    return scipy.linalg.block_diag(*blocks) if blocks else np.zeros((0, 0))


def marginal_covariance(Z, Lambda, weights):
    """Return V0 = Z Lambda Lambda^T Z^T + W^-1, the scaled covariance of y.

    Var(y) = sigma^2 V0: the random effects contribute
    Var(Z b) = sigma^2 Z Lambda Lambda^T Z^T and the residuals
    sigma^2 W^-1, with W the diagonal matrix of the prior weights.
    """
    ZLambda = Z @ Lambda
    return ZLambda @ ZLambda.T + np.diag(1.0 / weights)


def dense_criterion(X, y, terms, theta, reml, weights=None, offset=None):
    """Evaluate lme4's objective and the profiled estimates at ``theta``.

    Parameters
    ----------
    X : (n, p) array, full column rank
        Fixed-effects model matrix.
    y : (n,) array
        Response.
    terms : list of ``(refs, z, nl)``
        Random-effects terms (see the module docstring).
    theta : array
        Entries of Lambda_theta, term by term.
    reml : bool
        Return the REML criterion (True) or the deviance (False).
    weights : (n,) array of positive numbers, optional
        Prior weights W; the residual variance of row i is sigma^2 / w_i.
    offset : (n,) array, optional
        Known term added to the linear predictor.

    Returns
    -------
    dict with

    ``objective``
        ML: the deviance -2 log L(beta_hat, sigma_hat), where L is the
        multivariate normal density of ``y - offset`` with mean X beta and
        covariance sigma^2 V0::

            -2 log L = n log(2 pi) + log|sigma^2 V0|
                       + (r^T V0^-1 r) / sigma^2,        r = y - offset - X beta

        Maximised over beta and sigma this is
        ``n log(2 pi sigma_hat^2) + log|V0| + n``.

        REML: -2 log L_R, where the restricted likelihood L_R(sigma) is the
        likelihood integrated over beta (flat prior, Lebesgue measure).  With
        A = X^T V0^-1 X, the quadratic form splits as
        r^T V0^-1 r = r_hat^T V0^-1 r_hat + (beta - beta_hat)^T A (beta - beta_hat),
        so the integral is Gaussian::

            L_R = L(beta_hat, sigma) * (2 pi sigma^2)^(p/2) |A|^(-1/2)

        and -2 log L_R at the maximising sigma_hat is
        ``(n - p) log(2 pi sigma_hat^2) + log|V0| + log|A| + (n - p)``.
        This is lme4's ``REMLcrit``; the log determinants equal lme4's
        ``ldL2 - sum(log w)`` (log|V0|) and ``ldRX2`` (log|A|).
    ``beta``
        The generalised least squares estimate
        ``beta_hat = A^-1 X^T V0^-1 (y - offset)``, which maximises L (and
        hence is the centre of the integral in L_R) for every sigma.
    ``sigma``
        sqrt(sigma_hat^2), the maximiser of L (ML) or L_R (REML) given beta_hat:
        ``sigma_hat^2 = r_hat^T V0^-1 r_hat / n`` for ML and
        ``/ (n - p)`` for REML, with ``r_hat = y - offset - X beta_hat``.
    ``b``
        The conditional modes (= conditional means) of the random effects
        at beta_hat, sigma_hat: since Cov(b, y) = sigma^2 Lambda Lambda^T Z^T,
        ``E[b | y] = Lambda Lambda^T Z^T V0^-1 r_hat`` (sigma cancels).  These
        are lme4's ``ranef`` values, in the level-major order of the terms.
    ``vcov_beta``
        ``sigma_hat^2 A^-1``, the covariance of beta_hat, which is lme4's
        ``vcov`` (with the REML or the ML sigma_hat respectively).

    The linear algebra uses the Cholesky factor V0 = L L^T: with
    X~ = L^-1 X and r~ = L^-1 r, ``r^T V0^-1 r = |r~|^2`` and
    ``log|V0| = 2 sum log diag L``; the thin QR decomposition X~ = Q R gives
    beta_hat by least squares, A = R^T R and log|A| = 2 sum log |diag R|.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},)")
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    if np.any(weights <= 0):
        raise ValueError("prior weights must be positive")

    Z = dense_Z(terms, n)
    Lambda = dense_Lambda(terms, theta)
    V0 = marginal_covariance(Z, Lambda, weights)
    L = scipy.linalg.cholesky(V0, lower=True)
    log_det_V0 = 2.0 * np.sum(np.log(np.diag(L)))

    response = y - offset
    X_white = scipy.linalg.solve_triangular(L, X, lower=True)
    response_white = scipy.linalg.solve_triangular(L, response, lower=True)
    Q, R = np.linalg.qr(X_white)
    beta = scipy.linalg.solve_triangular(R, Q.T @ response_white)
    log_det_A = 2.0 * np.sum(np.log(np.abs(np.diag(R))))
    R_inv = scipy.linalg.solve_triangular(R, np.eye(p))
    A_inv = R_inv @ R_inv.T

    residual = response - X @ beta
    residual_white = scipy.linalg.solve_triangular(L, residual, lower=True)
    quadratic_form = residual_white @ residual_white

    degrees_of_freedom = n - p if reml else n
    sigma2 = quadratic_form / degrees_of_freedom

    minus_two_log_density = (
        n * np.log(2.0 * np.pi) + n * np.log(sigma2) + log_det_V0
        + quadratic_form / sigma2
    )
    if reml:
        log_integral_over_beta = (
            0.5 * p * np.log(2.0 * np.pi * sigma2) - 0.5 * log_det_A
        )
        objective = minus_two_log_density - 2.0 * log_integral_over_beta
    else:
        objective = minus_two_log_density

    V0_inv_residual = scipy.linalg.cho_solve((L, True), residual)
    b = Lambda @ (Lambda.T @ (Z.T @ V0_inv_residual))

    return {
        "objective": float(objective),
        "beta": beta,
        "sigma": float(np.sqrt(sigma2)),
        "b": b,
        "vcov_beta": sigma2 * A_inv,
    }


def dense_ai_hessian(X, y, terms, theta, reml, weights=None, offset=None, *,
                     curvature=True):
    """Return the approximate Hessian of the criterion in theta (eq. 70).

    Everything is in the weighted space: the rows of X, Z and ``y - offset``
    are multiplied by sqrt(weights).  At ``theta`` the penalised least
    squares problem ``min |y - X beta - Z Lambda u|^2 + |u|^2`` gives
    beta_hat and u_tilde, the residual ``e = y - X beta_hat - Z Lambda u_tilde``,
    ``r^2 = |e|^2 + |u_tilde|^2``, ``sigma^2 = r^2 / nu`` (nu = n - p for
    REML, n for ML) and ``v = Z^T e``.  For each entry m of theta, with
    ``D_m = d(Lambda Lambda^T)/d theta_m`` and ``w_m = Z D_m v``::

        AI_mn = (w_m^T w_n - (M^T w_m)^T Omega^-1 (M^T w_n)) / sigma^2
        H_mn  = AI_mn - (e^T w_m)(e^T w_n) / (sigma^4 nu) + C_mn

    where M = [Z Lambda, X] and Omega = M^T M + diag(I_q, 0) for REML,
    M = Z Lambda and Omega = M^T M + I_q for ML (so that AI_mn is
    ``w_m^T P w_n`` or ``w_m^T V^-1 w_n``, V = sigma^2 (I + Z Lambda Lambda^T Z^T)).

    ``C_mn = 2 G_t[a, b]`` when theta_m = lambda_t[a, j] and
    theta_n = lambda_t[b, j] lie in one column j of one term t, 0 otherwise;
    C is the exact second-order term of the chain rule through
    Psi_t = lambda_t lambda_t^T, with ``G_t`` the (symmetric) derivative of the
    criterion in Psi_t.  G_t is computed here analytically from the marginal
    covariance V0 = I + Z Lambda Lambda^T Z^T (weighted space): the criterion
    changes by ``tr(P0 dV0) - s^T dV0 s / sigma^2`` with s = V0^-1 (y - X beta_hat)
    and P0 = V0^-1 (ML) or V0^-1 - V0^-1 X (X^T V0^-1 X)^-1 X^T V0^-1 (REML), so
    ``G_t = sum over levels l of Z_tl^T (P0 - s s^T / sigma^2) Z_tl``,
    Z_tl the k columns of Z for level l of term t.  C is left out (taken as 0)
    for a term with a zero on lambda_t's diagonal, and for every term when
    ``curvature`` is false (which returns the AI part with the profiling term).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    theta = np.asarray(theta, dtype=float)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    sqrt_w = np.sqrt(weights)

    Z = dense_Z(terms, n) * sqrt_w[:, None]
    Xw = X * sqrt_w[:, None]
    yw = (y - offset) * sqrt_w
    Lambda = dense_Lambda(terms, theta)
    q = Z.shape[1]
    ZL = Z @ Lambda

    # penalised least squares for (u_tilde, beta_hat)
    M_full = np.hstack([ZL, Xw])
    Omega_full = M_full.T @ M_full
    Omega_full[:q, :q] += np.eye(q)
    solution = np.linalg.solve(Omega_full, M_full.T @ yw)
    u, beta = solution[:q], solution[q:]
    e = yw - Xw @ beta - ZL @ u
    r2 = e @ e + u @ u
    nu = n - p if reml else n
    sigma2 = r2 / nu
    v = Z.T @ e

    # D_m = d(Lambda Lambda^T)/d theta_m, term by term; W[:, m] = w_m
    n_theta = theta.size
    W = np.zeros((n, n_theta))
    entries = []                    # (term, row, column) of each theta entry
    position = 0
    for t, term in enumerate(terms):
        nl, k = term_dimensions(term)
        for col in range(k):
            for row in range(col, k):
                dtheta = np.zeros(n_theta)
                dtheta[position] = 1.0
                E = dense_Lambda(terms, dtheta)            # d Lambda / d theta_m
                D = E @ Lambda.T + Lambda @ E.T
                W[:, position] = Z @ (D @ v)
                entries.append((t, row, col))
                position += 1

    if reml:
        M, Omega = M_full, Omega_full
    else:
        M = ZL
        Omega = ZL.T @ ZL + np.eye(q)
    MW = M.T @ W
    AI = (W.T @ W - MW.T @ np.linalg.solve(Omega, MW)) / sigma2
    ew = e @ W
    H = AI - np.outer(ew, ew) / (sigma2 ** 2 * nu)
    if not curvature:
        return H

    # G_t from the marginal covariance, then C
    V0 = ZL @ ZL.T + np.eye(n)
    V0_inv = np.linalg.inv(V0)
    P0 = V0_inv
    if reml and p > 0:
        V0_inv_X = V0_inv @ Xw
        P0 = V0_inv - V0_inv_X @ np.linalg.solve(Xw.T @ V0_inv_X, V0_inv_X.T)
    V0_inv_r = V0_inv @ (yw - Xw @ beta)            # = P0 y for REML
    B = P0 - np.outer(V0_inv_r, V0_inv_r) / sigma2
    Z_cols = Z.T @ B @ Z
    start = 0
    position = 0
    for t, term in enumerate(terms):
        nl, k = term_dimensions(term)
        size = k * (k + 1) // 2
        lam = lower_triangular_factor(theta[position:position + size], k)
        G = np.zeros((k, k))
        for level in range(nl):
            cols = slice(start + level * k, start + (level + 1) * k)
            G += Z_cols[cols, cols]
        if np.all(np.diag(lam) != 0):
            for m in range(position, position + size):
                for m2 in range(position, position + size):
                    _, a, j = entries[m]
                    _, b, j2 = entries[m2]
                    if j == j2:
                        H[m, m2] += 2.0 * G[a, b]
        start += nl * k
        position += size
    return H
