"""
Steering benchmark: the MLP trained by ``genesis-grad train``'s default recipe against PPO (rsl-rl-lib, tuned),
Stanley with curvature feed-forward and pure pursuit (each tuned by grid search), on references none of them was
trained on, all driven by the same closed-loop evaluation (``evaluate.run_paths``) on the cylinder-wheel car.

Not a test: about 40 minutes on 2 CPU cores with its two stages run side by side (``--stage grad`` and ``--stage
ppo`` in two processes, then ``--stage report``), ``--stage all`` runs them one after the other.

- Training set of the learned controllers: ``recipe.training_set()`` (the built-in paths at 0.5, 1.5 and 3 m/s, 32
  smooth random references and 32 random tracks with corners, all of the ``train`` split).
- MLP: ``recipe.ITERATIONS`` windows x ``recipe.N_ENVS`` envs x 100 steps at ``recipe.LR`` (1 setting), ``--seeds``
  seeds.
- PPO: the same references, observation and per-step loss (as minus the reward). Tuning: the 8 settings of
  ``ppo.PPO_GRID`` trained with seed 0 for ``--ppo-select-factor`` x the MLP's env-steps each, scored on the monitor
  references; the best one trained with every seed for ``--ppo-factor`` x the MLP's env-steps.
- Stanley-FF and pure pursuit: 36 gain sets each (``STANLEY_FF_GRID``, ``PURE_PURSUIT_GRID``), scored on the tuning
  references (the feasible built-in ones, 4 random references and 4 random tracks of the ``train`` split); and, for
  the comparison on tracks, the same grids scored on the evaluated track itself (tuned on it: the best a user gets by
  tuning a classical controller for their track).
- Evaluation, never trained or tuned on: per speed (0.5, 1.5, 3, 5 m/s), the figure eight and ``--eval-random`` random
  references of the ``held_out`` split at that constant speed; ``--eval-random`` held-out random references and
  tracks with varying speed; the hand-made tracks (``paths.hand_made_tracks()``) and 3 held-out random tracks.
- Training cost: env-steps and process CPU time to reach lateral-RMS levels on ``--monitor`` random references and
  tracks of the ``train`` split outside the training set, evaluated ``--evals`` times along each learned controller's
  run (the same number for the MLP and PPO); the CPU time is the training's own up to that evaluation, evaluations
  excluded. ``--reuse DIR`` takes the classical tuning and PPO's setting selection (both deterministic for the same
  grids, references and budgets) from an earlier run instead of redoing them.

Usage: python benchmarks/steering.py [--stage all|grad|ppo|report] [--seeds 0,1,2] [--out out/benchmark]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from genesis_grad.steering import paths as P
from genesis_grad.steering import recipe
from genesis_grad.steering.baselines import TUNED, evaluate_stanley, tune_gains
from genesis_grad.steering.evaluate import PathMetrics, evaluate_policy, mean_lateral_rms, run_paths
from genesis_grad.steering.policy import SteeringMLP, save_policy
from genesis_grad.steering.ppo import PPO_GRID, PPOConfig, train_ppo
from genesis_grad.steering.sim import SteeringSim
from genesis_grad.steering.train import TrainConfig, train_gradient

SPEEDS = (0.5, 1.5, 3.0, 5.0)
MLP, PPO, STANLEY, PURSUIT = "MLP (gradient)", "PPO (tuned)", "Stanley-FF", "pure pursuit"


def peak_lateral_accel(path: P.ReferencePath) -> float:
    return float(np.max(path["speed"] ** 2 * np.abs(path.curvature)))


def feasible(path: P.ReferencePath) -> bool:
    return peak_lateral_accel(path) <= P.MAX_LATERAL_ACCEL * 1.05


def reference_sets(eval_random: int, monitor: int) -> dict:
    """Every reference of the benchmark, by role."""
    builtin = recipe.training_set(random=0, tracks=0)
    tune = [p for p in builtin if feasible(p)] + P.random_references(4, "train") + [P.random_track(i) for i in range(4)]
    groups = {}
    for v in SPEEDS:
        held = [P.held_out_path(speed=v)] + P.random_references(eval_random, "held_out", speed_range=(v, v))
        groups[f"{v:g}"] = [p for p in held if feasible(p)]
    groups["0.5-5 varying, smooth"] = P.random_references(eval_random, "held_out", first=100)
    groups["0.5-5 varying, tracks"] = [P.random_track(100 + i, "held_out") for i in range(eval_random)]
    tracks = P.hand_made_tracks()
    tracks += [P.random_track(200 + i, "held_out") for i in range(3)]
    return {
        "train": recipe.training_set(),
        "tune": tune,
        "monitor": P.random_references(monitor, "train", first=10_000)
        + [P.random_track(10_000 + i) for i in range(monitor)],
        "groups": groups,
        "tracks": tracks,
    }


def mlp_env_steps(args) -> int:
    """The MLP's training budget in env-steps: PPO's budgets are multiples of it."""
    return args.grad_iterations * args.grad_envs * TrainConfig.horizon


def metrics_json(metrics) -> list[dict]:
    return [m.as_dict() for m in metrics]


class TrainingClock:
    """
    Process CPU time of a training run, its evaluations excluded, read at each evaluation: ``timed(eval_fn)`` is the
    evaluation to hand to the trainer, ``at_evals`` the training CPU seconds spent before each of its calls.
    """

    def __init__(self) -> None:
        self.start = time.process_time()
        self.in_evals = 0.0
        self.at_evals: list[float] = []

    def timed(self, eval_fn):
        def timed_eval(*args):
            t0 = time.process_time()
            self.at_evals.append(t0 - self.start - self.in_evals)
            value = eval_fn(*args)
            self.in_evals += time.process_time() - t0
            return value

        return timed_eval

    def training_cpu(self) -> float:
        return time.process_time() - self.start - self.in_evals


def grad_stage(args, refs, out: Path) -> None:
    """Classical tuning (on the tuning set and on each track) and the MLP's seeds."""
    sim = SteeringSim(n_envs=args.eval_envs, requires_grad=False)
    eval_paths = [p for ps in refs["groups"].values() for p in ps]
    result = {"classical": {}, "mlp": {}}
    if args.reuse:
        # The tuning is deterministic: the same grids on the same references give the same gains and scores.
        result["classical"] = json.loads((Path(args.reuse) / "grad.json").read_text())["classical"]
        result["classical_from"] = args.reuse
    for label, (gains_class, controller_class, grid) in TUNED.items():
        if label in result["classical"]:
            continue
        t0 = time.process_time()
        best, scores = tune_gains(sim, refs["tune"], gains_class, controller_class, grid)
        entry = {"gains": vars(best), "sets": len(scores), "cpu_s": time.process_time() - t0}
        entry["groups"] = metrics_json(evaluate_stanley(sim, best, eval_paths)[0])
        entry["tracks"] = []
        for track in refs["tracks"]:
            on_track, _ = tune_gains(sim, [track], gains_class, controller_class, grid)
            entry["tracks"].append(
                {"gains": vars(on_track), **evaluate_stanley(sim, on_track, [track])[0][0].as_dict()}
            )
        result["classical"][label] = entry
        print(f"{label}: {len(scores)} gain sets, best {best}, {entry['cpu_s']:.0f} s CPU", flush=True)

    grad_sim = SteeringSim(n_envs=args.grad_envs, requires_grad=True)
    budget = mlp_env_steps(args)
    for seed in args.seeds:
        torch.manual_seed(seed)
        policy = SteeringMLP()
        clock = TrainingClock()
        history = train_gradient(
            policy,
            grad_sim,
            refs["train"],
            iterations=args.grad_iterations,
            cfg=TrainConfig(lr=args.grad_lr, seed=seed),
            eval_fn=clock.timed(lambda p: mean_lateral_rms(evaluate_policy(sim, p, refs["monitor"])[0])),
            eval_every_env_steps=budget // args.evals,
            progress=False,
        )
        cpu = clock.training_cpu()
        # With its budget, as the shipped policy (a copy of seed 0's) carries it for the demo's plot.
        save_policy(policy, out / f"policy_grad_seed{seed}.pt", iteration=args.grad_iterations, env_steps=budget)
        result["mlp"][str(seed)] = {
            "history": history.as_dict(),
            "cpu_s": cpu,
            "eval_cpu_s": clock.at_evals,
            "groups": metrics_json(evaluate_policy(sim, policy, eval_paths)[0]),
            "tracks": metrics_json(evaluate_policy(sim, policy, refs["tracks"])[0]),
        }
        print(f"MLP seed {seed}: {cpu:.0f} s CPU, monitor {history.eval_lateral_rms[-1]:.4f} m", flush=True)
        (out / "grad.json").write_text(json.dumps(result, default=str))


