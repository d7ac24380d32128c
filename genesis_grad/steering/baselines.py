"""
Baselines for the steering task.

- ``StanleyController``: the Stanley law (Thrun et al., 2006) on the front axle, with an optional curvature
  feed-forward;
- ``PurePursuitController``: pure pursuit from the rear axle with a speed-scaled lookahead;
- ``tune_gains`` (``tune_stanley``, ``tune_pure_pursuit``): grid searches of their gains on training references.

Evolution strategies (zeroth-order training of the same MLP) live in ``es``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .error_state import compute_error_state_torch, nearest_reference_index
from .evaluate import PathMetrics, mean_lateral_rms, run_paths
from .paths import ReferencePath, TorchReference
from .sim import FRONT_AXLE, STEER_LIMIT, WHEELBASE, Observation, SteeringSim


class StanleyController:
    """
    Stanley steering on the front axle (Thrun et al., 2006), with curvature feed-forward:

        delta = -k_heading * e_head - atan(k * e_lat_front / (k_soft + |v|))
                + ff * (atan(L * kappa(s + v * preview_time)) - atan(L * kappa(s)))
                + k_understeer * v^2 * kappa(s + v * preview_time)

    clipped to [-limit, limit]. ``e_lat_front`` and ``e_head`` are measured at the front axle against its own nearest
    reference point ``s``. Measured there, the heading error of a car turning on its path already carries the
    kinematic steady-state angle atan(L * kappa) (the path tangent at the front axle is ahead of the car's heading by
    about that much), so the feed-forward adds what that term misses: the change of the steady-state angle over the
    next ``preview_time`` seconds (the servo lags its command by ~0.1 s), and an understeer term proportional to the
    lateral acceleration (the tyres slip more at speed). With ``ff = k_understeer = 0`` it is plain Stanley. Every gain
    may be a scalar or a (B,) tensor (one setting per environment, for grid searches).
    """

    def __init__(
        self,
        reference: TorchReference,
        k=2.0,
        k_soft=0.5,
        k_heading=1.0,
        feedforward=0.0,
        preview_time=0.0,
        k_understeer=0.0,
        steer_limit: float = STEER_LIMIT,
    ):
        self.reference = reference
        as_t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        self.k, self.k_soft, self.k_heading, self.ff = as_t(k), as_t(k_soft), as_t(k_heading), as_t(feedforward)
        self.preview_time, self.k_understeer = as_t(preview_time), as_t(k_understeer)
        self.steer_limit = steer_limit

    def __call__(self, obs: Observation) -> torch.Tensor:
        c, s = torch.cos(obs.yaw), torch.sin(obs.yaw)
        fx, fy = obs.x + FRONT_AXLE * c, obs.y + FRONT_AXLE * s
        idx = nearest_reference_index(fx, fy, self.reference, prev_idx=obs.idx, window=(5, 40))
        e_lat, e_head, _ = compute_error_state_torch(fx, fy, obs.yaw, obs.speed, self.reference, idx)
        kappa = self.reference.at("curvature", idx)
        speed = obs.speed.abs()
        ahead = _index_ahead(self.reference, idx, speed * self.preview_time)
        kappa_ahead = self.reference.at("curvature", ahead)
        delta = (
            -self.k_heading * e_head
            - torch.atan(self.k * e_lat / (self.k_soft + speed))
            + self.ff * (torch.atan(WHEELBASE * kappa_ahead) - torch.atan(WHEELBASE * kappa))
            + self.k_understeer * speed**2 * kappa_ahead
        )
        return torch.clamp(delta, -self.steer_limit, self.steer_limit)


class PurePursuitController:
    """
    Pure pursuit (Coulter, 1992) from the rear axle: steer the kinematic bicycle onto the arc through the reference
    point ``lookahead = max(min_lookahead, lookahead_time * |v|)`` of arc length ahead of the rear axle's nearest
    point,

        delta = atan(2 L sin(alpha) / d),

    where ``alpha`` is the bearing of that point from the car's heading and ``d`` its distance from the rear axle;
    clipped to [-limit, limit]. Gains may be scalars or (B,) tensors.
    """

    def __init__(self, reference: TorchReference, lookahead_time=0.5, min_lookahead=0.5, steer_limit=STEER_LIMIT):
        self.reference = reference
        self.lookahead_time = torch.as_tensor(lookahead_time, dtype=torch.float64)
        self.min_lookahead = torch.as_tensor(min_lookahead, dtype=torch.float64)
        self.steer_limit = steer_limit

    def __call__(self, obs: Observation) -> torch.Tensor:
        c, s = torch.cos(obs.yaw), torch.sin(obs.yaw)
        rear = WHEELBASE - FRONT_AXLE  # the rear axle is this far behind the chassis origin
        rx, ry = obs.x - rear * c, obs.y - rear * s
        idx = nearest_reference_index(rx, ry, self.reference, prev_idx=obs.idx, window=(20, 40))
        lookahead = torch.maximum(self.min_lookahead.to(obs.speed), self.lookahead_time * obs.speed.abs())
        target = _index_ahead(self.reference, idx, lookahead)
        dx, dy = self.reference.at("pos_x", target) - rx, self.reference.at("pos_y", target) - ry
        dist = torch.clamp(torch.hypot(dx, dy), min=1e-3)
        alpha = torch.atan2(dy, dx) - obs.yaw
        delta = torch.atan(2.0 * WHEELBASE * torch.sin(alpha) / dist)
        return torch.clamp(delta, -self.steer_limit, self.steer_limit)


def _index_ahead(reference: TorchReference, idx: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Per-environment index of the first reference sample ``distance`` (B,) of arc length ahead of ``idx`` (B,)."""
    target = (reference.at("s", idx) + distance.to(reference["s"])).contiguous()
    ahead = torch.searchsorted(reference["s"], target[:, None])[:, 0]
    return torch.minimum(ahead, reference.n - 1)


