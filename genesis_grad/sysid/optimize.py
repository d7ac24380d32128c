"""
The fitting methods, all on the same ``SysIdProblem`` (same simulator, same loss, same log-space bounds):

- ``adam``: ``torch.optim.Adam`` on back-propagated gradients, projected on the bounds, cosine learning-rate decay;
- ``lbfgs``: ``torch.optim.LBFGS`` with a strong-Wolfe line search on the same gradients;
- ``lm``: Levenberg-Marquardt (Gauss-Newton with an adaptive damping) on the exact back-propagated gradient and a
  sketch of the Gauss-Newton matrix ``J^T J`` from reverse passes (below);
- ``cma``: CMA-ES (the ``cma`` package), gradient-free;
- ``nelder-mead``: ``scipy.optimize.minimize(method="Nelder-Mead")`` (adaptive, bounded), gradient-free.

The Jacobian ``J`` of the residuals (N = windows x steps x dofs rows, p columns) is not affordable row by row in reverse
mode (one reverse pass per row), and Genesis differentiates its step in reverse mode only (forward mode would cost one
pass per column). ``lm`` sketches it instead: in a scene with one parameter copy per window, one reverse pass with a
random sign vector ``u`` on the residuals gives ``u_b^T J_b`` for every window ``b`` at once, and
``E[(u^T J_b)^T (u^T J_b)] = J_b^T J_b``, so the average of such rows over a few passes is an unbiased ``J^T J`` that
matches the true one in relative terms along every direction, within a factor that depends on the number of rows, not on
the conditioning (a "Newton sketch"). That is what makes Gauss-Newton worth its extra passes here: the loss is badly
conditioned (a joint damping of ~1 next to a velocity gain of ~450), which first-order methods crawl through. The rows
of the last ``memory`` iterations are kept (the Jacobian changes little between accepted steps), so that each iteration
pays for ``probes`` sketch passes only. The step uses the exact gradient; a trial point whose loss does not decrease
costs its forward pass only.

Every method stops at its iteration count, at a budget of simulated steps (forward + backward environment-steps) or
when the loss reaches a target, and records its best loss against the simulated steps and the wall-clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import NotIdentifiable
from .problem import SysIdProblem

METHODS = ("lm", "adam", "lbfgs", "cma", "nelder-mead")
GRADIENT_METHODS = ("lm", "adam", "lbfgs")


class _Stop(Exception):
    """Raised by ``Tracker`` inside an optimizer's loop when the budget or the target is reached."""


@dataclass
class FitResult:
    """
    Outcome of a fit.

    Attributes
    ----------
    method : str
    z : np.ndarray
        Best coordinates found (log of value / nominal).
    values : np.ndarray
        Best parameter values.
    loss : float
        Loss at ``z``.
    history : dict
        ``steps`` (forward + backward environment-steps), ``forward_steps``, ``wall`` (s) and ``loss`` (best so far),
        one entry per loss evaluation.
    stop_reason : str
    """

    method: str
    z: np.ndarray
    values: np.ndarray
    loss: float
    history: dict = field(default_factory=dict)
    stop_reason: str = ""
    z_history: list = field(default_factory=list, repr=False)

    @property
    def converged(self) -> bool:
        """Whether the method stopped on its own criterion, not on the budget it was given (iterations, steps): the
        tracker's reasons, CMA-ES's `maxiter`, scipy's "Maximum number of ..."."""
        reason = self.stop_reason
        return not (reason in ("iterations", "step budget") or "maxiter" in reason or "Maximum number" in reason)

    def steps_to(self, target: float) -> tuple[int | None, float | None]:
        """(simulated steps, wall-clock) at which the best loss first reached ``target``, or (None, None)."""
        for steps, wall, loss in zip(self.history["steps"], self.history["wall"], self.history["loss"], strict=True):
            if loss <= target:
                return steps, wall
        return None, None


