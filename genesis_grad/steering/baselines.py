"""
Baselines for the steering task.

- ``StanleyController``: the Stanley law (Thrun et al., 2006) on the front axle, with an optional curvature
  feed-forward, and ``tune_stanley``, a small grid search of its gains on the training paths.
- ``train_es``: zeroth-order training of the same MLP with antithetic evolution strategies (OpenAI-ES with Adam), on
  the same windows, loss and budget of simulated env-steps as the gradient trainer, for the steps-to-accuracy
  comparison.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .error_state import TorchReference, compute_error_state_torch, nearest_reference_index
from .evaluate import PathMetrics, mean_lateral_rms, run_paths
from .paths import ReferencePath
from .sim import FRONT_AXLE, STEER_LIMIT, WHEELBASE, Observation, SteeringSim


class StanleyController:
    """
    Stanley steering on the front axle:

        delta = -k_heading * e_head - atan(k * e_lat_front / (k_soft + |v|)) + ff * atan(L * kappa_ref)

    clipped to [-limit, limit]. ``e_lat_front`` and ``e_head`` are measured at the front axle against its own nearest
    reference point. Every gain may be a scalar or a (B,) tensor (one setting per environment, for grid searches).
    """

    def __init__(
        self,
        reference: TorchReference,
        k=2.0,
        k_soft=0.5,
        k_heading=1.0,
        feedforward=0.0,
        steer_limit: float = STEER_LIMIT,
    ):
        self.reference = reference
        as_t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        self.k, self.k_soft, self.k_heading, self.ff = as_t(k), as_t(k_soft), as_t(k_heading), as_t(feedforward)
        self.steer_limit = steer_limit

    def __call__(self, obs: Observation) -> torch.Tensor:
        c, s = torch.cos(obs.yaw), torch.sin(obs.yaw)
        fx, fy = obs.x + FRONT_AXLE * c, obs.y + FRONT_AXLE * s
        idx = nearest_reference_index(fx, fy, self.reference, prev_idx=obs.idx, window=(5, 40))
        e_lat, e_head, _ = compute_error_state_torch(fx, fy, obs.yaw, obs.speed, self.reference, idx)
        kappa = self.reference.at("curvature", idx)
        delta = (
            -self.k_heading * e_head
            - torch.atan(self.k * e_lat / (self.k_soft + obs.speed.abs()))
            + self.ff * torch.atan(WHEELBASE * kappa)
        )
        return torch.clamp(delta, -self.steer_limit, self.steer_limit)


@dataclass
class StanleyGains:
    k: float
    k_soft: float
    k_heading: float
    feedforward: float

    def controller(self, reference: TorchReference) -> StanleyController:
        return StanleyController(reference, self.k, self.k_soft, self.k_heading, self.feedforward)


# The curvature feed-forward is off in the grids: measured at the front axle, the heading error of a car turning on
# its path already carries the steady-state angle (the path tangent there is ahead of the car's heading by about
# L * kappa), so adding atan(L * kappa) counts it twice (mean lateral RMS 0.18 m vs 0.013 m with it off, k = 1).
DEFAULT_GRID = {
    "k": (0.25, 0.5, 1.0, 2.0, 4.0),
    "k_soft": (0.1, 0.5, 1.5),
    "k_heading": (0.7, 1.0, 1.4),
    "feedforward": (0.0,),
}
SMALL_GRID = {"k": (0.5, 1.0, 2.0), "k_soft": (0.5,), "k_heading": (1.0,), "feedforward": (0.0,)}


def tune_stanley(
    sim: SteeringSim, paths: Sequence[ReferencePath], grid: dict[str, Sequence[float]] | None = None
) -> tuple[StanleyGains, list[tuple[StanleyGains, float]]]:
    """
    Grid search of the Stanley gains on ``paths``: every combination drives every path once (batched, one run per
    environment) and the one with the lowest mean lateral RMS (incomplete runs penalized, see
    ``evaluate.mean_lateral_rms``) wins. Returns the best gains and the (gains, score) of every combination.
    """
    grid = grid or DEFAULT_GRID
    combos = [StanleyGains(*values) for values in itertools.product(*(grid[k] for k in StanleyGains.__annotations__))]
    runs = [(c, p) for c in combos for p in paths]

    def make(reference, run_idx):
        g = [runs[i][0] for i in run_idx]
        return StanleyController(
            reference,
            k=[x.k for x in g],
            k_soft=[x.k_soft for x in g],
            k_heading=[x.k_heading for x in g],
            feedforward=[x.feedforward for x in g],
        )

    metrics, _ = run_paths(sim, [p for _, p in runs], make)
    scores = []
    for i, combo in enumerate(combos):
        scores.append((combo, mean_lateral_rms(metrics[i * len(paths) : (i + 1) * len(paths)])))
    best = min(scores, key=lambda cs: cs[1] if math.isfinite(cs[1]) else math.inf)[0]
    return best, scores


def evaluate_stanley(sim: SteeringSim, gains: StanleyGains, paths: Sequence[ReferencePath]):
    """Closed-loop runs of ``paths`` with the given gains; returns (metrics, records) as ``run_paths``."""
    return run_paths(sim, paths, lambda reference, run_idx: gains.controller(reference))


# ------------------------------------------------------------------ evolution strategies


@dataclass
class ESConfig:
    """Settings of the antithetic ES baseline (see ``train_es``)."""

    population: int = 8  # antithetic pairs per iteration -> 2 * population perturbed networks
    sigma: float = 0.02  # perturbation scale in parameter space
    lr: float = 1e-2  # Adam step on the ES gradient estimate
    starts_per_member: int = 1  # start states each member is scored on (shared across members: common random numbers)


def train_es(
    policy,
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    env_step_budget: int,
    train_config=None,
    es_config: ESConfig | None = None,
    eval_every_env_steps: int | None = None,
    eval_fn=None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """
    Zeroth-order training of ``policy`` (in place) with antithetic evolution strategies, counting simulated env-steps.

    Each iteration perturbs the flat parameter vector with ``population`` antithetic pairs of Gaussian noise, scores
    every perturbed network with the gradient trainer's window loss (``train.window_loss``) from the same sampled start
    states (common random numbers), and steps Adam along the rank-free antithetic estimate
    ``g = sum_i (L(theta + sigma eps_i) - L(theta - sigma eps_i)) eps_i / (2 sigma n)``. All 2 * population *
    starts_per_member rollouts of an iteration run in the batched scene at once (``sim.n_envs`` must be a multiple of
    2 * population * starts_per_member's divisor; extra environments repeat members and are ignored).

    Returns a history dict with ``env_steps``, ``loss`` and, if ``eval_fn`` is given, ``eval_env_steps`` and
    ``lateral_rms`` (``eval_fn(policy) -> float`` called every ``eval_every_env_steps``).
    """
    from .train import TrainConfig, sample_window_starts, window_loss

    cfg = train_config or TrainConfig()
    es = es_config or ESConfig()
    n_members = 2 * es.population
    runs_per_iter = n_members * es.starts_per_member
    if runs_per_iter > sim.n_envs:
        raise ValueError(f"ES needs {runs_per_iter} environments per iteration, the scene has {sim.n_envs}.")
    gen = torch.Generator().manual_seed(seed)
    theta = policy.flat_parameters()
    adam_m, adam_v = torch.zeros_like(theta), torch.zeros_like(theta)
    b1, b2, eps_adam = 0.9, 0.999, 1e-8
    history = {"env_steps": [], "loss": [], "eval_env_steps": [], "lateral_rms": [], "wall_clock": []}
    steps_at_start = sim.env_steps
    eval_steps = 0  # simulated by the evaluations: not training steps, excluded from the count

    def used() -> int:
        return sim.env_steps - steps_at_start - eval_steps

    def run_eval() -> None:
        nonlocal eval_steps
        before = sim.env_steps
        policy.load_flat_parameters(theta)
        history["eval_env_steps"].append(used())
        history["lateral_rms"].append(eval_fn(policy))
        eval_steps += sim.env_steps - before

    next_eval = 0
    t0 = time.time()
    bar = _progress(env_step_budget, progress, "ES")
    it = 0
    while used() < env_step_budget:
        if eval_fn is not None and used() >= next_eval:
            run_eval()
            next_eval += eval_every_env_steps or env_step_budget
        it += 1
        noise = torch.randn(es.population, theta.numel(), generator=gen, dtype=theta.dtype)
        members = torch.cat([theta + es.sigma * noise, theta - es.sigma * noise])  # (2P, D)
        # Environment b runs member b % n_members from start state b // n_members (shared by all members).
        group = torch.arange(sim.n_envs) % n_members
        start_group = torch.clamp(torch.arange(sim.n_envs) // n_members, max=es.starts_per_member - 1)
        reference, start = sample_window_starts(paths, sim.n_envs, gen, cfg, share=start_group)
        with torch.no_grad():
            traj = sim.rollout(
                reference,
                lambda obs, members=members, group=group: policy.forward_population(obs, members, group),
                start,
                cfg.horizon,
                preview_distances=policy.preview_distances,
            )
            per_env = window_loss(traj, cfg, reduce=False)  # (B,)
        valid = torch.arange(sim.n_envs) < runs_per_iter
        member_loss = torch.zeros(n_members, dtype=theta.dtype).index_add_(0, group[valid], per_env[valid])
        member_loss /= es.starts_per_member
        diff = member_loss[: es.population] - member_loss[es.population :]
        grad = (diff[:, None] * noise).sum(0) / (2.0 * es.sigma * es.population)
        adam_m = b1 * adam_m + (1 - b1) * grad
        adam_v = b2 * adam_v + (1 - b2) * grad**2
        step = es.lr * (adam_m / (1 - b1**it)) / (torch.sqrt(adam_v / (1 - b2**it)) + eps_adam)
        theta = theta - step
        loss = float(member_loss.mean())
        history["env_steps"].append(used())
        history["loss"].append(loss)
        history["wall_clock"].append(time.time() - t0)
        if bar is not None:
            bar.update(sim.n_envs * cfg.horizon)
            bar.set_postfix(loss=f"{loss:.4g}")
    if eval_fn is not None:
        run_eval()
    policy.load_flat_parameters(theta)
    if bar is not None:
        bar.close()
    return history


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="env-step", dynamic_ncols=True)


__all__ = [
    "DEFAULT_GRID",
    "SMALL_GRID",
    "ESConfig",
    "PathMetrics",
    "StanleyController",
    "StanleyGains",
    "evaluate_stanley",
    "train_es",
    "tune_stanley",
]
