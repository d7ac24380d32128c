"""
The steering policy: an MLP from the error state (plus a preview of the reference curvature and the servo state) to a
steering command in [-limit, limit].

Inputs, each scaled to O(1) by fixed constants (no learned normalization, so a checkpoint is self-contained):

- ``e_lat``, ``e_head``, ``e_speed``: the error state of the users' script;
- ``speed``: the lateral dynamics depend on it (the same error needs less steering when driving faster);
- ``steer``: the current wheel angle, which lags the command by the servo's ~0.1 s time constant;
- the reference curvature at ``preview_distances`` ahead (``()`` for none): meant to let the policy turn in before an
  error builds up. Measured (``benchmarks/steering_ablation.py``, README), it does not pay off on the built-in paths:
  without it the MLP tracks as well or slightly better, as the error state, speed and wheel angle already suffice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .sim import STEER_LIMIT, WHEELBASE, Observation

DEFAULT_PREVIEW = (0.0, 0.5, 1.0, 1.5, 2.0)

# Fixed input scales: errors of these sizes map to O(1) features.
_LAT_SCALE, _HEAD_SCALE, _SPEED_SCALE = 0.5, 0.5, 2.0


class SteeringMLP(nn.Module):
    """
    MLP steering controller, ``steer = limit * tanh(net(features))``.

    Parameters
    ----------
    preview_distances : sequence of float
        Distances (m) ahead of the nearest reference point at which the curvature is fed to the network.
    hidden : sequence of int
        Hidden layer widths (tanh activations).
    steer_limit : float
        Output bound (rad).
    """

    def __init__(
        self,
        preview_distances: Sequence[float] = DEFAULT_PREVIEW,
        hidden: Sequence[int] = (64, 64),
        steer_limit: float = STEER_LIMIT,
    ):
        super().__init__()
        self.preview_distances = tuple(float(d) for d in preview_distances)
        self.hidden = tuple(int(h) for h in hidden)
        self.steer_limit = float(steer_limit)
        sizes = (self.n_features, *self.hidden, 1)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers).double()
        # Start from (almost) "steer straight": a small last layer keeps the first rollouts tame and the tanh unsaturated.
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()

    @property
    def n_features(self) -> int:
        return 5 + len(self.preview_distances)

    def config(self) -> dict:
        """Constructor arguments, stored in checkpoints."""
        return {"preview_distances": self.preview_distances, "hidden": self.hidden, "steer_limit": self.steer_limit}

    def features(self, obs: Observation) -> torch.Tensor:
        """(B, F) scaled input features of an observation."""
        # Curvature times wheelbase is the steady-state steering angle the curve needs (kinematic bicycle, small angle).
        curv = obs.preview_curvature * (WHEELBASE / self.steer_limit)
        base = torch.stack(
            [
                obs.e_lat / _LAT_SCALE,
                obs.e_head / _HEAD_SCALE,
                obs.e_speed / _SPEED_SCALE,
                obs.speed / _SPEED_SCALE,
                obs.steer / self.steer_limit,
            ],
            dim=1,
        )
        return torch.cat([base, curv.to(base)], dim=1)

    def forward(self, obs: Observation) -> torch.Tensor:
        """Steering command (B,) in [-limit, limit]."""
        return self.steer_limit * torch.tanh(self.net(self.features(obs))[:, 0])

    # -------------------------------------------------- population forward (zeroth-order training)

    def flat_parameters(self) -> torch.Tensor:
        """All parameters as one detached vector."""
        return torch.nn.utils.parameters_to_vector(self.parameters()).detach().clone()

    def load_flat_parameters(self, flat: torch.Tensor) -> None:
        torch.nn.utils.vector_to_parameters(flat.detach().to(next(self.parameters())), self.parameters())

    def forward_population(self, obs: Observation, flat_params: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """
        Steering of a population of parameter vectors at once: environment ``b`` uses ``flat_params[group[b]]``.

        Used by the evolution-strategies baseline to evaluate many perturbed networks in one batched rollout.
        """
        x = self.features(obs)
        params = flat_params[group]  # (B, D)
        offset = 0
        h = x[:, :, None]  # (B, F, 1)
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            n_out, n_in = lin.weight.shape
            w = params[:, offset : offset + n_out * n_in].reshape(-1, n_out, n_in)
            offset += n_out * n_in
            b = params[:, offset : offset + n_out, None]
            offset += n_out
            h = torch.baddbmm(b, w, h)
            if i < len(linears) - 1:
                h = torch.tanh(h)
        return self.steer_limit * torch.tanh(h[:, 0, 0])


def save_policy(policy: SteeringMLP, path, **extra) -> None:
    """Save a policy checkpoint (state dict + constructor config + any extra metadata)."""
    torch.save({"config": policy.config(), "state_dict": policy.state_dict(), **extra}, path)


def load_policy(path) -> tuple[SteeringMLP, dict]:
    """Load a checkpoint written by ``save_policy`` (or by the trainer); returns the policy and the whole record."""
    record = torch.load(path, map_location="cpu", weights_only=False)
    policy = SteeringMLP(**record["config"])
    policy.load_state_dict(record["state_dict"])
    return policy, record
