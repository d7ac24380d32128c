"""
Gradient training of the steering MLP through the physics.

Each iteration samples one start state per environment on a random training path (random arc-length position,
lateral offset, heading offset, wheel angle and speed jitter), runs the policy in closed loop for a window of
``horizon`` steps in the differentiable scene, and back-propagates the window loss through Genesis (the steering
targets given to ``control_dofs_position`` and the pose read by the getters are in the autograd graph) into the MLP.

Long-horizon gradients. Back-propagating through a closed loop multiplies, per step, the Jacobian of the physics by
that of the policy; over many steps the product can explode (an aggressive policy makes the loop unstable) or vanish
(a strongly damped one), and contact can make single-step Jacobians large. What we do about it, and why:

1. Truncated windows restarted from sampled states (``horizon``, default 100 steps = 1 s, i.e. about 1.5 m at
   1.5 m/s). A window is long enough to contain the consequences of a steering action (servo lag ~0.1 s, then
   heading, then lateral position, ~0.5 s) and to see a curve coming through the preview, and short enough that
   the Jacobian product stays well conditioned. Restarting from states sampled around the whole path, with offsets,
   instead of continuing the previous window, gives independent windows (decorrelated mini-batches) and covers the
   recovery states a policy must handle. Measured (``gradient_norm_vs_horizon``, docs/steering.md): with the untrained policy
   the gradient of a late error grows like ~h^3 with the window (polynomial, not geometric); with a trained one it
   stays flat. The closed-loop gradient through the wheel contacts matches central finite differences to ~1e-9.
2. Per-step loss discounting (``gamma``): step t weighs gamma^t (normalized). Late steps are reached through the
   longest Jacobian chains, where explosion/vanishing happens first, and a late error is also the least attributable
   to the first actions of the window; gamma = 0.99 halves the weight over ~0.7 s.
3. Global gradient-norm clipping (``clip_grad``) before Adam: it bounds the step when a window hits a stiff contact
   event or a near-unstable rollout, without biasing the direction of normal steps (measured norms stay below the
   threshold most of the time once training settles).
4. Non-finite guard: a window whose loss or gradient is not finite is skipped (counted in ``skipped``), never applied.
5. Optional ``detach_obs_every``: cut the gradient through the policy's input every k steps. This removes the
   feedback path (policy Jacobian times state Jacobian) from the chain, leaving the open-loop physics Jacobian, which
   is far better conditioned; it biases the gradient, so it is off by default and is the fallback if windows are
   made much longer.

The loss of a window is, per environment, the square root of the discounted mean over steps of

    (e_lat / 0.1)^2 + w_head (e_head / 0.1)^2 + w_cmd (cmd / limit)^2 + w_rate ((cmd_t - cmd_{t-1}) / (limit dt))^2

(a discounted RMS: a 10 cm lateral error costs 1), averaged over environments. The square root matters: with a plain
mean square, the windows that start 30 cm off the path outweigh the ones tracking within 2 cm by ~100x, and training
stalls at a policy that recovers well but tracks coarsely; the RMS weighs every window by its relative improvement.
The heading weight is small on purpose: on a curve, a car whose center is on the path is not tangent to it (about
atan(l_r * kappa) of side slip geometry), so a large heading weight pays the policy to sit off the path. The last two
terms are small regularizers against bang-bang steering.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .paths import ReferencePath, TorchReference
from .policy import SteeringMLP, save_policy
from .sim import STEER_LIMIT, StartState, SteeringSim, Trajectory, sample_start_states

if TYPE_CHECKING:
    from .distributed import Distributed


@dataclass
class TrainConfig:
    """Settings of the gradient trainer (and of the windows the ES baseline is scored on)."""

    horizon: int = 100  # steps per truncated window
    gamma: float = 0.99  # per-step loss discount inside a window
    lr: float = 3e-3
    lr_final: float = 3e-4  # cosine decay from lr to lr_final over the run
    clip_grad: float = 1.0  # global gradient-norm clip
    w_head: float = 0.02
    w_cmd: float = 1e-3
    w_rate: float = 1e-4
    detach_obs_every: int = 0  # 0: never cut the gradient through the policy input
    # Start-state sampling around the training paths.
    lateral: float = 0.3
    heading: float = 0.2
    steer: float = 0.1
    speed_jitter: float = 0.1
    # Fraction of the windows whose offsets are shrunk 5x: the large offsets teach recovery, the small ones the
    # precise steady tracking that the closed-loop metrics measure (large errors would otherwise dominate the loss).
    small_offset_fraction: float = 0.5
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def sample_window_starts(
    paths: Sequence[ReferencePath],
    n_envs: int,
    generator: torch.Generator,
    cfg: TrainConfig,
    dt: float,
    share: torch.Tensor | None = None,
) -> tuple[TorchReference, StartState]:
    """
    Sample the path and start state of each environment for one window of ``cfg.horizon`` steps of ``dt`` seconds.

    ``share`` (B,) optionally groups environments: all environments of a group get the same path and start state
    (common random numbers, used by the ES baseline to score all population members on the same windows).
    """
    groups = share if share is not None else torch.arange(n_envs)
    n_groups = int(groups.max()) + 1
    path_of_group = torch.randint(len(paths), (n_groups,), generator=generator)
    group_ref = TorchReference(paths, path_of_group.numpy())
    # Keep the whole window on the path: start at least the distance driven in a window (plus slack) before its end.
    max_speed = max(float(np.max(p["speed"])) for p in paths) * (1.0 + cfg.speed_jitter)
    end_margin = cfg.horizon * dt * max_speed * 1.2 + 0.5
    s = sample_start_states(
        group_ref,
        generator,
        lateral=cfg.lateral,
        heading=cfg.heading,
        steer=cfg.steer,
        speed_jitter=cfg.speed_jitter,
        end_margin=end_margin,
    )
    # Shrink the offsets of a fraction of the groups towards the reference point (same random stream either way).
    shrink = torch.where(
        torch.rand(n_groups, generator=generator, dtype=s.x.dtype) < cfg.small_offset_fraction, 0.2, 1.0
    )
    rx, ry = group_ref.at("pos_x", s.idx), group_ref.at("pos_y", s.idx)
    ryaw, rspeed = group_ref.at("yaw", s.idx), group_ref.at("speed", s.idx)
    s = StartState(
        x=rx + shrink * (s.x - rx),
        y=ry + shrink * (s.y - ry),
        yaw=ryaw + shrink * (s.yaw - ryaw),
        speed=rspeed + shrink * (s.speed - rspeed),
        steer=shrink * s.steer,
        idx=s.idx,
    )
    g = groups.long()
    start = StartState(x=s.x[g], y=s.y[g], yaw=s.yaw[g], speed=s.speed[g], steer=s.steer[g], idx=s.idx[g])
    return TorchReference(paths, path_of_group[g].numpy()), start


def step_cost(
    e_lat: torch.Tensor,
    e_head: torch.Tensor,
    cmd: torch.Tensor,
    prev_cmd: torch.Tensor,
    dt: float,
    cfg: TrainConfig,
) -> torch.Tensor:
    """
    The per-step cost inside the window loss (see the module docstring), elementwise: errors after the command
    ``cmd``, and its rate against ``prev_cmd`` over ``dt``. The PPO baseline's reward is its negative.
    """
    limit = STEER_LIMIT
    rate = (cmd - prev_cmd) / (limit * dt)
    return (e_lat / 0.1) ** 2 + cfg.w_head * (e_head / 0.1) ** 2 + cfg.w_cmd * (cmd / limit) ** 2 + cfg.w_rate * rate**2


def window_loss(traj: Trajectory, cfg: TrainConfig, reduce: bool = True) -> torch.Tensor:
    """Discounted tracking loss of a window (see the module docstring); per environment if ``reduce`` is False."""
    cmd = traj.stack("steer_cmd")
    T = cmd.shape[0]
    # Errors after each command; the first command's rate is zero (no command before the window).
    per_step = step_cost(
        traj.stack("e_lat")[1:], traj.stack("e_head")[1:], cmd, torch.cat([cmd[:1], cmd[:-1]]), traj.dt, cfg
    )
    weights = cfg.gamma ** torch.arange(T, dtype=per_step.dtype)
    weights = weights / weights.sum()
    # The floor (1 mm of lateral error) keeps the square root's gradient bounded on a perfect window.
    per_env = torch.sqrt((weights[:, None] * per_step).sum(0) + 1e-4)
    return per_env.mean() if reduce else per_env


def make_policy_controller(policy: SteeringMLP, detach_obs_every: int = 0) -> Callable:
    """The policy as a closed-loop controller, optionally cutting the gradient through its input every k steps."""
    if not detach_obs_every:
        return policy
    counter = {"t": 0}

    def controller(obs):
        t = counter["t"]
        counter["t"] += 1
        if t % detach_obs_every == 0 and t > 0:
            obs = type(obs)(**{k: (v.detach() if torch.is_tensor(v) else v) for k, v in vars(obs).items()})
        return policy(obs)

    return controller


@dataclass
class TrainingHistory:
    """
    Records of a training run, per iteration: the training env-steps used so far, the window loss and the wall-clock
    time (s, evaluations excluded); and the closed-loop evaluations (``eval_fn``) at ``eval_env_steps``. Env-steps simulated by evaluations
    are not training steps and are never counted.
    """

    env_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    wall_clock: list[float] = field(default_factory=list)
    eval_env_steps: list[int] = field(default_factory=list)
    eval_lateral_rms: list[float] = field(default_factory=list)
    eval_wall_clock: list[float] = field(default_factory=list)  # training time (s) at each evaluation, evals excluded
    skipped: int = 0  # iterations whose update was not applied (non-finite loss or gradient)
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain data (lists, numbers, dicts), as checkpoints and JSON reports store it."""
        return asdict(self)