def ppo_stage(args, refs, out: Path) -> None:
    """PPO: the settings of ``PPO_GRID`` with seed 0, then the best one with every seed."""
    sim = SteeringSim(n_envs=args.ppo_envs, requires_grad=False)
    eval_paths = [p for ps in refs["groups"].values() for p in ps]
    grad_budget = mlp_env_steps(args)
    cfg = TrainConfig()

    def monitor(controller) -> float:
        runs = run_paths(
            sim, refs["monitor"], lambda ref, idx: controller, preview_distances=controller.preview_distances
        )
        return mean_lateral_rms(runs[0])

    names = list(PPO_GRID)
    settings = [dict(zip(names, values, strict=True)) for values in itertools.product(*PPO_GRID.values())]
    result = {"selection": [], "seeds": {}}
    if args.reuse:
        # The same settings at the same budget, seed 0: a previous run's selection is this run's.
        previous = json.loads((Path(args.reuse) / "ppo.json").read_text())
        result["selection"] = previous["selection"]
        result["selection_from"] = args.reuse
        settings = []
    for setting in settings:
        t0 = time.process_time()
        controller, _ = train_ppo(
            sim, refs["train"], int(args.ppo_select_factor * grad_budget), cfg, PPOConfig(**setting)
        )
        score = monitor(controller)
        result["selection"].append({"setting": setting, "monitor": score, "cpu_s": time.process_time() - t0})
        print(f"PPO {setting}: monitor {score:.4f} m", flush=True)
    best = min(result["selection"], key=lambda r: r["monitor"] if math.isfinite(r["monitor"]) else math.inf)
    result["best"] = best["setting"]
    budget = int(args.ppo_factor * grad_budget)
    for seed in args.seeds:
        clock = TrainingClock()
        controller, history = train_ppo(
            sim,
            refs["train"],
            budget,
            cfg,
            PPOConfig(**best["setting"]),
            eval_fn=clock.timed(monitor),
            eval_every_env_steps=budget // args.evals,
            seed=seed,
        )
        controllers = lambda ref, idx, controller=controller: controller  # noqa: E731
        result["seeds"][str(seed)] = {
            "history": history.as_dict(),
            "cpu_s": clock.training_cpu(),
            "eval_cpu_s": clock.at_evals,
            "groups": metrics_json(
                run_paths(sim, eval_paths, controllers, preview_distances=controller.preview_distances)[0]
            ),
            "tracks": metrics_json(
                run_paths(sim, refs["tracks"], controllers, preview_distances=controller.preview_distances)[0]
            ),
        }
        print(f"PPO seed {seed}: monitor {history.eval_lateral_rms[-1]:.4f} m", flush=True)
        (out / "ppo.json").write_text(json.dumps(result, default=str))


