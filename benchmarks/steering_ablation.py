"""
Does the preview help? The same gradient training, with and without the preview inputs of the MLP (the reference
curvature and, since observation version 2, the reference speed ahead; the README's numbers predate the latter).

Both runs start from the same seed, see the same windows and get the same budget; the closed-loop lateral RMS on the
training paths and the held-out path shows what the preview buys over the error state (plus speed and wheel angle)
alone.

Usage: python benchmarks/steering_ablation.py [--iterations 150] [--n-envs 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from genesis_grad.steering import paths as P
from genesis_grad.steering.evaluate import evaluate_policy, format_metrics_table, mean_lateral_rms
from genesis_grad.steering.policy import DEFAULT_PREVIEW, SteeringMLP
from genesis_grad.steering.sim import SteeringSim
from genesis_grad.steering.train import TrainConfig, train_gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    train_paths = P.training_paths()
    all_paths = [*train_paths, P.held_out_path()]
    rows, summary = [], []
    for label, preview in (("with preview", DEFAULT_PREVIEW), ("without preview", ())):
        torch.manual_seed(args.seed)
        policy = SteeringMLP(preview_distances=preview)
        t0 = time.time()
        train_gradient(policy, sim, train_paths, iterations=args.iterations, cfg=TrainConfig(seed=args.seed))
        metrics, _ = evaluate_policy(sim, policy, all_paths)
        rows += [(f"MLP {label}", m) for m in metrics]
        summary.append(
            (label, mean_lateral_rms(metrics[: len(train_paths)]), metrics[-1].lateral_rms, time.time() - t0)
        )
    print(f"\n## Curvature preview ablation ({args.iterations} windows x {args.n_envs} envs x 100 steps each)\n")
    print(format_metrics_table(rows))
    print("\n| MLP | mean lateral RMS, training paths (m) | held-out lateral RMS (m) | wall-clock (s) |")
    print("|---|---|---|---|")
    for label, train_rms, held_out_rms, seconds in summary:
        print(f"| {label} | {train_rms:.4f} | {held_out_rms:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
