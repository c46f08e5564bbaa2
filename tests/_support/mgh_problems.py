"""Unconstrained test problems of Moré, Garbow & Hillstrom (1981).

J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing Unconstrained Optimization Software",
ACM TOMS 7(1), 17-41 (1981). Numbers in the docstrings are the problem numbers of that paper.

Every problem is a sum of squares ``f(x) = sum_i r_i(x)^2`` given by its residual vector ``r`` and
Jacobian ``J``, so ``g(x) = 2 J(x)' r(x)``. ``f_star`` is the minimum value reported in the paper
(for several problems a local minimum from the standard start point is also listed there).
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Problem:
    name: str
    residuals: callable
    jacobian: callable
    x0: np.ndarray
    f_star: tuple = ()
    notes: str = ""
    kwargs: dict = field(default_factory=dict)

    @property
    def n(self):
        return self.x0.size

    def fun(self, x):
        r = self.residuals(x)
        return float(r @ r)

    def grad(self, x):
        return 2.0 * self.jacobian(x).T @ self.residuals(x)

    def fun_and_grad(self, x):
        r = self.residuals(x)
        return float(r @ r), 2.0 * self.jacobian(x).T @ r


# ---------------------------------------------------------------------------------------------
def rosenbrock():
    """(1) Rosenbrock, n = 2."""
    def r(x):
        return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])

    def J(x):
        return np.array([[-20.0 * x[0], 10.0], [-1.0, 0.0]])
    return Problem("Rosenbrock", r, J, np.array([-1.2, 1.0]), (0.0,))


def freudenstein_roth():
    """(2) Freudenstein and Roth, n = 2; a local minimum f = 48.9842 attracts most solvers."""
    def r(x):
        return np.array([-13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
                         -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1]])

    def J(x):
        return np.array([[1.0, 10.0 * x[1] - 3.0 * x[1] ** 2 - 2.0],
                         [1.0, 3.0 * x[1] ** 2 + 2.0 * x[1] - 14.0]])
    return Problem("Freudenstein-Roth", r, J, np.array([0.5, -2.0]), (0.0, 48.9842))


def powell_badly_scaled():
    """(3) Powell badly scaled, n = 2."""
    def r(x):
        return np.array([1e4 * x[0] * x[1] - 1.0, np.exp(-x[0]) + np.exp(-x[1]) - 1.0001])

    def J(x):
        return np.array([[1e4 * x[1], 1e4 * x[0]], [-np.exp(-x[0]), -np.exp(-x[1])]])
    return Problem("Powell badly scaled", r, J, np.array([0.0, 1.0]), (0.0,))


def brown_badly_scaled():
    """(4) Brown badly scaled, n = 2."""
    def r(x):
        return np.array([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])

    def J(x):
        return np.array([[1.0, 0.0], [0.0, 1.0], [x[1], x[0]]])
    return Problem("Brown badly scaled", r, J, np.array([1.0, 1.0]), (0.0,))


def beale():
    """(5) Beale, n = 2."""
    y = np.array([1.5, 2.25, 2.625])
    i = np.arange(1, 4)

    def r(x):
        return y - x[0] * (1.0 - x[1] ** i)

    def J(x):
        return np.column_stack([-(1.0 - x[1] ** i), x[0] * i * x[1] ** (i - 1)])
    return Problem("Beale", r, J, np.array([1.0, 1.0]), (0.0,))


def jennrich_sampson():
    """(6) Jennrich and Sampson, n = 2, m = 10."""
    i = np.arange(1, 11, dtype=float)

    def r(x):
        return 2.0 + 2.0 * i - (np.exp(i * x[0]) + np.exp(i * x[1]))

    def J(x):
        return np.column_stack([-i * np.exp(i * x[0]), -i * np.exp(i * x[1])])
    return Problem("Jennrich-Sampson", r, J, np.array([0.3, 0.4]), (124.362,))


def helical_valley():
    """(7) Helical valley, n = 3."""
    def theta(x):
        t = np.arctan(x[1] / x[0]) / (2.0 * np.pi)
        return t + 0.5 if x[0] < 0 else t

    def r(x):
        return np.array([10.0 * (x[2] - 10.0 * theta(x)),
                         10.0 * (np.hypot(x[0], x[1]) - 1.0), x[2]])

    def J(x):
        rr = x[0] ** 2 + x[1] ** 2
        norm = np.sqrt(rr)
        dtheta = np.array([-x[1], x[0]]) / (2.0 * np.pi * rr)
        return np.array([[-100.0 * dtheta[0], -100.0 * dtheta[1], 10.0],
                         [10.0 * x[0] / norm, 10.0 * x[1] / norm, 0.0],
                         [0.0, 0.0, 1.0]])
    return Problem("Helical valley", r, J, np.array([-1.0, 0.0, 0.0]), (0.0,))


def bard():
    """(8) Bard, n = 3, m = 15."""
    y = np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34,
                  2.10, 4.39])
    u = np.arange(1, 16, dtype=float)
    v = 16.0 - u
    w = np.minimum(u, v)

    def r(x):
        return y - (x[0] + u / (v * x[1] + w * x[2]))

    def J(x):
        den = (v * x[1] + w * x[2]) ** 2
        return np.column_stack([-np.ones_like(u), u * v / den, u * w / den])
    return Problem("Bard", r, J, np.array([1.0, 1.0, 1.0]), (8.21487e-3, 17.4286))


def gaussian():
    """(9) Gaussian, n = 3, m = 15."""
    y = np.array([0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989, 0.3521, 0.2420,
                  0.1295, 0.0540, 0.0175, 0.0044, 0.0009])
    t = (8.0 - np.arange(1, 16)) / 2.0

    def r(x):
        return x[0] * np.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - y

    def J(x):
        e = np.exp(-x[1] * (t - x[2]) ** 2 / 2.0)
        return np.column_stack([e, -x[0] * e * (t - x[2]) ** 2 / 2.0,
                                x[0] * e * x[1] * (t - x[2])])
    return Problem("Gaussian", r, J, np.array([0.4, 1.0, 0.0]), (1.12793e-8,))


def gulf():
    """(11) Gulf research and development, n = 3, m = 10."""
    t = np.arange(1, 11) / 100.0
    y = 25.0 + (-50.0 * np.log(t)) ** (2.0 / 3.0)

    def r(x):
        return np.exp(-np.abs(y - x[1]) ** x[2] / x[0]) - t

    def J(x):
        a = np.abs(y - x[1])
        p = a ** x[2]
        e = np.exp(-p / x[0])
        d0 = e * p / x[0] ** 2
        d1 = e * x[2] * a ** (x[2] - 1.0) * np.sign(y - x[1]) / x[0]
        d2 = -e * p * np.log(a) / x[0]
        return np.column_stack([d0, d1, d2])
    return Problem("Gulf", r, J, np.array([5.0, 2.5, 0.15]), (0.0,))


def box_3d():
    """(12) Box three-dimensional, n = 3, m = 10."""
    t = 0.1 * np.arange(1, 11)

    def r(x):
        return (np.exp(-t * x[0]) - np.exp(-t * x[1])
                - x[2] * (np.exp(-t) - np.exp(-10.0 * t)))

    def J(x):
        return np.column_stack([-t * np.exp(-t * x[0]), t * np.exp(-t * x[1]),
                                -(np.exp(-t) - np.exp(-10.0 * t))])
    return Problem("Box 3-D", r, J, np.array([0.0, 10.0, 20.0]), (0.0,))


def powell_singular():
    """(13) Powell singular, n = 4."""
    s5, s10 = np.sqrt(5.0), np.sqrt(10.0)

    def r(x):
        return np.array([x[0] + 10.0 * x[1], s5 * (x[2] - x[3]), (x[1] - 2.0 * x[2]) ** 2,
                         s10 * (x[0] - x[3]) ** 2])

    def J(x):
        a = 2.0 * (x[1] - 2.0 * x[2])
        b = 2.0 * s10 * (x[0] - x[3])
        return np.array([[1.0, 10.0, 0.0, 0.0], [0.0, 0.0, s5, -s5], [0.0, a, -2.0 * a, 0.0],
                         [b, 0.0, 0.0, -b]])
    return Problem("Powell singular", r, J, np.array([3.0, -1.0, 0.0, 1.0]), (0.0,))


def wood():
    """(14) Wood, n = 4."""
    s90, s10 = np.sqrt(90.0), np.sqrt(10.0)

    def r(x):
        return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0], s90 * (x[3] - x[2] ** 2),
                         1.0 - x[2], s10 * (x[1] + x[3] - 2.0), (x[1] - x[3]) / s10])

    def J(x):
        return np.array([[-20.0 * x[0], 10.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, -2.0 * s90 * x[2], s90], [0.0, 0.0, -1.0, 0.0],
                         [0.0, s10, 0.0, s10], [0.0, 1.0 / s10, 0.0, -1.0 / s10]])
    return Problem("Wood", r, J, np.array([-3.0, -1.0, -3.0, -1.0]), (0.0,))


def kowalik_osborne():
    """(15) Kowalik and Osborne, n = 4, m = 11."""
    y = np.array([0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235,
                  0.0246])
    u = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])

    def r(x):
        return y - x[0] * (u ** 2 + u * x[1]) / (u ** 2 + u * x[2] + x[3])

    def J(x):
        num = u ** 2 + u * x[1]
        den = u ** 2 + u * x[2] + x[3]
        return np.column_stack([-num / den, -x[0] * u / den, x[0] * num * u / den ** 2,
                                x[0] * num / den ** 2])
    return Problem("Kowalik-Osborne", r, J, np.array([0.25, 0.39, 0.415, 0.39]), (3.07505e-4,))


def brown_dennis():
    """(16) Brown and Dennis, n = 4, m = 20."""
    t = np.arange(1, 21) / 5.0

    def r(x):
        a = x[0] + t * x[1] - np.exp(t)
        b = x[2] + x[3] * np.sin(t) - np.cos(t)
        return a ** 2 + b ** 2

    def J(x):
        a = x[0] + t * x[1] - np.exp(t)
        b = x[2] + x[3] * np.sin(t) - np.cos(t)
        return np.column_stack([2.0 * a, 2.0 * a * t, 2.0 * b, 2.0 * b * np.sin(t)])
    return Problem("Brown-Dennis", r, J, np.array([25.0, 5.0, -5.0, -1.0]), (85822.2,))


def biggs_exp6():
    """(18) Biggs EXP6, n = 6, m = 13."""
    t = 0.1 * np.arange(1, 14)
    y = np.exp(-t) - 5.0 * np.exp(-10.0 * t) + 3.0 * np.exp(-4.0 * t)

    def r(x):
        return (x[2] * np.exp(-t * x[0]) - x[3] * np.exp(-t * x[1]) + x[5] * np.exp(-t * x[4])
                - y)

    def J(x):
        e0, e1, e4 = np.exp(-t * x[0]), np.exp(-t * x[1]), np.exp(-t * x[4])
        return np.column_stack([-t * x[2] * e0, t * x[3] * e1, e0, -e1, -t * x[5] * e4, e4])
    return Problem("Biggs EXP6", r, J, np.array([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]),
                   (0.0, 5.65565e-3))


def watson(n=6):
    """(20) Watson, n = 6 (m = 31)."""
    t = np.arange(1, 30) / 29.0
    j = np.arange(n)

    def r(x):
        s1 = ((j[1:] * x[1:]) * t[:, None] ** (j[1:] - 1)).sum(axis=1)
        s2 = (x * t[:, None] ** j).sum(axis=1)
        return np.concatenate([s1 - s2 ** 2 - 1.0, [x[0], x[1] - x[0] ** 2 - 1.0]])

    def J(x):
        s2 = (x * t[:, None] ** j).sum(axis=1)
        top = np.zeros((29, n))
        top[:, 1:] = j[1:] * t[:, None] ** (j[1:] - 1)
        top -= 2.0 * s2[:, None] * t[:, None] ** j
        tail = np.zeros((2, n))
        tail[0, 0] = 1.0
        tail[1, 0] = -2.0 * x[0]
        tail[1, 1] = 1.0
        return np.vstack([top, tail])
    return Problem(f"Watson n={n}", r, J, np.zeros(n), (2.28767e-3,))


def extended_rosenbrock(n=10):
    """(21) Extended Rosenbrock, n even."""
    def r(x):
        out = np.empty(n)
        out[0::2] = 10.0 * (x[1::2] - x[0::2] ** 2)
        out[1::2] = 1.0 - x[0::2]
        return out

    def J(x):
        out = np.zeros((n, n))
        k = np.arange(0, n, 2)
        out[k, k] = -20.0 * x[k]
        out[k, k + 1] = 10.0
        out[k + 1, k] = -1.0
        return out
    x0 = np.tile([-1.2, 1.0], n // 2)
    return Problem(f"Extended Rosenbrock n={n}", r, J, x0, (0.0,))


def extended_powell(n=8):
    """(22) Extended Powell singular, n multiple of 4."""
    s5, s10 = np.sqrt(5.0), np.sqrt(10.0)

    def r(x):
        a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
        out = np.empty(n)
        out[0::4] = a + 10.0 * b
        out[1::4] = s5 * (c - d)
        out[2::4] = (b - 2.0 * c) ** 2
        out[3::4] = s10 * (a - d) ** 2
        return out

    def J(x):
        out = np.zeros((n, n))
        for k in range(0, n, 4):
            a, b, c, d = x[k:k + 4]
            out[k, k], out[k, k + 1] = 1.0, 10.0
            out[k + 1, k + 2], out[k + 1, k + 3] = s5, -s5
            out[k + 2, k + 1], out[k + 2, k + 2] = 2.0 * (b - 2.0 * c), -4.0 * (b - 2.0 * c)
            out[k + 3, k], out[k + 3, k + 3] = 2.0 * s10 * (a - d), -2.0 * s10 * (a - d)
        return out
    x0 = np.tile([3.0, -1.0, 0.0, 1.0], n // 4)
    return Problem(f"Extended Powell n={n}", r, J, x0, (0.0,))


def penalty_1(n=10):
    """(23) Penalty function I, a = 1e-5."""
    sa = np.sqrt(1e-5)

    def r(x):
        return np.concatenate([sa * (x - 1.0), [x @ x - 0.25]])

    def J(x):
        return np.vstack([sa * np.eye(n), 2.0 * x[None, :]])
    return Problem(f"Penalty I n={n}", r, J, np.arange(1.0, n + 1), (7.08765e-5,))


def penalty_2(n=10):
    """(24) Penalty function II, a = 1e-5."""
    sa = np.sqrt(1e-5)
    i = np.arange(2, n + 1)
    y = np.exp(i / 10.0) + np.exp((i - 1) / 10.0)
    e = np.exp(-1.0 / 10.0)

    def r(x):
        r1 = [x[0] - 0.2]
        r2 = sa * (np.exp(x[1:] / 10.0) + np.exp(x[:-1] / 10.0) - y)
        r3 = sa * (np.exp(x[1:] / 10.0) - e)
        r4 = [(n - np.arange(n)) @ x ** 2 - 1.0]
        return np.concatenate([r1, r2, r3, r4])

    def J(x):
        out = np.zeros((2 * n, n))
        out[0, 0] = 1.0
        k = np.arange(n - 1)
        out[1 + k, k + 1] = sa * np.exp(x[1:] / 10.0) / 10.0
        out[1 + k, k] = sa * np.exp(x[:-1] / 10.0) / 10.0
        out[n + k, k + 1] = sa * np.exp(x[1:] / 10.0) / 10.0
        out[2 * n - 1] = 2.0 * (n - np.arange(n)) * x
        return out
    return Problem(f"Penalty II n={n}", r, J, np.full(n, 0.5), (2.93660e-4,))


def variably_dimensioned(n=10):
    """(25) Variably dimensioned."""
    j = np.arange(1.0, n + 1)

    def r(x):
        s = j @ (x - 1.0)
        return np.concatenate([x - 1.0, [s, s ** 2]])

    def J(x):
        s = j @ (x - 1.0)
        return np.vstack([np.eye(n), j[None, :], 2.0 * s * j[None, :]])
    return Problem(f"Variably dimensioned n={n}", r, J, 1.0 - j / n, (0.0,))


def trigonometric(n=10):
    """(26) Trigonometric."""
    i = np.arange(1.0, n + 1)

    def r(x):
        return n - np.cos(x).sum() + i * (1.0 - np.cos(x)) - np.sin(x)

    def J(x):
        out = np.tile(np.sin(x), (n, 1))
        out[np.arange(n), np.arange(n)] += i * np.sin(x) - np.cos(x)
        return out
    return Problem(f"Trigonometric n={n}", r, J, np.full(n, 1.0 / n), (0.0, 2.79506e-5))


def broyden_tridiagonal(n=10):
    """(30) Broyden tridiagonal."""
    def r(x):
        xp = np.concatenate([[0.0], x, [0.0]])
        return (3.0 - 2.0 * x) * x - xp[:-2] - 2.0 * xp[2:] + 1.0

    def J(x):
        out = np.diag(3.0 - 4.0 * x)
        out[np.arange(1, n), np.arange(n - 1)] = -1.0
        out[np.arange(n - 1), np.arange(1, n)] = -2.0
        return out
    return Problem(f"Broyden tridiagonal n={n}", r, J, np.full(n, -1.0), (0.0,))


def broyden_banded(n=10):
    """(31) Broyden banded (ml = 5, mu = 1)."""
    band = np.zeros((n, n))
    for i in range(n):
        for j in range(max(0, i - 5), min(n, i + 2)):
            if j != i:
                band[i, j] = 1.0

    def r(x):
        return x * (2.0 + 5.0 * x ** 2) + 1.0 - band @ (x * (1.0 + x))

    def J(x):
        return np.diag(2.0 + 15.0 * x ** 2) - band * (1.0 + 2.0 * x)[None, :]
    return Problem(f"Broyden banded n={n}", r, J, np.full(n, -1.0), (0.0,))


def discrete_boundary_value(n=10):
    """(28) Discrete boundary value."""
    h = 1.0 / (n + 1)
    t = np.arange(1, n + 1) * h

    def r(x):
        xp = np.concatenate([[0.0], x, [0.0]])
        return 2.0 * x - xp[:-2] - xp[2:] + h ** 2 * (x + t + 1.0) ** 3 / 2.0

    def J(x):
        out = np.diag(2.0 + 1.5 * h ** 2 * (x + t + 1.0) ** 2)
        out[np.arange(1, n), np.arange(n - 1)] = -1.0
        out[np.arange(n - 1), np.arange(1, n)] = -1.0
        return out
    return Problem(f"Discrete boundary value n={n}", r, J, t * (t - 1.0), (0.0,))


def chebyquad(n=8):
    """(35) Chebyquad, m = n."""
    i = np.arange(1, n + 1)
    integrals = np.zeros(n)
    integrals[1::2] = -1.0 / (i[1::2] ** 2 - 1.0)

    def cheb(x):
        """T_i(2x - 1) and d/dx for i = 1..n, x_j as columns."""
        z = 2.0 * x - 1.0
        T = np.zeros((n + 1, n))
        dT = np.zeros((n + 1, n))
        T[0] = 1.0
        T[1] = z
        dT[1] = 2.0
        for k in range(2, n + 1):
            T[k] = 2.0 * z * T[k - 1] - T[k - 2]
            dT[k] = 4.0 * T[k - 1] + 2.0 * z * dT[k - 1] - dT[k - 2]
        return T[1:], dT[1:]

    def r(x):
        T, _ = cheb(x)
        return T.mean(axis=1) - integrals

    def J(x):
        _, dT = cheb(x)
        return dT / n
    return Problem(f"Chebyquad n={n}", r, J, i / (n + 1.0), (3.51687e-3,))


def linear_full_rank(n=10, m=20):
    """(32) Linear function, full rank."""
    def r(x):
        s = 2.0 / m * x.sum()
        out = np.full(m, -s - 1.0)
        out[:n] += x
        return out

    def J(x):
        out = np.full((m, n), -2.0 / m)
        out[np.arange(n), np.arange(n)] += 1.0
        return out
    return Problem(f"Linear full rank n={n}", r, J, np.ones(n), (float(m - n),))


ALL_PROBLEMS = [
    rosenbrock, freudenstein_roth, powell_badly_scaled, brown_badly_scaled, beale,
    jennrich_sampson, helical_valley, bard, gaussian, gulf, box_3d, powell_singular, wood,
    kowalik_osborne, brown_dennis, biggs_exp6, watson, extended_rosenbrock, extended_powell,
    penalty_1, penalty_2, variably_dimensioned, trigonometric, broyden_tridiagonal,
    broyden_banded, discrete_boundary_value, chebyquad, linear_full_rank,
]


def all_problems():
    return [make() for make in ALL_PROBLEMS]


def box_cutting_off_minimizer(problem, x_free):
    """Bounds for ``problem`` that cut off ``x_free`` (a minimizer found without bounds): every
    third coordinate is bounded on the side of ``x_free`` a quarter of its scale away, so the
    bounded minimum has those at a bound; every third is boxed loosely (bounds that stay
    inactive); the rest are free. Returns ``(lower, upper)`` with -inf / +inf for open sides."""
    n = problem.n
    lower = np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    scale = 1.0 + np.abs(x_free)
    for i in range(n):
        if i % 3 == 0:
            if problem.x0[i] <= x_free[i]:
                upper[i] = x_free[i] - 0.25 * scale[i]
            else:
                lower[i] = x_free[i] + 0.25 * scale[i]
        elif i % 3 == 1:
            lower[i] = min(problem.x0[i], x_free[i]) - 10.0 * scale[i]
            upper[i] = max(problem.x0[i], x_free[i]) + 10.0 * scale[i]
    return lower, upper