@dataclass
class GradientHistory(TrainingHistory):
    """``TrainingHistory`` of the gradient trainer, with the window lateral RMS and the gradient norm (before
    clipping) of each iteration."""

    lateral_rms: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)


def run_training_loop(
    sim: SteeringSim,
    history: TrainingHistory,
    iteration: Callable[[float], dict[str, float]],
    env_steps_per_iteration: int,
    iterations: int | None = None,
    env_step_budget: int | None = None,
    eval_fn: Callable[[], float] | None = None,
    eval_every_env_steps: int | None = None,
    after_iteration: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    world: int = 1,
    start: tuple[int, int] = (0, 0),
) -> int:
    """
    The loop shared by the gradient trainer and the ES baseline: budget, evaluations, records and progress bar.

    Runs ``iteration(progress_frac)`` (one training iteration; ``progress_frac`` in [0, 1] is the fraction of the budget
    used, for schedules; it returns the loss and any other values to show, ``{"loss": ..., ...}``) until ``iterations``
    iterations or ``env_step_budget`` training env-steps are used (at least one must be given). ``eval_fn()`` runs
    before the first iteration, every ``eval_every_env_steps`` and at the end; the env-steps it simulates are excluded
    from the count. ``after_iteration(it)`` runs after each iteration (checkpoints). Returns the iterations run.

    With ``world`` data-parallel processes, each simulating its share of a global batch, the counts (budget, history)
    are global: this process's env-steps times ``world``; ``env_steps_per_iteration`` is the global one.

    ``start`` = (iterations, training env-steps) already done by the run this one resumes: the counts, the budget and
    the schedules go on from there.
    """
    if iterations is None and env_step_budget is None:
        raise ValueError("Give `iterations` or `env_step_budget`.")
    steps0 = sim.env_steps
    total = env_step_budget if env_step_budget is not None else iterations * env_steps_per_iteration
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start[1], desc=desc, unit="env-step", dynamic_ncols=True)
    next_eval = start[1]
    # A resumed run's wall-clock goes on from where the interrupted one's stopped.
    t0 = time.time() - (history.wall_clock[-1] if start[0] and history.wall_clock else 0.0)
    it = start[0]
    # Env-steps simulated by the evaluations, which are not training steps and are excluded from the count.
    eval_steps, eval_time = 0, 0.0

    def used() -> int:
        return start[1] + (sim.env_steps - steps0 - eval_steps) * world

    def run_eval() -> None:
        nonlocal eval_steps, eval_time
        before, t_before = sim.env_steps, time.time()
        history.eval_env_steps.append(used())
        history.eval_wall_clock.append(t_before - t0 - eval_time)
        history.eval_lateral_rms.append(eval_fn())
        eval_steps += sim.env_steps - before
        eval_time += time.time() - t_before

    while True:
        if (iterations is not None and it >= iterations) or (env_step_budget is not None and used() >= env_step_budget):
            break
        if eval_fn is not None and used() >= next_eval:
            run_eval()
            next_eval += eval_every_env_steps or total
        it += 1
        values = iteration(used() / total if total else 0.0)
        history.env_steps.append(used())
        history.loss.append(float(values["loss"]))
        history.wall_clock.append(time.time() - t0 - eval_time)
        if bar is not None:
            bar.update(env_steps_per_iteration)
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
        if after_iteration is not None:
            after_iteration(it)
    if eval_fn is not None:
        run_eval()
    if bar is not None:
        bar.close()
    return it


