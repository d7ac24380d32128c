"""
Steering benchmark over the speed range: the gradient-trained MLP vs PPO (rsl-rl-lib) vs Stanley with curvature
feed-forward vs pure pursuit, all driven by the same closed-loop evaluation (``evaluate.run_paths``).

Not a test (the full budgets take about an hour on 2 CPU cores; ``--grad-iterations`` and ``--ppo-factor`` shrink it).

Training and tuning set (the only references any controller sees before the evaluation):

- the built-in training paths (lane change, sine, circle) at each speed of ``--speeds`` where their peak lateral
  acceleration v^2 |kappa| stays within ``paths.MAX_LATERAL_ACCEL`` (the circle and the sine at 5 m/s exceed it);
- ``--train-random`` random references of the ``train`` split (curvature up to 0.8x the steering limit, speed varying
  along the path in 0.5-5 m/s). The gain grids are scored on the built-in ones and the first ``--tune-random``.

Evaluation (never trained or tuned on): per speed, the built-in training paths (training paths) and the figure eight
plus ``--eval-random`` random references of the ``held_out`` split at that constant speed (held-out paths); and
``--eval-random`` held-out random references with varying speed. Built-in paths whose peak lateral acceleration exceeds
the bound at a speed get their own row (beyond the lateral-acceleration bound): scored, but not counted as held-out.

Training cost: simulated env-steps (evaluations excluded) and wall-clock for the gradient trainer and PPO to reach
closed-loop lateral-RMS levels on ``--monitor`` random references of the training split (not in the training set).
Targets: the MLP is the best controller at every speed on the held-out paths, and reaches PPO's final level with
>= 10x fewer simulated steps.

Usage: python benchmarks/steering.py [--grad-iterations 300] [--ppo-factor 10] [--out out/benchmark]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from genesis_grad.steering import paths as P
from genesis_grad.steering.baselines import (
    PURE_PURSUIT_GRID,
    STANLEY_FF_GRID,
    evaluate_stanley,
    tune_pure_pursuit,
    tune_stanley,
)
from genesis_grad.steering.evaluate import evaluate_policy, mean_lateral_rms, plot_training_curve, run_paths
from genesis_grad.steering.policy import SteeringMLP, save_policy
from genesis_grad.steering.ppo import PPOConfig, train_ppo
from genesis_grad.steering.sim import SteeringSim
from genesis_grad.steering.train import TrainConfig, train_gradient


def steps_to_reach(env_steps, values, target) -> float:
    """First env-step count at which ``values`` is <= ``target`` (nan if never)."""
    for steps, value in zip(env_steps, values, strict=True):
        if value <= target:
            return float(steps)
    return math.nan


def peak_lateral_accel(path: P.ReferencePath) -> float:
    return float(np.max(path["speed"] ** 2 * np.abs(path.curvature)))


def feasible(path: P.ReferencePath) -> bool:
    return peak_lateral_accel(path) <= P.MAX_LATERAL_ACCEL * 1.05


def summarize(metrics) -> str:
    """``lateral RMS / max lateral / completion`` of a group: mean RMS (incomplete runs penalized), worst max, worst
    completion."""
    rms = mean_lateral_rms(metrics)
    worst = max(m.max_lateral for m in metrics)
    completion = min(m.completion for m in metrics)
    return f"{rms:.4f} / {worst:.3f} / {completion:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grad-iterations", type=int, default=300)
    parser.add_argument("--ppo-factor", type=float, default=10.0, help="PPO env-steps as a multiple of the gradient's")
    parser.add_argument("--ppo-envs", type=int, default=64, help="environments of the PPO / evaluation scene")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--n-envs", type=int, default=16, help="environments of the gradient trainer")
    parser.add_argument("--speeds", default="0.5,1.5,3,5")
    parser.add_argument("--train-random", type=int, default=64)
    parser.add_argument("--tune-random", type=int, default=4)
    parser.add_argument("--eval-random", type=int, default=4)
    parser.add_argument("--monitor", type=int, default=4)
    parser.add_argument("--evals", type=int, default=10, help="closed-loop evaluations along each training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/benchmark")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speeds = [float(v) for v in args.speeds.split(",")]

    builtin = [p for v in speeds for p in P.training_paths(speed=v)]
    for p in builtin:
        p.name = f"{p.name}@{p['speed'][0]:g}"
    train_set = [p for p in builtin if feasible(p)] + P.random_references(args.train_random, "train")
    tune_set = [p for p in builtin if feasible(p)] + P.random_references(args.tune_random, "train")
    # Training-split references beyond the training set, to follow training progress.
    monitor = P.random_references(args.monitor, "train", first=10_000)
    groups = {}  # (speed, kind) -> paths
    for v in speeds:
        trained = P.training_paths(speed=v)
        held = [P.held_out_path(speed=v)] + P.random_references(args.eval_random, "held_out", speed_range=(v, v))
        groups[(f"{v:g}", "training paths")] = [p for p in trained if feasible(p)]
        groups[(f"{v:g}", "held-out paths")] = [p for p in held if feasible(p)]
        beyond = [p for p in trained + held if not feasible(p)]
        if beyond:
            groups[(f"{v:g}", "beyond the lateral-acceleration bound")] = beyond
    groups[("0.5-5 varying", "held-out paths")] = P.random_references(args.eval_random, "held_out", first=100)
    eval_paths = [p for ps in groups.values() for p in ps]

    t0 = time.time()
    sim_grad = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    sim = SteeringSim(n_envs=args.ppo_envs, requires_grad=False)
    print(f"scenes built in {time.time() - t0:.0f} s", flush=True)

    # ---------------------------------------------------------------- classical baselines
    t0 = time.time()
    st_gains, st_scores = tune_stanley(sim, tune_set, STANLEY_FF_GRID)
    t_st = time.time() - t0
    print(f"Stanley-FF grid ({len(st_scores)} sets) in {t_st:.0f} s: {st_gains}", flush=True)
    t0 = time.time()
    pp_gains, pp_scores = tune_pure_pursuit(sim, tune_set, PURE_PURSUIT_GRID)
    t_pp = time.time() - t0
    print(f"pure-pursuit grid ({len(pp_scores)} sets) in {t_pp:.0f} s: {pp_gains}", flush=True)

    def monitor_policy(policy) -> float:
        return mean_lateral_rms(evaluate_policy(sim, policy, monitor)[0])

    def monitor_controller(controller) -> float:
        return mean_lateral_rms(
            run_paths(sim, monitor, lambda ref, idx: controller, preview_distances=controller.preview_distances)[0]
        )

    # ---------------------------------------------------------------- gradient training
    cfg = TrainConfig(horizon=args.horizon, seed=args.seed)
    grad_budget = args.grad_iterations * args.n_envs * args.horizon
    torch.manual_seed(args.seed)
    policy = SteeringMLP()
    t0 = time.time()
    grad_hist = train_gradient(
        policy,
        sim_grad,
        train_set,
        iterations=args.grad_iterations,
        cfg=cfg,
        eval_fn=monitor_policy,
        eval_every_env_steps=max(grad_budget // args.evals, 1),
        checkpoint_dir=out / "checkpoints_grad",
    )
    t_grad = time.time() - t0
    save_policy(policy, out / "policy_grad.pt")
    print(f"gradient training in {t_grad:.0f} s", flush=True)

    # ---------------------------------------------------------------- PPO, same references, observation and reward
    ppo_budget = int(args.ppo_factor * grad_budget)
    t0 = time.time()
    ppo_controller, ppo_hist = train_ppo(
        sim,
        train_set,
        ppo_budget,
        cfg=cfg,
        ppo=PPOConfig(num_steps_per_env=args.horizon),
        eval_fn=monitor_controller,
        eval_every_env_steps=max(ppo_budget // args.evals, 1),
        seed=args.seed,
    )
    t_ppo = time.time() - t0
    print(f"PPO training in {t_ppo:.0f} s", flush=True)

    # ---------------------------------------------------------------- closed-loop evaluation
    results = {
        "MLP (gradient)": evaluate_policy(sim, policy, eval_paths)[0],
        "PPO": run_paths(
            sim, eval_paths, lambda ref, idx: ppo_controller, preview_distances=ppo_controller.preview_distances
        )[0],
        "Stanley-FF": evaluate_stanley(sim, st_gains, eval_paths)[0],
        "pure pursuit": evaluate_stanley(sim, pp_gains, eval_paths)[0],
    }
    labels = list(results)
    print("\n## Closed-loop tracking: lateral RMS (m) / max lateral (m) / completion\n")
    print("| speed (m/s) | paths | " + " | ".join(labels) + " | best |")
    print("|---" * (len(labels) + 3) + "|")
    table = {}
    first = 0
    for (speed, kind), ps in groups.items():
        if not ps:
            continue
        sl = slice(first, first + len(ps))
        first += len(ps)
        cells = {label: results[label][sl] for label in labels}
        scores = {label: mean_lateral_rms(m) for label, m in cells.items()}
        best = min(scores, key=scores.get)
        names = ", ".join(p.name for p in ps)
        print(
            f"| {speed} | {kind} ({names}) | "
            + " | ".join(summarize(cells[label]) for label in labels)
            + f" | {best} |"
        )
        table[f"{speed} {kind}"] = {"paths": names, **{label: [m.as_dict() for m in cells[label]] for label in labels}}

    held_out_best = {
        key: min(labels, key=lambda label: mean_lateral_rms(results_of(table[key], label)))
        for key in table
        if "held-out" in key and table[key]["paths"]
    }
    print("\n## Targets\n")
    wins = [key for key, label in held_out_best.items() if label == "MLP (gradient)"]
    print(f"- MLP best on the held-out paths at {len(wins)} of {len(held_out_best)} speeds ({', '.join(wins) or '-'})")

    ppo_final = ppo_hist.eval_lateral_rms[-1]
    grad_final = grad_hist.eval_lateral_rms[-1]
    # Unrounded: a level rounded below a run's final value would read as never reached.
    levels = sorted({ppo_final, 2 * ppo_final, grad_final, 2 * grad_final})
    print("\n## Simulated env-steps (wall-clock) to reach a closed-loop lateral RMS on the monitor references\n")
    print(
        f"(evaluated every ~{grad_budget // args.evals} env-steps for the gradient, ~{ppo_budget // args.evals} for PPO)\n"
    )
    print("| lateral RMS level (m) | gradient | PPO | PPO / gradient |")
    print("|---|---|---|---|")
    for level in levels:
        g = steps_to_reach(grad_hist.eval_env_steps, grad_hist.eval_lateral_rms, level)
        e = steps_to_reach(ppo_hist.eval_env_steps, ppo_hist.eval_lateral_rms, level)

        def cell(steps, hist):
            if not math.isfinite(steps):
                return f"not reached in {hist.eval_env_steps[-1]}"
            wall = hist.eval_wall_clock[hist.eval_env_steps.index(int(steps))]
            return f"{steps:.0f} ({wall:.0f} s)"

        ratio = f"{e / g:.1f}" if math.isfinite(e) and math.isfinite(g) and g > 0 else "-"
        print(f"| {level:.4f} | {cell(g, grad_hist)} | {cell(e, ppo_hist)} | {ratio} |")

    print("\n## Budgets and cost\n")
    print("| run | simulated env-steps | wall-clock (s) | note |")
    print("|---|---|---|---|")
    print(f"| Stanley-FF grid | - | {t_st:.0f} | {len(st_scores)} gain sets x {len(tune_set)} tuning references |")
    print(f"| pure-pursuit grid | - | {t_pp:.0f} | {len(pp_scores)} gain sets x {len(tune_set)} tuning references |")
    print(
        f"| gradient training | {grad_hist.env_steps[-1]} | {t_grad:.0f} | {args.grad_iterations} windows x "
        f"{args.n_envs} envs x {args.horizon} steps, forward + reverse, incl. {len(grad_hist.eval_env_steps)} evals |"
    )
    print(
        f"| PPO training | {ppo_hist.env_steps[-1]} | {t_ppo:.0f} | {args.ppo_envs} envs x {args.horizon} steps "
        f"per iteration, rsl-rl defaults (PPOConfig), incl. {len(ppo_hist.eval_env_steps)} evals |"
    )
    print(f"\ntraining set: {len(train_set)} references; tuning set: {len(tune_set)}; gains: {st_gains}, {pp_gains}")

    plot_training_curve(
        {
            "gradient": {
                "env_steps": grad_hist.env_steps,
                "loss": grad_hist.loss,
                "eval_env_steps": grad_hist.eval_env_steps,
                "lateral_rms": grad_hist.eval_lateral_rms,
            },
            "PPO": {
                "env_steps": ppo_hist.env_steps,
                "loss": [],
                "eval_env_steps": ppo_hist.eval_env_steps,
                "lateral_rms": ppo_hist.eval_lateral_rms,
            },
        },
        out / "benchmark_training_curves.png",
    )
    summary = {
        "args": vars(args),
        "stanley_ff_gains": vars(st_gains),
        "pure_pursuit_gains": vars(pp_gains),
        "grad": grad_hist.as_dict(),
        "ppo": ppo_hist.as_dict(),
        "table": table,
        "wall_clock": {"stanley_ff": t_st, "pure_pursuit": t_pp, "grad": t_grad, "ppo": t_ppo},
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nplots and data in {out}/")


def results_of(row: dict, label: str):
    from genesis_grad.steering.evaluate import PathMetrics

    return [PathMetrics(**m) for m in row[label]]


if __name__ == "__main__":
    main()
