"""
Steering benchmark: gradient-trained MLP vs tuned Stanley vs zeroth-order (ES) training of the same MLP.

Not a test (it takes tens of minutes on 2 CPU cores). It prints a markdown table of

- closed-loop lateral RMS / heading RMS / max lateral error / completion of the trained MLP and of Stanley (gains
  grid-searched on the training paths), on the training paths and on a held-out path;
- simulated env-steps (and wall-clock) that gradient training and ES need to reach the same closed-loop lateral RMS
  on the training paths;

and saves one trajectory plot and the training curves. Targets: MLP lateral RMS <= Stanley's on the training paths
and <= 1.5x Stanley's on the held-out path; gradient training >= 10x fewer simulated steps than ES.

Usage: python benchmarks/steering.py [--grad-iterations 300] [--es-factor 10] [--out out/benchmark]
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
from genesis_grad.steering.baselines import DEFAULT_GRID, evaluate_stanley, tune_stanley
from genesis_grad.steering.es import ESConfig, train_es
from genesis_grad.steering.evaluate import (
    evaluate_policy,
    format_metrics_table,
    mean_lateral_rms,
    plot_errors,
    plot_training_curve,
    plot_trajectories,
)
from genesis_grad.steering.policy import SteeringMLP, save_policy
from genesis_grad.steering.sim import SteeringSim
from genesis_grad.steering.train import TrainConfig, train_gradient


def steps_to_reach(env_steps, values, target) -> float:
    """First env-step count at which ``values`` is <= ``target`` (nan if never)."""
    for steps, value in zip(env_steps, values, strict=True):
        if value <= target:
            return float(steps)
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grad-iterations", type=int, default=300)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--es-factor", type=float, default=10.0, help="ES budget as a multiple of the gradient one")
    parser.add_argument("--evals", type=int, default=12, help="closed-loop evaluations along each training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/benchmark")
    parser.add_argument("--small-grid", action="store_true", help="quick Stanley grid (3 gain sets)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_paths, held_out = P.training_paths(), P.held_out_path()
    all_paths = [*train_paths, held_out]
    t0 = time.time()
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    print(f"scene built in {time.time() - t0:.0f} s")

    # ---------------------------------------------------------------- Stanley
    t0 = time.time()
    from genesis_grad.steering.baselines import SMALL_GRID

    gains, scores = tune_stanley(sim, train_paths, SMALL_GRID if args.small_grid else DEFAULT_GRID)
    stanley_metrics, stanley_runs = evaluate_stanley(sim, gains, all_paths)
    t_stanley = time.time() - t0
    print(f"Stanley grid ({len(scores)} gain sets) in {t_stanley:.0f} s: best {gains}")

    def eval_train_rms(policy) -> float:
        return mean_lateral_rms(evaluate_policy(sim, policy, train_paths)[0])

    # ---------------------------------------------------------------- gradient training
    cfg = TrainConfig(horizon=args.horizon, seed=args.seed)
    grad_budget = args.grad_iterations * args.n_envs * args.horizon
    torch.manual_seed(args.seed)
    policy = SteeringMLP()
    init_state = {k: v.clone() for k, v in policy.state_dict().items()}
    t0 = time.time()
    grad_hist = train_gradient(
        policy,
        sim,
        train_paths,
        iterations=args.grad_iterations,
        cfg=cfg,
        eval_fn=eval_train_rms,
        eval_every_env_steps=max(grad_budget // args.evals, 1),
        checkpoint_dir=out / "checkpoints_grad",
    )
    t_grad = time.time() - t0
    grad_metrics, grad_runs = evaluate_policy(sim, policy, all_paths)
    save_policy(policy, out / "policy_grad.pt")

    # ---------------------------------------------------------------- ES on the same MLP, same windows and loss
    es_policy = SteeringMLP()
    es_policy.load_state_dict(init_state)
    es_budget = int(args.es_factor * grad_budget)
    t0 = time.time()
    es_hist = train_es(
        es_policy,
        sim,
        train_paths,
        env_step_budget=es_budget,
        train_config=cfg,
        es_config=ESConfig(population=args.n_envs // 2),
        eval_fn=eval_train_rms,
        eval_every_env_steps=max(es_budget // args.evals, 1),
        seed=args.seed,
    )
    t_es = time.time() - t0
    es_metrics, _ = evaluate_policy(sim, es_policy, all_paths)
    save_policy(es_policy, out / "policy_es.pt")

    # ---------------------------------------------------------------- tables
    rows = [("MLP (gradient)", m) for m in grad_metrics]
    rows += [("MLP (ES)", m) for m in es_metrics]
    rows += [(f"Stanley k={gains.k:g} ks={gains.k_soft:g} kh={gains.k_heading:g}", m) for m in stanley_metrics]
    print("\n## Closed-loop tracking (held-out path: " + held_out.name + ")\n")
    print(format_metrics_table(rows))

    n_train = len(train_paths)
    mlp_train = np.mean([m.lateral_rms for m in grad_metrics[:n_train]])
    st_train = np.mean([m.lateral_rms for m in stanley_metrics[:n_train]])
    mlp_ho, st_ho = grad_metrics[-1].lateral_rms, stanley_metrics[-1].lateral_rms
    print("\n## Targets\n")
    print("| check | MLP | Stanley | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    print(
        f"| mean lateral RMS, training paths (m) | {mlp_train:.4f} | {st_train:.4f} | {mlp_train / st_train:.2f} "
        f"| <= 1.0 | {'yes' if mlp_train <= st_train else 'no'} |"
    )
    print(
        f"| lateral RMS, held-out {held_out.name} (m) | {mlp_ho:.4f} | {st_ho:.4f} | {mlp_ho / st_ho:.2f} "
        f"| <= 1.5 | {'yes' if mlp_ho <= 1.5 * st_ho else 'no'} |"
    )

    # Steps to reach the same closed-loop lateral RMS: the best level ES reaches, and a few looser levels.
    es_best = min(es_hist.eval_lateral_rms)
    grad_best = min(grad_hist.eval_lateral_rms)
    levels = sorted({round(x, 4) for x in (es_best, 2 * es_best, 2 * grad_best, 4 * grad_best)})
    print("\n## Simulated env-steps to reach a closed-loop lateral RMS (training paths, incomplete runs penalized)\n")
    print("| lateral RMS target (m) | gradient env-steps | ES env-steps | ES / gradient |")
    print("|---|---|---|---|")
    for level in levels:
        g = steps_to_reach(grad_hist.eval_env_steps, grad_hist.eval_lateral_rms, level)
        e = steps_to_reach(es_hist.eval_env_steps, es_hist.eval_lateral_rms, level)
        ratio = e / g if (math.isfinite(e) and math.isfinite(g) and g > 0) else math.nan
        e_text = f"{e:.0f}" if math.isfinite(e) else f"not reached in {es_budget}"
        r_text = f"{ratio:.1f}" if math.isfinite(ratio) else (f"> {es_budget / g:.1f}" if math.isfinite(g) else "-")
        g_text = f"{g:.0f}" if math.isfinite(g) else "not reached"
        print(f"| {level:.4f} | {g_text} | {e_text} | {r_text} |")

    print("\n## Cost\n")
    print("| run | simulated env-steps | wall-clock (s) | note |")
    print("|---|---|---|---|")
    print(f"| Stanley grid search + eval | - | {t_stanley:.0f} | {len(scores)} gain sets x {n_train} paths |")
    print(
        f"| gradient training | {grad_hist.env_steps[-1]} | {t_grad:.0f} | {args.grad_iterations} windows x "
        f"{args.n_envs} envs x {args.horizon} steps, forward + reverse pass, incl. {len(grad_hist.eval_env_steps)} evals |"
    )
    print(
        f"| ES training | {es_hist.env_steps[-1]} | {t_es:.0f} | {2 * (args.n_envs // 2)} members / iteration, "
        f"forward only, incl. {len(es_hist.eval_env_steps)} evals |"
    )

    runs = {"MLP (gradient)": grad_runs, "Stanley": stanley_runs}
    plot_trajectories(runs, out / "benchmark_trajectories.png", "closed-loop")
    plot_errors(runs, out / "benchmark_errors.png")
    plot_training_curve(
        {
            "gradient": {
                "env_steps": grad_hist.env_steps,
                "loss": grad_hist.loss,
                "eval_env_steps": grad_hist.eval_env_steps,
                "lateral_rms": grad_hist.eval_lateral_rms,
            },
            "ES": {
                "env_steps": es_hist.env_steps,
                "loss": es_hist.loss,
                "eval_env_steps": es_hist.eval_env_steps,
                "lateral_rms": es_hist.eval_lateral_rms,
            },
        },
        out / "benchmark_training_curves.png",
    )
    summary = {
        "stanley_gains": vars(gains),
        "grad": grad_hist.as_dict(),
        "es": es_hist.as_dict(),
        "metrics": {
            "grad": [m.as_dict() for m in grad_metrics],
            "es": [m.as_dict() for m in es_metrics],
            "stanley": [m.as_dict() for m in stanley_metrics],
        },
        "wall_clock": {"stanley": t_stanley, "grad": t_grad, "es": t_es},
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    print(f"\nplots and data in {out}/")


if __name__ == "__main__":
    main()
