"""
Command line entry point ``genesis-grad``.

Subcommands live in the ``SUBCOMMANDS`` registry (name -> ``Subcommand``), so that other modules add theirs
(``doctor``, ``gradcheck``) with ``register`` without touching the parser code. Heavy imports (Genesis, torch) happen
inside the handlers, so ``genesis-grad --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Subcommand:
    """A ``genesis-grad`` subcommand: its help line, its argument setup and its handler (returns the exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Decorator registering ``run(args) -> int`` as the subcommand ``name``."""

    def decorator(run: Callable[[argparse.Namespace], int]):
        SUBCOMMANDS[name] = Subcommand(help=help, add_arguments=add_arguments, run=run)
        return run

    return decorator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genesis-grad", description="Differentiable Genesis rigid-body control: steering training and tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    # `doctor` and `gradcheck` (issue 4) set their own handler as `func`.
    from . import cli_diagnostics

    cli_diagnostics.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in SUBCOMMANDS:
        return int(args.func(args) or 0)
    return int(SUBCOMMANDS[args.command].run(args) or 0)


# ------------------------------------------------------------------ shared steering helpers


def _add_path_arguments(p: argparse.ArgumentParser, default_paths: str) -> None:
    p.add_argument(
        "--paths",
        default=default_paths,
        help=f"comma-separated generated paths (straight, lane_change, circle, sine, figure_eight); default {default_paths}",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FILE.csv",
        help="reference path CSV (columns pos_x, pos_y, yaw, speed); repeatable; replaces --paths",
    )
    p.add_argument(
        "--speed",
        default="1.5",
        help="reference speed of generated paths (m/s); a comma-separated list makes one copy of each path per speed "
        "(e.g. 0.5,1.5,3 to train a policy for the whole speed range)",
    )


def _paths_from_args(args):
    from genesis_grad_patch.steering import paths as P

    if args.reference:
        return [P.load_reference_csv(f) for f in args.reference]
    speeds = _speeds(args)
    paths = []
    for name in (n.strip() for n in args.paths.split(",")):
        for speed in speeds if name else ():
            path = P.make_path(name, speed=speed)
            if len(speeds) > 1:
                path.name = f"{name}@{speed:g}"
            paths.append(path)
    return paths


def _speeds(args) -> list[float]:
    return [float(v) for v in str(args.speed).split(",") if v.strip()]


def _add_train_arguments(p: argparse.ArgumentParser, iterations: int) -> None:
    p.add_argument("--iterations", type=int, default=iterations, help="training windows (gradient steps)")
    p.add_argument("--horizon", type=int, default=100, help="steps per truncated BPTT window")
    p.add_argument("--n-envs", type=int, default=16, help="parallel environments")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out", help="output directory (checkpoints, plots, metrics)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bar")


def _train(args, sim, paths, out: Path):
    import torch

    from genesis_grad_patch.steering.policy import SteeringMLP
    from genesis_grad_patch.steering.train import TrainConfig, train_gradient

    torch.manual_seed(args.seed)
    policy = SteeringMLP()
    cfg = TrainConfig(horizon=args.horizon, lr=args.lr, seed=args.seed)
    history = train_gradient(
        policy,
        sim,
        paths,
        iterations=args.iterations,
        cfg=cfg,
        checkpoint_dir=out / "checkpoints",
        progress=not args.no_progress,
    )
    return policy, history


def _print_table(rows) -> None:
    from genesis_grad_patch.steering.evaluate import format_metrics_table

    print(format_metrics_table(rows))


# ------------------------------------------------------------------ train


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _add_path_arguments(p, "lane_change,sine,circle")
    _add_train_arguments(p, iterations=200)


@register("train", "Train the MLP steering controller by back-propagation through the physics.", _train_arguments)
def _cmd_train(args) -> int:
    from genesis_grad_patch.steering.evaluate import evaluate_policy, plot_training_curve
    from genesis_grad_patch.steering.sim import SteeringSim

    out = Path(args.out)
    paths = _paths_from_args(args)
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    t0 = time.time()
    policy, history = _train(args, sim, paths, out)
    print(f"trained {args.iterations} windows, {sim.env_steps} env-steps, {time.time() - t0:.0f} s")
    metrics, _ = evaluate_policy(sim, policy, paths)
    _print_table([("mlp", m) for m in metrics])
    plot_training_curve(
        {"gradient": {"env_steps": history["env_steps"], "loss": history["loss"]}}, out / "training_curve.png"
    )
    (out / "train_metrics.json").write_text(json.dumps([m.as_dict() for m in metrics], indent=2))
    print(f"checkpoint: {out / 'checkpoints' / 'policy_last.pt'}")
    return 0


# ------------------------------------------------------------------ eval


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _add_path_arguments(p, "lane_change,sine,circle,figure_eight")
    p.add_argument("--policy", help="policy checkpoint (from train / demo); omit to evaluate Stanley only")
    p.add_argument("--stanley", action="store_true", help="also run the Stanley baseline (gains tuned on the paths)")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--out", default="out")


@register("eval", "Closed-loop evaluation of a trained policy (and/or Stanley) on whole paths.", _eval_arguments)
def _cmd_eval(args) -> int:
    from genesis_grad_patch.steering.baselines import SMALL_GRID, evaluate_stanley, tune_stanley
    from genesis_grad_patch.steering.evaluate import evaluate_policy, plot_errors, plot_trajectories
    from genesis_grad_patch.steering.policy import load_policy
    from genesis_grad_patch.steering.sim import SteeringSim

    if not args.policy and not args.stanley:
        print("nothing to evaluate: give --policy CKPT and/or --stanley", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = _paths_from_args(args)
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    rows, runs, results = [], {}, {}
    if args.policy:
        policy, _ = load_policy(args.policy)
        metrics, records = evaluate_policy(sim, policy, paths)
        rows += [("mlp", m) for m in metrics]
        runs["mlp"], results["mlp"] = records, [m.as_dict() for m in metrics]
    if args.stanley:
        gains, _ = tune_stanley(sim, paths, SMALL_GRID)
        metrics, records = evaluate_stanley(sim, gains, paths)
        rows += [(f"stanley k={gains.k:g}", m) for m in metrics]
        runs["stanley"], results["stanley"] = records, [m.as_dict() for m in metrics]
    _print_table(rows)
    plot_trajectories(runs, out / "eval_trajectories.png")
    plot_errors(runs, out / "eval_errors.png")
    (out / "eval_metrics.json").write_text(json.dumps(results, indent=2))
    print(f"plots: {out / 'eval_trajectories.png'}, {out / 'eval_errors.png'}")
    return 0


# ------------------------------------------------------------------ demo


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    _add_path_arguments(p, "sine")
    _add_train_arguments(p, iterations=60)
    p.add_argument("--held-out", default="figure_eight", help="generated path evaluated but never trained on")


@register(
    "demo",
    "Short end-to-end run (< 10 min on 2 CPU cores): Stanley baseline, MLP before/after gradient training, plots.",
    _demo_arguments,
)
def _cmd_demo(args) -> int:
    from genesis_grad_patch.steering import paths as P
    from genesis_grad_patch.steering.baselines import SMALL_GRID, evaluate_stanley, tune_stanley
    from genesis_grad_patch.steering.evaluate import (
        evaluate_policy,
        plot_errors,
        plot_training_curve,
        plot_trajectories,
    )
    from genesis_grad_patch.steering.policy import SteeringMLP
    from genesis_grad_patch.steering.sim import SteeringSim

    t_start = time.time()
    out = Path(args.out)
    train_paths = _paths_from_args(args)
    eval_paths = train_paths + ([P.make_path(args.held_out, speed=_speeds(args)[0])] if args.held_out else [])
    print(f"[demo] building the car scene ({args.n_envs} envs; the first run compiles kernels, ~1-2 min)")
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True)
    print(f"[demo] scene ready after {time.time() - t_start:.0f} s")

    gains, _ = tune_stanley(sim, train_paths, SMALL_GRID)
    stanley_metrics, stanley_runs = evaluate_stanley(sim, gains, eval_paths)
    print(f"[demo] Stanley tuned on the training path(s): k={gains.k:g}, k_soft={gains.k_soft:g}")

    import torch

    torch.manual_seed(args.seed)
    before_metrics, before_runs = evaluate_policy(sim, SteeringMLP(), eval_paths)

    print(
        f"[demo] training {args.iterations} windows of {args.horizon} steps x {args.n_envs} envs (the first "
        "backward pass compiles the reverse kernels, ~35 s)"
    )
    steps_before = sim.env_steps
    policy, history = _train(args, sim, train_paths, out)
    train_steps = sim.env_steps - steps_before
    after_metrics, after_runs = evaluate_policy(sim, policy, eval_paths)

    rows = [("MLP before", m) for m in before_metrics]
    rows += [("MLP after", m) for m in after_metrics]
    rows += [(f"Stanley (k={gains.k:g})", m) for m in stanley_metrics]
    print()
    _print_table(rows)
    print(f"\ngradient training: {train_steps} simulated env-steps, {history['wall_clock'][-1]:.0f} s")

    runs = {"MLP before": before_runs, "MLP after": after_runs, "Stanley": stanley_runs}
    plots = [
        plot_trajectories(runs, out / "demo_trajectories.png", title="closed-loop tracking"),
        plot_errors({"MLP after": after_runs, "Stanley": stanley_runs}, out / "demo_errors.png"),
        plot_training_curve(
            {"gradient": {"env_steps": history["env_steps"], "loss": history["loss"]}}, out / "demo_training_curve.png"
        ),
    ]
    results = {
        "mlp_before": [m.as_dict() for m in before_metrics],
        "mlp_after": [m.as_dict() for m in after_metrics],
        "stanley": [m.as_dict() for m in stanley_metrics],
        "stanley_gains": vars(gains),
        "train_env_steps": train_steps,
    }
    (out / "demo_metrics.json").write_text(json.dumps(results, indent=2))
    print("plots: " + ", ".join(str(p) for p in plots))
    print(f"[demo] total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