class Tracker:
    """Counts and records every evaluation of the problem, keeps the best point, and stops at the budget or target."""

    def __init__(
        self, problem: SysIdProblem, max_steps: int | None, target_loss: float | None, progress: bool, desc: str
    ):
        self.problem, self.max_steps, self.target_loss = problem, max_steps, target_loss
        self.steps0, self.fwd0 = problem.total_steps, problem.forward_steps
        self.t0 = time.perf_counter()
        self.best_loss, self.best_z = math.inf, None
        self.history = {"steps": [], "forward_steps": [], "wall": [], "loss": []}
        self.stop_reason = "iterations"
        self.z_history: list = []  # best point after each evaluation (for benchmarks; not in the JSON report)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, desc=desc, unit="step", dynamic_ncols=True)

    @property
    def steps(self) -> int:
        return self.problem.total_steps - self.steps0

    def _check_budget(self) -> None:
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.stop_reason = "step budget"
            raise _Stop

    def _record(self, z: np.ndarray, loss: float) -> None:
        if not math.isfinite(loss):
            loss = math.inf
        if loss < self.best_loss:
            self.best_loss, self.best_z = loss, np.array(z, dtype=np.float64)
        self.history["steps"].append(self.steps)
        self.history["forward_steps"].append(self.problem.forward_steps - self.fwd0)
        self.history["wall"].append(time.perf_counter() - self.t0)
        self.history["loss"].append(self.best_loss)
        self.z_history.append(self.best_z)
        if self.bar is not None:
            self.bar.n = min(self.steps, self.max_steps) if self.max_steps else self.steps
            self.bar.set_postfix(loss=f"{self.best_loss:.3e}", refresh=False)
            self.bar.refresh()
        if self.target_loss is not None and self.best_loss <= self.target_loss:
            self.stop_reason = "target loss"
            raise _Stop

    def loss(self, z: np.ndarray) -> float:
        self._check_budget()
        value = self.problem.loss(z)
        self._record(z, value)
        return value

    def loss_and_grad(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        self._check_budget()
        value, grad = self.problem.loss_and_grad(z)
        self._record(z, value)
        return value, grad

    def window_vjp(self, z: np.ndarray, vector=None, keep=None) -> tuple[float, np.ndarray | None]:
        self._check_budget()
        value, rows = self.problem.window_vjp(z, vector, keep)
        self._record(z, value)
        return value, rows

    def result(self, method: str) -> FitResult:
        if self.bar is not None:
            self.bar.close()
        z = self.best_z if self.best_z is not None else np.zeros(len(self.problem.spec))
        return FitResult(
            method, z, self.problem.values(z), self.best_loss, self.history, self.stop_reason, self.z_history
        )


def fit(
    problem: SysIdProblem,
    method: str = "adam",
    iterations: int = 200,
    max_steps: int | None = None,
    target_loss: float | None = None,
    lr: float = 0.05,
    sigma0: float = 0.2,
    seed: int = 0,
    z0: np.ndarray | None = None,
    progress: bool = True,
    probes: int = 1,
    memory: int | None = None,
) -> FitResult:
    """
    Fit the selected parameters with ``method`` (one of ``METHODS``), starting from ``z0`` (the model's values).

    Parameters
    ----------
    iterations : int
        Accepted steps (lm), gradient steps (adam), outer iterations of at most 20 evaluations each (lbfgs),
        generations (cma) or function evaluations (nelder-mead).
    max_steps : int, optional
        Budget of simulated environment-steps, forward + backward.
    target_loss : float, optional
        Stop as soon as the loss is at or below it.
    lr : float
        Adam's initial learning rate, in log-space units (0.05: a 5% change per step).
    sigma0 : float
        Initial spread of CMA-ES and the initial simplex size of Nelder-Mead, in log-space units.
    probes, memory : int
        Sketch passes per iteration of ``lm``, and the number of iterations whose sketch rows it keeps (default: enough
        for 4 rows per parameter, at least 4).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    n = len(problem.spec)
    b = problem.bound
    z0 = np.zeros(n) if z0 is None else np.clip(np.asarray(z0, dtype=np.float64), -b, b)
    tracker = Tracker(problem, max_steps, target_loss, progress, desc=f"sysid {method}")
    try:
        if method == "lm":
            _levenberg_marquardt(tracker, z0, iterations, b, probes, memory, seed)
        elif method == "adam":
            _adam(tracker, z0, iterations, lr, b)
        elif method == "lbfgs":
            _lbfgs(tracker, z0, iterations, b)
        elif method == "cma":
            _cma(tracker, z0, iterations, sigma0, b, seed)
        else:
            _nelder_mead(tracker, z0, iterations, sigma0, b)
    except _Stop:
        pass
    return tracker.result(method)


def _levenberg_marquardt(
    tracker: Tracker, z0: np.ndarray, iterations: int, b: float, probes: int, memory: int | None, seed: int
) -> None:
    from collections import deque

    from scipy.linalg import solve

    rng = np.random.default_rng(seed)
    B, W = tracker.problem.windows.shape
    n_dofs = tracker.problem.windows.q.shape[2]
    z = z0.copy()
    loss, rows = tracker.window_vjp(z)
    g = rows.sum(axis=0)  # J^T r
    n_res, p = B * W * n_dofs, len(z0)
    # A pass gives B rows; a sketch of m rows matches the spectrum of J^T J within a factor ~ (1 +- sqrt(p / m)).
    memory = max(4, math.ceil(4 * p / (B * probes))) if memory is None else memory
    sketches: deque = deque(maxlen=probes * memory)
    lam, nu = 1e-3, 2.0
    for it in range(iterations):
        # The first iteration starts with p rows at least, so that its step is not confined to a subspace.
        for _ in range(max(probes, math.ceil(p / B)) if it == 0 else probes):
            sketches.append(tracker.window_vjp(z, rng.choice((-1.0, 1.0), size=(B, W, n_dofs)))[1])
        H = sum(R.T @ R for R in sketches) / len(sketches)
        if it == 0:
            _refuse_flat_directions(tracker.problem, np.diag(H))
        scale = np.maximum(np.diag(H), 1e-30 * max(np.diag(H).max(), 1e-300))  # Marquardt's scaling
        while True:
            delta = solve(H + lam * np.diag(scale), -g, assume_a="pos")
            z_new = np.clip(z + delta, -b, b)
            delta = z_new - z
            predicted = -(2.0 * delta @ g + delta @ H @ delta) / n_res  # decrease of the loss if r were linear
            new_loss, new_rows = tracker.window_vjp(z_new, keep=lambda value, best=loss: value < best)
            if new_rows is not None:
                rho = (loss - new_loss) / predicted if predicted > 0 else 1.0
                lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
                z, loss, g = z_new, new_loss, new_rows.sum(axis=0)
                if np.abs(delta).max() < 1e-12:  # relative parameter change: at the precision of float64 rollouts
                    tracker.stop_reason = "lm: converged (step below 1e-12)"
                    return
                break
            lam *= nu
            nu *= 2.0
            if lam > 1e16:  # no decrease along any damped direction: converged to the precision of the loss
                tracker.stop_reason = "lm: no further decrease"
                return


def _refuse_flat_directions(problem, curvature: np.ndarray) -> None:
    """A parameter whose change moves no simulated joint at all (a trajectory that never moves, a joint held still)
    gives a singular system: say which, in one line, instead of the linear algebra's error."""
    flat = [label for label, c in zip(problem.spec.labels, curvature, strict=True) if not c > 0.0]
    if flat:
        raise NotIdentifiable(
            f"not identifiable from this trajectory: {', '.join(flat)} do(es) not change the simulated motion at all "
            "(the joints do not move, or not in a way these parameters act on); record a trajectory that excites them"
        )


def _adam(tracker: Tracker, z0: np.ndarray, iterations: int, lr: float, b: float) -> None:
    import torch

    z = torch.tensor(z0, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)
    # Cosine decay: large steps to cross the basin, small ones to settle within the 1% the issue asks for.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1), eta_min=lr * 1e-3)
    for _ in range(iterations):
        _, grad = tracker.loss_and_grad(z.detach().numpy())
        z.grad = torch.from_numpy(grad)
        opt.step()
        sched.step()
        with torch.no_grad():
            z.clamp_(-b, b)
    tracker.loss(z.detach().numpy())


def _lbfgs(tracker: Tracker, z0: np.ndarray, iterations: int, b: float) -> None:
    import torch

    z = torch.tensor(z0, requires_grad=True)
    opt = torch.optim.LBFGS(
        [z],
        lr=1.0,
        max_iter=20,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )

    def closure():
        opt.zero_grad()
        # Evaluate at the projection on the bounds; the gradient of a coordinate held at a bound pointing outwards
        # is dropped, so that the line search does not push further out.
        zc = z.detach().clamp(-b, b)
        loss, grad = tracker.loss_and_grad(zc.numpy())
        grad = torch.from_numpy(grad)
        grad[((zc <= -b) & (grad > 0)) | ((zc >= b) & (grad < 0))] = 0.0
        z.grad = grad
        return torch.tensor(loss, dtype=torch.float64)

    for _ in range(iterations):
        opt.step(closure)
        with torch.no_grad():
            z.clamp_(-b, b)


def _cma(tracker: Tracker, z0: np.ndarray, iterations: int, sigma0: float, b: float, seed: int) -> None:
    import cma

    options = {"bounds": [-b, b], "seed": seed + 1, "verbose": -9, "tolfun": 0.0, "tolx": 1e-14, "maxiter": iterations}
    es = cma.CMAEvolutionStrategy(list(z0), sigma0, options)
    while not es.stop():
        candidates = es.ask()
        es.tell(candidates, [tracker.loss(np.asarray(c)) for c in candidates])
    tracker.stop_reason = "cma: " + ", ".join(es.stop())


def _nelder_mead(tracker: Tracker, z0: np.ndarray, iterations: int, sigma0: float, b: float) -> None:
    from scipy.optimize import minimize

    n = len(z0)
    # scipy's default simplex moves a zero coordinate by 0.00025 only: start it as large as CMA-ES's spread.
    simplex = np.vstack([z0, z0 + sigma0 * np.eye(n)]).clip(-b, b)
    res = minimize(
        tracker.loss,
        z0,
        method="Nelder-Mead",
        bounds=[(-b, b)] * n,
        options={"maxfev": iterations, "initial_simplex": simplex, "adaptive": True, "xatol": 1e-12, "fatol": 0.0},
    )
    tracker.stop_reason = "nelder-mead: " + str(res.message)
