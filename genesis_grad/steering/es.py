"""
Evolution strategies: zeroth-order training of the steering MLP, the baseline of the steps-to-accuracy comparison.

Antithetic OpenAI-ES with Adam, on the same windows, loss and budget of simulated env-steps as the gradient trainer,
and through the same loop (``train.run_training_loop``): only the iteration differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .paths import ReferencePath
from .policy import SteeringMLP
from .sim import SteeringSim
from .train import TrainConfig, TrainingHistory, run_training_loop, sample_window_starts, window_loss


@dataclass
class ESConfig:
    """Settings of the antithetic ES baseline (see ``train_es``)."""

    population: int = 8  # antithetic pairs per iteration -> 2 * population perturbed networks
    sigma: float = 0.02  # perturbation scale in parameter space
    lr: float = 1e-2  # Adam step on the ES gradient estimate
    starts_per_member: int = 1  # start states each member is scored on (shared across members: common random numbers)


def train_es(
    policy: SteeringMLP,
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    env_step_budget: int,
    train_config: TrainConfig | None = None,
    es_config: ESConfig | None = None,
    eval_every_env_steps: int | None = None,
    eval_fn: Callable[[SteeringMLP], float] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainingHistory:
    """
    Zeroth-order training of ``policy`` (in place) with antithetic evolution strategies, counting simulated env-steps.

    Each iteration perturbs the flat parameter vector with ``population`` antithetic pairs of Gaussian noise, scores
    every perturbed network with the gradient trainer's window loss (``train.window_loss``) from the same sampled start
    states (common random numbers), and steps Adam along the rank-free antithetic estimate
    ``g = sum_i (L(theta + sigma eps_i) - L(theta - sigma eps_i)) eps_i / (2 sigma n)``. All 2 * population *
    starts_per_member rollouts of an iteration run in the batched scene at once (``sim.n_envs`` must be at least
    that; extra environments repeat members and are ignored).

    Returns a ``TrainingHistory``; with ``eval_fn(policy) -> float``, its ``eval_env_steps`` / ``eval_lateral_rms``
    every ``eval_every_env_steps``.
    """
    cfg = train_config or TrainConfig()
    es = es_config or ESConfig()
    n_members = 2 * es.population
    runs_per_iter = n_members * es.starts_per_member
    if runs_per_iter > sim.n_envs:
        raise ValueError(f"ES needs {runs_per_iter} environments per iteration, the scene has {sim.n_envs}.")
    gen = torch.Generator().manual_seed(seed)
    state = {"theta": policy.flat_parameters(), "it": 0}
    adam_m, adam_v = torch.zeros_like(state["theta"]), torch.zeros_like(state["theta"])
    b1, b2, eps_adam = 0.9, 0.999, 1e-8
    history = TrainingHistory(config={"train": cfg.as_dict(), "es": vars(es).copy(), "seed": seed})
    # Environment b runs member b % n_members from start state b // n_members (shared by all members).
    group = torch.arange(sim.n_envs) % n_members
    start_group = torch.clamp(torch.arange(sim.n_envs) // n_members, max=es.starts_per_member - 1)
    valid = torch.arange(sim.n_envs) < runs_per_iter

    def evaluate() -> float:
        policy.load_flat_parameters(state["theta"])
        return eval_fn(policy)

    def iteration(progress_frac: float) -> dict[str, float]:
        nonlocal adam_m, adam_v
        theta = state["theta"]
        state["it"] += 1
        noise = torch.randn(es.population, theta.numel(), generator=gen, dtype=theta.dtype)
        members = torch.cat([theta + es.sigma * noise, theta - es.sigma * noise])  # (2P, D)
        reference, start = sample_window_starts(paths, sim.n_envs, gen, cfg, sim.dt, share=start_group)
        with torch.no_grad():
            traj = sim.rollout(
                reference,
                lambda obs: policy.forward_population(obs, members, group),
                start,
                cfg.horizon,
                preview_distances=policy.preview_distances,
            )
            per_env = window_loss(traj, cfg, reduce=False)  # (B,)
        member_loss = torch.zeros(n_members, dtype=theta.dtype).index_add_(0, group[valid], per_env[valid])
        member_loss /= es.starts_per_member
        diff = member_loss[: es.population] - member_loss[es.population :]
        grad = (diff[:, None] * noise).sum(0) / (2.0 * es.sigma * es.population)
        adam_m = b1 * adam_m + (1 - b1) * grad
        adam_v = b2 * adam_v + (1 - b2) * grad**2
        it = state["it"]
        step = es.lr * (adam_m / (1 - b1**it)) / (torch.sqrt(adam_v / (1 - b2**it)) + eps_adam)
        state["theta"] = theta - step
        return {"loss": float(member_loss.mean())}

    run_training_loop(
        sim,
        history,
        iteration,
        sim.n_envs * cfg.horizon,
        env_step_budget=env_step_budget,
        eval_fn=evaluate if eval_fn is not None else None,
        eval_every_env_steps=eval_every_env_steps,
        progress=progress,
        desc="ES",
    )
    policy.load_flat_parameters(state["theta"])
    return history