def train_gradient(
    policy: SteeringMLP,
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    iterations: int | None = None,
    env_step_budget: int | None = None,
    cfg: TrainConfig | None = None,
    eval_every_env_steps: int | None = None,
    eval_fn: Callable[[SteeringMLP], float] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 25,
    progress: bool = True,
    dist: Distributed | None = None,
    on_window: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    run_config: dict | None = None,
) -> GradientHistory:
    """
    Train ``policy`` in place by back-propagation through the differentiable scene ``sim``.

    Stops after ``iterations`` windows or once ``env_step_budget`` simulated env-steps are used (whichever comes first;
    at least one must be given). Deterministic for a given ``cfg.seed`` (start states, initial weights are the
    caller's). Checkpoints ``policy_iter{N}.pt`` / ``policy_last.pt`` go to ``checkpoint_dir`` if given.

    Returns a ``GradientHistory``; with ``eval_fn(policy) -> float``, its ``eval_env_steps`` / ``eval_lateral_rms``
    every ``eval_every_env_steps`` (env-steps simulated by ``eval_fn`` are not counted).

    Data-parallel (``dist``, see ``distributed.py``): ``sim`` holds this rank's share of the global batch, every rank
    samples the global batch's windows and keeps its slice, and gradients, loss and lateral RMS are averaged over the
    ranks before the non-finite guard, clipping and Adam. Env-step counts, budgets and the history are global; only
    the main rank shows progress, calls ``eval_fn`` (give it there only) and writes checkpoints. ``on_window(record)``
    is called on the main rank after each window with ``iteration``, ``env_steps``, ``loss``, ``lateral_rms``,
    ``grad_norm`` and ``env_steps_per_s`` (logging, e.g. TensorBoard).

    With ``checkpoint_dir``, the whole training state (policy, optimizer, the window sampler's generator, counts and
    history, and ``run_config``, the caller's description of the run) is written to ``TRAINING_STATE`` there after
    every window; ``resume=load_training_state(...)`` continues such a run exactly where its last window ended (an
    interrupted run: the window under way when it stopped is run again). On ``KeyboardInterrupt`` the last window's
    policy is written as ``policy_last.pt`` and ``TrainingInterrupted`` raised.
    """
    if not sim.requires_grad:
        raise ValueError("train_gradient needs a scene built with requires_grad=True.")
    if iterations is None and env_step_budget is None:
        raise ValueError("Give `iterations` or `env_step_budget`.")
    cfg = cfg or TrainConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    history = GradientHistory(config=cfg.as_dict())
    start = (0, 0)
    if resume is not None:
        policy.load_state_dict(resume["policy"])
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        history = GradientHistory(**resume["history"])
        start = (resume["iteration"], resume["env_steps"])
    # Data-parallel hook: the global batch is `world` times this scene's; only the main rank writes anything.
    world, is_main = (dist.world_size, dist.is_main) if dist is not None else (1, True)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None and is_main else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    def evaluate() -> float:
        value = eval_fn(policy)
        policy.train()
        return value

    def iteration(progress_frac: float) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (
                1.0 + math.cos(math.pi * min(progress_frac, 1.0))
            )
        nonlocal t_window
        t_window = time.time()
        reference, start = sample_window_starts(paths, sim.n_envs * world, gen, cfg, sim.dt)
        if dist is not None:
            reference, start = dist.local_slice(reference, start)
        controller = make_policy_controller(policy, cfg.detach_obs_every)
        traj = sim.rollout(reference, controller, start, cfg.horizon, preview_distances=policy.preview_distances)
        loss = window_loss(traj, cfg)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
        lateral_ms = traj.stack("e_lat").detach().pow(2).mean()
        if dist is not None:
            loss, lateral_ms = dist.average_window(policy.parameters(), loss, lateral_ms)
        grads = [p.grad for p in policy.parameters() if p.grad is not None]
        grad_norm = (
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.tensor(math.nan)
        )
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.clip_grad)
            optimizer.step()
        else:
            history.skipped += 1
        lat_rms = float(lateral_ms.sqrt())
        history.lateral_rms.append(lat_rms)
        history.grad_norm.append(float(grad_norm))
        return {"loss": float(loss.detach()), "lat_rms": lat_rms, "gnorm": float(grad_norm)}

    t_window = 0.0

    def after_window(it: int) -> None:
        if on_window is not None and is_main:
            on_window(
                {
                    "iteration": it,
                    "env_steps": history.env_steps[-1],
                    "loss": history.loss[-1],
                    "lateral_rms": history.lateral_rms[-1],
                    "grad_norm": history.grad_norm[-1],
                    "env_steps_per_s": sim.n_envs * world * cfg.horizon / max(time.time() - t_window, 1e-9),
                }
            )
        if ckpt_dir is not None:
            if it % checkpoint_every == 0:
                save_policy(policy, ckpt_dir / f"policy_iter{it:04d}.pt", iteration=it, history=history.as_dict())
            state = {
                "policy": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(),
                "iteration": it,
                "env_steps": history.env_steps[-1],
                "history": history.as_dict(),
                "run_config": run_config or {},
            }
            # Written aside, then renamed: an interrupt during the write leaves the previous state whole.
            torch.save(state, ckpt_dir / (TRAINING_STATE + ".tmp"))
            (ckpt_dir / (TRAINING_STATE + ".tmp")).replace(ckpt_dir / TRAINING_STATE)

    try:
        it = run_training_loop(
            sim,
            history,
            iteration,
            sim.n_envs * world * cfg.horizon,
            iterations=iterations,
            env_step_budget=env_step_budget,
            eval_fn=evaluate if eval_fn is not None else None,
            eval_every_env_steps=eval_every_env_steps,
            after_iteration=after_window,
            progress=progress and is_main,
            desc="train (grad)",
            world=world,
            start=start,
        )
    except KeyboardInterrupt:
        done = start[0]
        if ckpt_dir is not None and (ckpt_dir / TRAINING_STATE).is_file():
            state = load_training_state(ckpt_dir / TRAINING_STATE)
            done = state["iteration"]
            policy.load_state_dict(state["policy"])  # the last whole window's, not a half-applied update
            save_policy(policy, ckpt_dir / "policy_last.pt", iteration=done, history=state["history"])
        raise TrainingInterrupted(done) from None
    if ckpt_dir is not None:
        save_policy(policy, ckpt_dir / "policy_last.pt", iteration=it, history=history.as_dict())
    return history


