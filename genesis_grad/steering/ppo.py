"""
PPO baseline: ``rsl-rl-lib``'s PPO (the library of Genesis's own locomotion examples) on the same car, references,
observation and reward as the gradient trainer.

``SteeringVecEnv`` wraps the batched ``SteeringSim`` (no second simulator) as an ``rsl_rl.env.VecEnv``:

- episodes are the gradient trainer's windows: every ``cfg.horizon`` steps all environments restart together from
  start states drawn by ``train.sample_window_starts`` (same paths, offsets and seeds), and the episode ends as a
  time-out (PPO bootstraps its value there, the task itself does not end);
- the observation is ``policy.observation_features``, the MLP's input (error state, speed, wheel angle and the
  reference curvature and speed ahead), in float32;
- the action ``a`` steers ``STEER_LIMIT * tanh(a)``, the MLP's output squashing;
- the reward of a step is ``-train.step_cost`` of that step: the negative of the per-step tracking loss the gradient
  trainer sums (before its discounting and square root, which do not decompose over steps).

Build the sim with ``requires_grad=False``: PPO needs no graph.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict

from .paths import ReferencePath
from .policy import DEFAULT_PREVIEW, observation_features
from .sim import STEER_LIMIT, Observation, SteeringSim
from .train import TrainConfig, TrainingHistory, sample_window_starts, step_cost


class SteeringVecEnv(VecEnv):
    """
    The steering task as an ``rsl_rl`` vectorized environment (see the module docstring).

    Parameters
    ----------
    sim : SteeringSim
        The batched car scene; ``num_envs`` is its ``n_envs``. Its ``env_steps`` counts the simulated steps.
    paths : sequence of ReferencePath
        Training references the windows are drawn from.
    cfg : TrainConfig
        Window length, start-state sampling and loss weights (the gradient trainer's).
    preview_distances : sequence of float
        Where the observation samples the reference curvature and speed ahead (the MLP's default).
    seed : int
        Seed of the start-state sampler.
    """

    def __init__(
        self,
        sim: SteeringSim,
        paths: Sequence[ReferencePath],
        cfg: TrainConfig | None = None,
        preview_distances: Sequence[float] = DEFAULT_PREVIEW,
        seed: int = 0,
    ):
        self.sim = sim
        self.paths = list(paths)
        self.cfg = cfg or TrainConfig()
        self.preview_distances = tuple(preview_distances)
        self.num_envs = sim.n_envs
        self.num_actions = 1
        self.max_episode_length = self.cfg.horizon
        self.device = "cpu"
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)
        self.reward_sum, self.reward_count = 0.0, 0
        self._reset_windows()

    # -------------------------------------------------- VecEnv interface

    def get_observations(self) -> TensorDict:
        return self._obs_dict(self.obs)

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        # rsl-rl steps the environment in inference mode; Genesis caches torch views of its fields at their first use,
        # and a view made in inference mode cannot be written outside it (an evaluation after training failed with
        # "Inplace update to inference tensor outside InferenceMode"): the scene is driven in normal mode.
        with torch.inference_mode(False):
            return self._step(actions)

    def _step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        cmd = STEER_LIMIT * torch.tanh(actions.reshape(self.num_envs).to(torch.float64))
        self.sim.step(cmd, self.obs.ref_speed)
        self.obs = self._observe()
        # A window's first command has no predecessor: its rate counts as zero, as in train.window_loss.
        prev_cmd = torch.where(self.episode_length_buf == 0, cmd, self.prev_cmd)
        reward = -step_cost(self.obs.e_lat, self.obs.e_head, cmd, prev_cmd, self.sim.dt, self.cfg)
        self.prev_cmd = cmd
        self.reward_sum += float(reward.sum())
        self.reward_count += self.num_envs
        self.episode_length_buf += 1
        done = self.episode_length_buf >= self.max_episode_length
        extras = {"time_outs": done.clone(), "log": {"/lateral_abs": self.obs.e_lat.abs().mean()}}
        if done.all():
            self._reset_windows()
        return self.get_observations(), reward.float(), done.long(), extras

    # -------------------------------------------------- helpers

    def _reset_windows(self) -> None:
        """Restart every environment from a new window start (the scene resets all environments at once)."""
        self.reference, start = sample_window_starts(self.paths, self.num_envs, self.generator, self.cfg, self.sim.dt)
        self.sim.reset(start)
        self.idx = start.idx
        self.obs = self._observe()
        self.prev_cmd = torch.zeros(self.num_envs, dtype=torch.float64)
        self.episode_length_buf.zero_()

    def pop_mean_reward(self) -> float:
        """Mean reward per env-step since the last call (nan if none)."""
        mean = self.reward_sum / self.reward_count if self.reward_count else math.nan
        self.reward_sum, self.reward_count = 0.0, 0
        return mean

    def _observe(self) -> Observation:
        obs = self.sim.observe(self.reference, prev_idx=self.idx, preview_distances=self.preview_distances)
        self.idx = obs.idx
        return obs

    def _obs_dict(self, obs: Observation) -> TensorDict:
        return TensorDict({"policy": observation_features(obs).float()}, batch_size=[self.num_envs])


@dataclass
class PPOConfig:
    """
    PPO settings (rsl-rl's names). Defaults: those of Genesis's locomotion examples (learning rate 1e-3, clip 0.2,
    5 epochs x 4 mini-batches, gamma 0.99, lambda 0.95, adaptive schedule at KL 0.01), except the network (the MLP's
    64x64 tanh instead of 512-256-128 elu), the initial action std (0.5 instead of 1.0: the action is squashed by
    tanh into the steering range) and the entropy coefficient (0.005 instead of 0.01). ``PPO_GRID`` sweeps the
    learning rate, the initial std and the entropy coefficient around them.
    """

    num_steps_per_env: int = 100  # = the window: one PPO iteration is one window per environment
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init_std: float = 0.5
    learning_rate: float = 1e-3
    num_learning_epochs: int = 5
    num_mini_batches: int = 4
    clip_param: float = 0.2
    gamma: float = 0.99
    lam: float = 0.95
    entropy_coef: float = 0.005
    desired_kl: float = 0.01
    obs_normalization: bool = False
    extra: dict = field(default_factory=dict)

    def runner_config(self) -> dict:
        """The ``train_cfg`` dictionary of ``rsl_rl.runners.OnPolicyRunner``."""
        model = {
            "class_name": "MLPModel",
            "hidden_dims": list(self.hidden),
            "activation": self.activation,
            "obs_normalization": self.obs_normalization,
        }
        return {
            "num_steps_per_env": self.num_steps_per_env,
            "save_interval": 10**9,
            "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
            "actor": {
                **model,
                "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": self.init_std},
            },
            "critic": dict(model),
            "algorithm": {
                "class_name": "PPO",
                "learning_rate": self.learning_rate,
                "num_learning_epochs": self.num_learning_epochs,
                "num_mini_batches": self.num_mini_batches,
                "clip_param": self.clip_param,
                "gamma": self.gamma,
                "lam": self.lam,
                "entropy_coef": self.entropy_coef,
                "desired_kl": self.desired_kl,
                "schedule": "adaptive",
                "max_grad_norm": 1.0,
                **self.extra,
            },
        }


# The PPO settings the speed-range benchmark tries (8, each trained with every other setting at its default), the
# best of which is trained with several seeds: the tuning effort, stated, that the gradient trainer (1 setting) does
# not get.
PPO_GRID = {"learning_rate": (3e-4, 1e-3), "init_std": (0.2, 0.5), "entropy_coef": (0.0, 0.005)}


class PPOController:
    """The deterministic PPO actor as a closed-loop controller: ``STEER_LIMIT * tanh(actor(features))``. Roll it
    out with ``preview_distances=controller.preview_distances`` (its observation's curvature and speed preview)."""

    def __init__(self, actor: torch.nn.Module, preview_distances: Sequence[float] = DEFAULT_PREVIEW):
        self.actor = actor
        self.preview_distances = tuple(preview_distances)

    @torch.no_grad()
    def __call__(self, obs: Observation) -> torch.Tensor:
        td = TensorDict({"policy": observation_features(obs).float()}, batch_size=[obs.x.shape[0]])
        return STEER_LIMIT * torch.tanh(self.actor(td)[:, 0].to(torch.float64))


def train_ppo(
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    env_step_budget: int,
    cfg: TrainConfig | None = None,
    ppo: PPOConfig | None = None,
    eval_fn: Callable[[PPOController], float] | None = None,
    eval_every_env_steps: int | None = None,
    seed: int = 0,
) -> tuple[PPOController, TrainingHistory]:
    """
    Train the PPO baseline for ``env_step_budget`` simulated env-steps (rounded up to whole iterations).

    Returns the deterministic controller and a ``TrainingHistory`` (``loss``: minus the mean reward per env-step since
    the previous record; ``eval_*``: ``eval_fn(controller)`` every ``eval_every_env_steps``, not counted).
    """
    from rsl_rl.runners import OnPolicyRunner

    cfg = cfg or TrainConfig()
    ppo = ppo or PPOConfig(num_steps_per_env=cfg.horizon)
    torch.manual_seed(seed)
    env = SteeringVecEnv(sim, paths, cfg, seed=seed)
    runner = OnPolicyRunner(env, ppo.runner_config(), log_dir=None, device="cpu")
    controller = PPOController(runner.alg.get_policy(), env.preview_distances)
    history = TrainingHistory(config={"train": cfg.as_dict(), "ppo": asdict(ppo), "seed": seed})
    per_iteration = sim.n_envs * ppo.num_steps_per_env
    n_iterations = max(math.ceil(env_step_budget / per_iteration), 1)
    chunk = max((eval_every_env_steps or env_step_budget) // per_iteration, 1)
    steps0, eval_steps, t0, eval_time = sim.env_steps, 0, time.time(), 0.0

    def run_eval() -> None:
        nonlocal eval_steps, eval_time
        before, t_before = sim.env_steps, time.time()
        history.eval_env_steps.append(sim.env_steps - steps0 - eval_steps)
        history.eval_wall_clock.append(t_before - t0 - eval_time)
        runner.alg.eval_mode()
        history.eval_lateral_rms.append(eval_fn(controller))
        runner.alg.train_mode()
        eval_steps += sim.env_steps - before
        eval_time += time.time() - t_before
        # The evaluation drove the shared scene elsewhere: restart the training windows.
        env._reset_windows()

    done = 0
    while done < n_iterations:
        if eval_fn is not None:
            run_eval()
        n = min(chunk, n_iterations - done)
        runner.learn(n)
        # learn() continues from current_learning_iteration, which it leaves at its last iteration.
        runner.current_learning_iteration += 1
        done += n
        history.env_steps.append(sim.env_steps - steps0 - eval_steps)
        history.loss.append(-env.pop_mean_reward())
        history.wall_clock.append(time.time() - t0 - eval_time)
    if eval_fn is not None:
        run_eval()
    return controller, history