def _cells(entries: list[list[dict]], sl: slice) -> tuple[float, float, float]:
    """Mean, min and max over seeds of the group's mean lateral RMS (incomplete runs penalized)."""
    values = [mean_lateral_rms([PathMetrics(**m) for m in e[sl]]) for e in entries]
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def _fmt(mean: float, low: float, high: float) -> str:
    return f"{mean:.4f}" if low == high else f"{mean:.4f} ({low:.4f}-{high:.4f})"


def steps_to_reach(env_steps, values, target) -> float:
    """First env-step count at which ``values`` is <= ``target`` (nan if never)."""
    return next((float(s) for s, v in zip(env_steps, values, strict=True) if v <= target), math.nan)


def report(args, refs, out: Path) -> None:
    grad = json.loads((out / "grad.json").read_text())
    ppo = json.loads((out / "ppo.json").read_text())
    mlp_runs = list(grad["mlp"].values())
    ppo_runs = list(ppo["seeds"].values())
    seeds = f"{len(mlp_runs)} seeds"
    print(f"\n## Held-out references: lateral RMS (m), mean over {seeds} (min-max) for the learned controllers\n")
    print(f"| speed (m/s) | references | {MLP} | {PPO} | {STANLEY} | {PURSUIT} | best |")
    print("|---|---|---|---|---|---|---|")
    first = 0
    for group, paths in refs["groups"].items():
        sl = slice(first, first + len(paths))
        first += len(paths)
        cells = {
            MLP: _cells([r["groups"] for r in mlp_runs], sl),
            PPO: _cells([r["groups"] for r in ppo_runs], sl),
            STANLEY: _cells([grad["classical"][STANLEY]["groups"]], sl),
            PURSUIT: _cells([grad["classical"][PURSUIT]["groups"]], sl),
        }
        best = min(cells, key=lambda k: cells[k][0])
        worst_max = max(m["max_lateral"] for r in mlp_runs for m in r["groups"][sl])
        names = ", ".join(p.name for p in paths)
        row = " | ".join(_fmt(*cells[k]) for k in cells)
        print(f"| {group} | {names} (MLP worst max {worst_max:.2f} m) | {row} | {best} |")

    print(f"\n## Tracks, against classical controllers tuned on each track itself (lateral RMS / max, m; {seeds})\n")
    print(f"| track | {MLP} | {STANLEY} tuned on it | {PURSUIT} tuned on it | MLP / best tuned |")
    print("|---|---|---|---|---|")
    for i, track in enumerate(refs["tracks"]):
        mlp = [r["tracks"][i] for r in mlp_runs]
        st, pp = grad["classical"][STANLEY]["tracks"][i], grad["classical"][PURSUIT]["tracks"][i]

        def one(m):
            done = "" if m["completion"] >= 1.0 else f", completion {m['completion']:.2f}"
            return f"{m['lateral_rms']:.4f} / {m['max_lateral']:.3f}{done}"

        def score(m):
            return m["lateral_rms"] if m["completion"] >= 1.0 else math.inf

        rms = [m["lateral_rms"] for m in mlp]
        worst = min(m["completion"] for m in mlp)
        done = "" if worst >= 1.0 else f", completion >= {worst:.2f}"
        mlp_cell = (
            f"{np.mean(rms):.4f} ({min(rms):.4f}-{max(rms):.4f}) / {max(m['max_lateral'] for m in mlp):.3f}{done}"
        )
        best = min(score(st), score(pp))
        ratio = f"{np.mean(rms) / best:.2f}" if math.isfinite(best) and worst >= 1.0 else "-"
        print(f"| {track.name} | {mlp_cell} | {one(st)} | {one(pp)} | {ratio} |")

    print(f"\n## Training cost to reach the tuned PPO's final level on the monitor references ({seeds})\n")
    ppo_final = float(np.mean([r["history"]["eval_lateral_rms"][-1] for r in ppo_runs]))
    levels = [2.0 * ppo_final, ppo_final]
    print("| level (m) | MLP env-steps | MLP CPU s | PPO env-steps | PPO CPU s | steps ratio | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for level in levels:
        cols = []
        for runs in (mlp_runs, ppo_runs):
            steps, cpu = [], []
            for r in runs:
                h = r["history"]
                s = steps_to_reach(h["eval_env_steps"], h["eval_lateral_rms"], level)
                steps.append(s)
                i = h["eval_env_steps"].index(int(s)) if math.isfinite(s) else None
                if i is None:
                    cpu.append(math.nan)
                elif "eval_cpu_s" in r:
                    # The training CPU time spent before that evaluation, evaluations excluded (measured).
                    cpu.append(r["eval_cpu_s"][i])
                else:
                    # Older results: that evaluation's share of the run's training wall-clock time.
                    cpu.append(h["eval_wall_clock"][i] / h["wall_clock"][-1] * r["cpu_s"])
            cols.append((float(np.mean(steps)), float(np.mean(cpu))))
        (gs_, gc), (ps_, pc) = cols

        def ratio(a, b):
            return f"{a / b:.1f}" if math.isfinite(a) and math.isfinite(b) and b > 0 else "-"

        print(f"| {level:.4f} | {gs_:.0f} | {gc:.0f} | {ps_:.0f} | {pc:.0f} | {ratio(ps_, gs_)} | {ratio(pc, gc)} |")
    print(f"\nPPO settings tried: {len(ppo['selection'])}; best {ppo['best']}")
    for name, source in (
        ("PPO setting selection", ppo.get("selection_from")),
        ("classical tuning", grad.get("classical_from")),
    ):
        if source:
            print(f"({name} taken from the earlier run in {source})")
    for entry in ppo["selection"]:
        print(f"- {entry['setting']}: monitor {entry['monitor']:.4f} m")
    for label in (STANLEY, PURSUIT):
        print(f"{label}: {grad['classical'][label]['sets']} gain sets, best {grad['classical'][label]['gains']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("all", "grad", "ppo", "report"), default="all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grad-iterations", type=int, default=recipe.ITERATIONS)
    parser.add_argument("--grad-envs", type=int, default=recipe.N_ENVS)
    parser.add_argument("--grad-lr", type=float, default=recipe.LR)
    parser.add_argument("--ppo-factor", type=float, default=2.5, help="PPO env-steps per seed, x the MLP's")
    parser.add_argument("--ppo-select-factor", type=float, default=0.5, help="env-steps per PPO setting tried")
    parser.add_argument("--ppo-envs", type=int, default=64)
    parser.add_argument("--eval-envs", type=int, default=64)
    parser.add_argument("--eval-random", type=int, default=4)
    parser.add_argument("--monitor", type=int, default=2)
    parser.add_argument("--evals", type=int, default=32, help="monitor evaluations along each training run")
    parser.add_argument(
        "--reuse",
        metavar="DIR",
        help="take the classical tuning and the PPO setting selection from an earlier run's grad.json / ppo.json",
    )
    parser.add_argument("--out", default="out/benchmark")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    refs = reference_sets(args.eval_random, args.monitor)
    if args.stage in ("all", "grad"):
        grad_stage(args, refs, out)
    if args.stage in ("all", "ppo"):
        ppo_stage(args, refs, out)
    if args.stage in ("all", "report"):
        report(args, refs, out)


if __name__ == "__main__":
    main()
