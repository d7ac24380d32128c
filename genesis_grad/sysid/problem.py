"""
The identification loss: mean squared joint-position error of the multiple shooting windows, as a function of the
log-space parameter vector ``z`` (see ``parameters``), with and without its gradient.

``loss(z)`` runs the windows forward without a graph; ``loss_and_grad(z)`` runs them with the selected parameters as
tensors tracking gradients, through the stock setters made differentiable by issue 13, and back-propagates. The
counts: every simulated environment-step is one forward step, every reversed one a backward step (a backward step of
the Panda costs about 4 forward steps of wall-clock on CPU, see the README).
"""

from __future__ import annotations

import numpy as np

from .parameters import ParamSpec, from_z, z_bound
from .sim import SysIdSim
from .trajectory import Trajectory


class GradientUnavailable(RuntimeError):
    """The model parameters do not receive gradients: the differentiable parameter setters (issue 13) are missing."""

    def __init__(self, detail: str):
        super().__init__(
            f"the model parameters got no gradient ({detail}): this install lacks differentiable parameter setters "
            "(genesis_grad_patch.params, issue 13); use a gradient-free method (cma, nelder-mead)"
        )


class SysIdProblem:
    """
    The identification problem: a simulator, the windows of a trajectory and the selected parameters.

    Parameters
    ----------
    sim : SysIdSim
        Built with one environment per window.
    traj : Trajectory
    spec : ParamSpec
    window : int
        Steps per window.
    bound_ratio : float
        Each parameter is bounded to ``[nominal / ratio, nominal * ratio]``.

    Attributes
    ----------
    nominal : np.ndarray
        The model's values of the selected parameters (``z = 0``).
    bound : float
        ``|z| <= bound``.
    backward_steps : int
        Environment-steps reversed so far.
    """

    def __init__(self, sim: SysIdSim, traj: Trajectory, spec: ParamSpec, window: int, bound_ratio: float = 10.0):
        self.sim, self.traj, self.spec, self.window = sim, traj, spec, window
        self.windows = sim.windows(traj, window)
        self.nominal = spec.gather(sim.nominal)
        self.bound = z_bound(bound_ratio)
        self.groups = spec.groups()
        self.backward_steps = 0

    @property
    def forward_steps(self) -> int:
        return self.sim.forward_steps

    @property
    def total_steps(self) -> int:
        """Forward plus backward environment-steps."""
        return self.sim.forward_steps + self.backward_steps

    def values(self, z: np.ndarray) -> np.ndarray:
        """Parameter values of coordinates ``z``."""
        return from_z(np.asarray(z, dtype=np.float64), self.nominal)

    def simulate(self, z):
        """Simulated positions (B, W, n_dofs) for coordinates ``z`` (a tensor that may track gradients)."""
        import torch

        z = torch.as_tensor(z, dtype=torch.float64)
        values = from_z(z, self.nominal)
        params = {kind: (values[pos], dofs) for kind, (pos, dofs) in self.groups.items()}
        return self.sim.rollout(params, self.windows)

    def residuals(self, z) -> np.ndarray:
        """Simulated minus measured positions, flattened (no graph)."""
        import torch

        with torch.no_grad():
            return (self.simulate(z) - self.windows.q).reshape(-1).numpy()

    def loss(self, z) -> float:
        """Mean squared joint-position error over every window, step and dof (no graph)."""
        return float(np.mean(self.residuals(z) ** 2))

    def loss_and_grad(self, z) -> tuple[float, np.ndarray]:
        """
        The loss and its gradient with respect to ``z``, by back-propagation through the rollout.

        Raises
        ------
        GradientUnavailable
            When the parameters are not in the autograd graph (no issue-13 setters).
        """
        import torch

        zt = torch.tensor(np.asarray(z, dtype=np.float64), requires_grad=True)
        with torch.enable_grad():
            loss = ((self.simulate(zt) - self.windows.q) ** 2).mean()
            if not loss.requires_grad:
                raise GradientUnavailable("the loss does not depend on them in the graph")
            loss.backward()
        B, W = self.windows.shape
        self.backward_steps += B * W
        if not torch.is_tensor(zt.grad):
            raise GradientUnavailable("their .grad is None after backward")
        return float(loss.detach()), zt.grad.numpy().copy()
