"""
Long-horizon gradients of the steering task, and the car across its speed range.

1. The policy-gradient norm of a window's loss against the window length (``train.gradient_norm_vs_horizon``), for
   the untrained MLP and, with ``--policy``, a trained one: explosion shows as a norm growing geometrically with the
   horizon, vanishing as a last-step gradient that no longer reaches the parameters.
2. With ``--speeds``, Stanley (tuned per speed on the training paths) and the policy in closed loop on every path at
   each speed: the car must drive every path stably from 0.5 to 3 m/s.

Usage: python benchmarks/steering_horizon.py [--policy out/benchmark/policy_grad.pt] [--speeds 0.5,1.5,3]
"""

from __future__ import annotations

import argparse

import torch

from genesis_grad.steering import paths as P
from genesis_grad.steering.baselines import DEFAULT_GRID, evaluate_stanley, tune_stanley
from genesis_grad.steering.evaluate import evaluate_policy, format_metrics_table
from genesis_grad.steering.policy import SteeringMLP, load_policy
from genesis_grad.steering.sim import SteeringSim
from genesis_grad.steering.train import gradient_norm_vs_horizon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", help="trained checkpoint to diagnose next to the untrained MLP")
    parser.add_argument("--horizons", default="25,50,100,200,400")
    parser.add_argument("--speeds", default="", help="comma-separated speeds (m/s) for the speed-range check")
    parser.add_argument("--n-envs", type=int, default=8)
    args = parser.parse_args()

    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    torch.manual_seed(0)
    policies = {"untrained": SteeringMLP()}
    if args.policy:
        policies["trained"] = load_policy(args.policy)[0]
    horizons = [int(h) for h in args.horizons.split(",")]
    print("\n## Policy-gradient norm vs window length (training paths, same start states)\n")
    print(
        "| policy | horizon (steps) | grad norm | grad norm, discounted (gamma 0.99) | grad norm of the last step's loss |"
    )
    print("|---|---|---|---|---|")
    for name, policy in policies.items():
        for h, r in gradient_norm_vs_horizon(policy, sim, P.training_paths(), horizons).items():
            print(
                f"| {name} | {h} | {r['grad_norm']:.3g} | {r['grad_norm_discounted']:.3g} "
                f"| {r['last_step_grad_norm']:.3g} |"
            )

    if args.speeds:
        rows = []
        for speed in (float(v) for v in args.speeds.split(",")):
            train_paths = P.training_paths(speed=speed)
            paths = [*train_paths, P.held_out_path(speed=speed)]
            for p in paths:
                p.name = f"{p.name}@{speed:g}"
            gains, _ = tune_stanley(sim, train_paths, DEFAULT_GRID)
            rows += [(f"Stanley k={gains.k:g}", m) for m in evaluate_stanley(sim, gains, paths)[0]]
            if "trained" in policies:
                rows += [("MLP (trained at 1.5 m/s)", m) for m in evaluate_policy(sim, policies["trained"], paths)[0]]
        print("\n## Closed loop across the speed range\n")
        print(format_metrics_table(rows))


if __name__ == "__main__":
    main()
