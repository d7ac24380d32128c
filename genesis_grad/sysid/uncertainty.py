"""
Error bars of identified parameters: the Gauss-Newton approximation ``J^T J`` of the loss curvature.

``J`` is the Jacobian of the residuals (simulated minus measured positions) with respect to ``z = log(value /
nominal)``, by central differences of forward rollouts (2 per parameter, counted in the simulator's steps). With the
residual variance ``s^2 = SSR / (N - p)``, the covariance of ``z`` is ``s^2 (J^T J)^-1``; since ``z`` is a log, its
standard deviation is the relative standard deviation of the value. The sensitivity ``sqrt(diag(J^T J) / N)`` is the
RMS position change (rad) per unit of log-change of one parameter: a parameter with a tiny sensitivity is poorly
identified by this record whatever the noise.
"""

from __future__ import annotations

import numpy as np

from .problem import SysIdProblem


def gauss_newton(problem: SysIdProblem, z: np.ndarray, step: float = 1e-5) -> dict:
    """
    Standard errors and sensitivities of the parameters at ``z``.

    Returns
    -------
    dict
        ``rel_std`` (relative standard deviation per parameter), ``std`` (absolute), ``sensitivity`` (rad per unit
        log-change), ``correlation`` (matrix), ``condition`` (of ``J^T J``), ``residual_std`` (s), ``n_residuals``.
    """
    z = np.asarray(z, dtype=np.float64)
    r0 = problem.residuals(z)
    n_res, p = r0.size, z.size
    J = np.empty((n_res, p))
    for i in range(p):
        e = np.zeros(p)
        e[i] = step
        J[:, i] = (problem.residuals(z + e) - problem.residuals(z - e)) / (2 * step)
    JTJ = J.T @ J
    s2 = float(r0 @ r0) / max(n_res - p, 1)
    cov = s2 * np.linalg.pinv(JTJ)
    rel_std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    d = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    eig = np.linalg.eigvalsh(JTJ)
    return {
        "rel_std": rel_std,
        "std": rel_std * problem.values(z),
        "sensitivity": np.sqrt(np.diag(JTJ) / n_res),
        "correlation": cov / np.outer(d, d),
        "condition": float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf"),
        "residual_std": float(np.sqrt(s2)),
        "n_residuals": n_res,
    }