# The file, in a run's checkpoint directory, holding what `train_gradient(resume=...)` needs to go on exactly.
TRAINING_STATE = "training_state.pt"


class TrainingInterrupted(Exception):
    """Training stopped by ``KeyboardInterrupt`` after ``iterations`` whole windows (their state is saved)."""

    def __init__(self, iterations: int):
        super().__init__(f"interrupted after {iterations} whole windows")
        self.iterations = iterations


def load_training_state(path: str | Path) -> dict:
    """The training state `train_gradient` wrote after its last window (weights and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def gradient_norm_vs_horizon(
    policy: SteeringMLP,
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    horizons: Sequence[int] = (25, 50, 100, 200, 400),
    cfg: TrainConfig | None = None,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """
    Diagnostic for the long-horizon choice: the policy-gradient norm of the window loss, undiscounted and discounted,
    for several window lengths from the same start states. Explosion shows as a norm growing geometrically with the
    horizon, vanishing as a gradient of the last steps' loss that no longer reaches the parameters.

    Returns ``{horizon: {"grad_norm": ..., "grad_norm_discounted": ..., "last_step_grad_norm": ...}}``, where the last
    entry is the gradient norm of the loss of the final step alone (how much a late error still says about the
    parameters through the whole chain).
    """
    cfg = cfg or TrainConfig()
    out = {}
    for horizon in horizons:
        res = {}
        for name, gamma, last_only in (
            ("grad_norm", 1.0, False),
            ("grad_norm_discounted", cfg.gamma, False),
            ("last_step_grad_norm", 1.0, True),
        ):
            window_cfg = TrainConfig(**{**cfg.as_dict(), "horizon": horizon, "gamma": gamma})
            gen = torch.Generator().manual_seed(seed)
            reference, start = sample_window_starts(paths, sim.n_envs, gen, window_cfg, sim.dt)
            traj = sim.rollout(reference, policy, start, horizon, preview_distances=policy.preview_distances)
            if last_only:
                loss = (traj.obs[-1].e_lat / 0.1).pow(2).mean()
            else:
                loss = window_loss(traj, window_cfg)
            policy.zero_grad(set_to_none=True)
            loss.backward()
            res[name] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in policy.parameters()])))
        out[horizon] = res
    policy.zero_grad(set_to_none=True)
    return out