@dataclass
class StanleyGains:
    """Gains of ``StanleyController``, with the provenance of a tuned set."""

    k: float
    k_soft: float
    k_heading: float
    feedforward: float = 0.0
    preview_time: float = 0.0
    k_understeer: float = 0.0

    def controller(self, reference: TorchReference) -> StanleyController:
        return StanleyController(reference, **vars(self))


@dataclass
class PurePursuitGains:
    """Gains of ``PurePursuitController``."""

    lookahead_time: float
    min_lookahead: float

    def controller(self, reference: TorchReference) -> PurePursuitController:
        return PurePursuitController(reference, **vars(self))


# The plain-Stanley grid keeps the feed-forward off; STANLEY_FF_GRID tunes it. Equal effort: both tuned controllers of
# the speed-range benchmark (STANLEY_FF_GRID, PURE_PURSUIT_GRID) get 36 gain sets on the same tuning references.
DEFAULT_GRID = {
    "k": (0.25, 0.5, 1.0, 2.0, 4.0),
    "k_soft": (0.1, 0.5, 1.5),
    "k_heading": (0.7, 1.0, 1.4),
    "feedforward": (0.0,),
}
SMALL_GRID = {"k": (0.5, 1.0, 2.0), "k_soft": (0.5,), "k_heading": (1.0,), "feedforward": (0.0,)}
STANLEY_FF_GRID = {
    "k": (1.0, 2.0, 4.0),
    "k_soft": (0.5,),
    "k_heading": (0.5, 0.75, 1.0),
    "feedforward": (1.0,),
    "preview_time": (0.1, 0.2),
    "k_understeer": (0.01, 0.03),
}
PURE_PURSUIT_GRID = {
    "lookahead_time": (0.1, 0.15, 0.2, 0.3, 0.4, 0.6),
    "min_lookahead": (0.15, 0.2, 0.3, 0.45, 0.6, 0.8),
}


# The tuned classical controllers the benchmark and the demo compare with: label -> (gains class, controller class,
# grid), each grid of 36 gain sets.
TUNED = {
    "Stanley-FF": (StanleyGains, StanleyController, STANLEY_FF_GRID),
    "pure pursuit": (PurePursuitGains, PurePursuitController, PURE_PURSUIT_GRID),
}


def tune_gains(
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    gains_class: type,
    controller_class: type,
    grid: dict[str, Sequence[float]],
    progress: bool = False,
) -> tuple[object, list[tuple[object, float]]]:
    """
    Grid search of a controller's gains on ``paths``: every combination drives every path once (batched, one run per
    environment) and the one with the lowest mean lateral RMS (incomplete runs penalized, see
    ``evaluate.mean_lateral_rms``) wins. Returns the best gains and the (gains, score) of every combination.
    """
    names = list(grid)
    combos = [gains_class(**dict(zip(names, values, strict=True))) for values in itertools.product(*grid.values())]
    runs = [(c, p) for c in combos for p in paths]

    def make(reference, run_idx):
        g = [runs[i][0] for i in run_idx]
        return controller_class(reference, **{name: [getattr(x, name) for x in g] for name in names})

    desc = f"tune {controller_class.__name__} ({len(combos)} gain sets x {len(paths)} paths)" if progress else None
    metrics, _ = run_paths(sim, [p for _, p in runs], make, progress=desc)
    scores = []
    for i, combo in enumerate(combos):
        scores.append((combo, mean_lateral_rms(metrics[i * len(paths) : (i + 1) * len(paths)])))
    best = min(scores, key=lambda cs: cs[1] if math.isfinite(cs[1]) else math.inf)[0]
    return best, scores


def tune_stanley(
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    grid: dict[str, Sequence[float]] | None = None,
    progress: bool = False,
) -> tuple[StanleyGains, list[tuple[StanleyGains, float]]]:
    """``tune_gains`` of the Stanley controller (``DEFAULT_GRID`` by default)."""
    return tune_gains(sim, paths, StanleyGains, StanleyController, grid or DEFAULT_GRID, progress)


def tune_pure_pursuit(
    sim: SteeringSim, paths: Sequence[ReferencePath], grid: dict[str, Sequence[float]] | None = None
) -> tuple[PurePursuitGains, list[tuple[PurePursuitGains, float]]]:
    """``tune_gains`` of the pure-pursuit controller (``PURE_PURSUIT_GRID`` by default)."""
    return tune_gains(sim, paths, PurePursuitGains, PurePursuitController, grid or PURE_PURSUIT_GRID)


def evaluate_stanley(sim: SteeringSim, gains: StanleyGains | PurePursuitGains, paths: Sequence[ReferencePath]):
    """Closed-loop runs of ``paths`` with the given gains (any controller's); returns (metrics, records) as
    ``run_paths``."""
    return run_paths(sim, paths, lambda reference, run_idx: gains.controller(reference))


__all__ = [
    "TUNED",
    "PURE_PURSUIT_GRID",
    "STANLEY_FF_GRID",
    "PurePursuitController",
    "PurePursuitGains",
    "tune_gains",
    "tune_pure_pursuit",
    "DEFAULT_GRID",
    "SMALL_GRID",
    "PathMetrics",
    "StanleyController",
    "StanleyGains",
    "evaluate_stanley",
    "tune_stanley",
]
