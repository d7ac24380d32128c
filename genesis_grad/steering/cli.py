"""
``genesis-grad train | eval | demo``: the steering application from the command line (listed in ``COMMANDS``, which
``genesis_grad.cli`` assembles). Heavy imports (Genesis, torch) happen inside the handlers, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from genesis_grad.arguments import (
    SEED_LIMIT,
    Subcommand,
    existing_file,
    non_negative_int,
    output_dir,
    parse_number,
    positive_float,
    positive_int,
    random_seed,
    tensorboard_dir,
)

# ------------------------------------------------------------------ argument types


def speed_list(text: str) -> list[float]:
    """argparse type: comma-separated positive speeds (m/s); a car told to drive at 0 m/s never finishes a path."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError("needs at least one speed in m/s, e.g. 1.5 or 0.5,1.5,3")
    speeds = []
    for item in items:
        if not item:
            raise argparse.ArgumentTypeError(f"empty entry in {text!r}")
        value = parse_number(item, float)
        if value <= 0.0:
            raise argparse.ArgumentTypeError(f"speeds must be positive (m/s), got {item!r}")
        speeds.append(value)
    return speeds


def _generator_names() -> list[str]:
    from genesis_grad.steering.paths import GENERATORS

    return sorted(GENERATORS)


def path_names(text: str) -> list[str]:
    """argparse type: comma-separated names of generated paths (``steering.paths.GENERATORS``)."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"needs at least one path, from {', '.join(_generator_names())}")
    for name in names:
        if name not in _generator_names():
            what = f"unknown path {name!r}" if name else f"empty entry in {text!r}"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(_generator_names())}")
    return names


def refuse_existing_run(command: str, out: Path, overwrite: bool) -> int:
    """Exit status 2 with one line when `out` holds another run's checkpoints and `--overwrite` was not given; with it,
    the old checkpoints are removed so that the directory holds one run only. 0 when the run may go on."""
    checkpoints = out / "checkpoints"
    # The policies, and the training state `--resume` would go on from.
    found = (
        sorted([*checkpoints.glob("policy_*.pt"), *checkpoints.glob("training_state.pt")])
        if checkpoints.is_dir()
        else []
    )
    if not found:
        return 0
    if not overwrite:
        print(
            f"genesis-grad {command}: error: {str(out)!r} holds another run ({len(found)} checkpoint(s) in "
            f"{str(checkpoints)!r}); choose another --out, or pass --overwrite to replace it",
            file=sys.stderr,
        )
        return 2
    for path in found:
        path.unlink()
    return 0


# ------------------------------------------------------------------ shared helpers


def _add_path_arguments(p: argparse.ArgumentParser, default_paths: str, default_speed: str = "1.5") -> None:
    p.add_argument(
        "--paths",
        type=path_names,
        default=default_paths,
        help=f"comma-separated generated paths (straight, lane_change, circle, sine, figure_eight); default {default_paths}",
    )
    p.add_argument(
        "--reference",
        type=existing_file,
        action="append",
        default=[],
        metavar="FILE.csv",
        help="reference path CSV (columns pos_x, pos_y, yaw in rad, speed in m/s > 0); repeatable; replaces --paths",
    )
    p.add_argument(
        "--speed",
        type=speed_list,
        default=default_speed,
        help="reference speed of generated paths (m/s, > 0); a comma-separated list makes one copy of each path per "
        f"speed (default {default_speed})",
    )


def _add_random_argument(p: argparse.ArgumentParser, split: str, default: int = 0) -> None:
    what = "training" if split == "train" else "held-out (never trained on)"
    # None: the default, which a --reference makes 0 (training on one's own tracks adds nothing unasked).
    unless = ", 0 with --reference" if default else ""
    p.add_argument(
        "--random",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"add N seeded random {what} references: smooth curvature up to 0.8x the steering limit, speed "
        f"varying in 0.5-5 m/s (default {default}{unless})",
    )
    p.add_argument(
        "--tracks",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"add N seeded random {what} tracks: straights and corners of 20-90 degrees, sharp or on 1.4-5 m "
        f"radii, hairpins, speed varying in 0.5-5 m/s and capped in the corners (default {default}{unless})",
    )
    p.set_defaults(random_default=default)


def _paths_from_args(args):
    from genesis_grad.steering import paths as P

    if args.reference:
        # The reader's warnings (a yaw that contradicts the path) as one line each, like the errors.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            paths = [P.load_reference_csv(f) for f in args.reference]
        for warning in caught:
            print(f"genesis-grad {args.command}: warning: {warning.message}", file=sys.stderr)
    else:
        paths = []
        for name in args.paths:
            for speed in args.speed:
                path = P.make_path(name, speed=speed)
                if len(args.speed) > 1:
                    path.name = f"{name}@{speed:g}"
                paths.append(path)
    # The split follows the command: eval draws from the held-out stream, which training never sees.
    split = "held_out" if args.command == "eval" else "train"
    default = 0 if args.reference else getattr(args, "random_default", 0)
    n_random, n_tracks = (default if n is None else n for n in (args.random, args.tracks))
    return paths + P.random_references(n_random, split) + [P.random_track(i, split) for i in range(n_tracks)]


def _add_wheels_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wheels",
        choices=("sphere", "cylinder"),
        default="cylinder",
        help="the car's wheel shapes: cylinders, as real cars have them (the default), or spheres (one contact each)",
    )


def _add_train_arguments(p: argparse.ArgumentParser, iterations: int, n_envs: int, lr: float) -> None:
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=iterations,
        help="training windows (gradient steps; default %(default)s)",
    )
    p.add_argument(
        "--horizon", type=positive_int, default=100, help="steps per truncated BPTT window (default %(default)s)"
    )
    p.add_argument("--n-envs", type=positive_int, default=n_envs, help="parallel environments (default %(default)s)")
    _add_wheels_argument(p)
    p.add_argument(
        "--lr",
        type=positive_float,
        default=lr,
        help="Adam learning rate, cosine-decayed to 3e-4 over the run (default %(default)g)",
    )
    p.add_argument("--seed", type=random_seed, default=0, help=f"random seed, 0 to {SEED_LIMIT - 1} (default 0)")
    p.add_argument(
        "--out", type=output_dir, default="out", help="output directory (checkpoints, plots, metrics; default out)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (refused without this flag)"
    )
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bar")
    p.add_argument(
        "--tensorboard",
        type=tensorboard_dir,
        metavar="DIR",
        help="also write TensorBoard scalars per window (loss, lateral RMS, gradient norm, env-steps/s) to DIR",
    )


def _train(args, sim, paths, out: Path, dist=None):
    import contextlib

    import torch

    from genesis_grad.steering.policy import SteeringMLP
    from genesis_grad.steering.train import TrainConfig, train_gradient

    torch.manual_seed(args.seed)
    policy = SteeringMLP()
    cfg = TrainConfig(horizon=args.horizon, lr=args.lr, seed=args.seed)
    resume = getattr(args, "resume_state", None)
    if dist is not None:
        dist.broadcast_parameters(policy)
    logger = contextlib.nullcontext()
    if args.tensorboard and (dist is None or dist.is_main):
        from genesis_grad.steering.tensorboard_log import TensorBoardLogger

        logger = TensorBoardLogger(args.tensorboard)
    with logger:
        history = train_gradient(
            policy,
            sim,
            paths,
            iterations=args.iterations,
            cfg=cfg,
            checkpoint_dir=out / "checkpoints",
            progress=not args.no_progress,
            dist=dist,
            on_window=logger if args.tensorboard else None,
            resume=resume,
            run_config=run_config(args),
        )
    return policy, history


# The flags that make a training run what it is: `--resume` goes on only with the same ones.
_RUN_FLAGS = (
    "iterations",
    "horizon",
    "n_envs",
    "wheels",
    "lr",
    "seed",
    "paths",
    "reference",
    "speed",
    "random",
    "tracks",
)


def run_config(args) -> dict:
    """The run-defining flags of a `train` command, as plain data (stored with the training state)."""
    return {name: json.loads(json.dumps(getattr(args, name, None), default=str)) for name in _RUN_FLAGS}


def _resume_state(args) -> tuple[dict | None, str | None]:
    """The saved training state of the run in --out, or the one-line reason it cannot be resumed."""
    from genesis_grad.steering.train import TRAINING_STATE, load_training_state

    path = Path(args.out) / "checkpoints" / TRAINING_STATE
    if not path.is_file():
        return None, f"nothing to resume in {str(args.out)!r}: no {TRAINING_STATE} in its checkpoints"
    try:
        state = load_training_state(path)
    except Exception as exc:  # a torn or foreign file: said in one line, as a bad checkpoint is
        return None, f"{path}: unreadable training state ({str(exc).splitlines()[0]})"
    differ = {k: v for k, v in run_config(args).items() if state.get("run_config", {}).get(k) != v}
    if differ:
        saved = state.get("run_config", {})
        changes = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}" for k, v in differ.items())
        return None, f"--resume needs the flags of the run it continues: {changes}"
    if state["iteration"] >= args.iterations:
        return None, f"the run in {str(args.out)!r} is complete ({state['iteration']} windows): nothing to resume"
    return state, None


def _print_table(rows) -> None:
    from genesis_grad.steering.evaluate import format_metrics_table

    print(format_metrics_table(rows))


# ------------------------------------------------------------------ train


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from genesis_grad.steering import recipe

    p.epilog = (
        f"Without flags: the default recipe, one policy for 0.5-5 m/s and tracks with corners ({recipe.ITERATIONS} "
        f"windows of {recipe.N_ENVS} envs x 100 steps on the built-in paths at 0.5, 1.5 and 3 m/s, 32 random "
        "references and 32 random tracks): about 9 minutes of CPU time (2.5 s per window, forward and backward), "
        "plus 1-2 minutes compiling Genesis's kernels on a first run. With fewer envs, give a lower --lr."
    )
    _add_path_arguments(p, ",".join(recipe.PATHS), default_speed=",".join(f"{v:g}" for v in recipe.SPEEDS))
    _add_random_argument(p, "train", default=recipe.RANDOM)
    _add_train_arguments(p, iterations=recipe.ITERATIONS, n_envs=recipe.N_ENVS, lr=recipe.LR)
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --out where it stopped (Ctrl-C, or killed), exactly as if it had not: the same "
        "command otherwise",
    )
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="data-parallel processes (torch.distributed), each with n-envs / nproc environments of the global batch; "
        "default 1, or the job's size under torchrun",
    )


def _cmd_train(args) -> int:
    from genesis_grad.steering import distributed

    # `--nproc N`: start N ranks running this command, or join the job this process is a rank of (see distributed.py).
    nproc, error = distributed.resolve_nproc(args.nproc, args.n_envs)
    if error:
        print(f"genesis-grad train: error: {error}", file=sys.stderr)
        return 2
    if args.resume:
        if nproc > 1:
            print("genesis-grad train: error: --resume runs in one process: drop --nproc", file=sys.stderr)
            return 2
        args.resume_state, error = _resume_state(args)
        if error:
            print(f"genesis-grad train: error: {error}", file=sys.stderr)
            return 2
    elif not distributed.is_rank() and (status := refuse_existing_run("train", Path(args.out), args.overwrite)):
        return status
    # Read once, before any rank starts: a bad CSV is one line and status 2, a warning is printed once.
    paths = getattr(args, "loaded_paths", None) or _paths_from_args(args)
    if nproc > 1 and not distributed.is_rank():
        args.loaded_paths = paths
        return distributed.spawn_command(nproc, _cmd_train, args)
    dist = distributed.join(nproc)

    from genesis_grad.steering.evaluate import evaluate_policy, plot_training_curve
    from genesis_grad.steering.sim import CAR_FILES, SteeringSim
    from genesis_grad.steering.train import TrainingInterrupted

    out = Path(args.out)
    if dist is None or dist.is_main:
        print(
            f"[train] building the car scene ({args.n_envs} envs; a first run compiles kernels, ~1-2 min)", flush=True
        )
    sim = SteeringSim(n_envs=args.n_envs // nproc, requires_grad=True, car_file=CAR_FILES[args.wheels])
    t0 = time.time()
    try:
        policy, history = _train(args, sim, paths, out, dist=dist)
    except TrainingInterrupted as stop:
        print(
            f"genesis-grad train: interrupted after window {stop.iterations} of {args.iterations}; "
            f"{out / 'checkpoints' / 'policy_last.pt'} holds its policy. Go on with the same command and --resume",
            file=sys.stderr,
        )
        return 130
    if dist is not None and not dist.is_main:
        return distributed.leave(dist)
    print(f"trained {args.iterations} windows, {history.env_steps[-1]} env-steps, {time.time() - t0:.0f} s")
    metrics, _ = evaluate_policy(sim, policy, paths)
    _print_table([("mlp", m) for m in metrics])
    plot_training_curve(
        {"gradient": {"env_steps": history.env_steps, "loss": history.loss}}, out / "training_curve.png"
    )
    (out / "train_metrics.json").write_text(json.dumps([m.as_dict() for m in metrics], indent=2))
    print(f"checkpoint: {out / 'checkpoints' / 'policy_last.pt'}")
    return distributed.leave(dist)


# ------------------------------------------------------------------ eval


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _add_path_arguments(p, "lane_change,sine,circle,figure_eight")
    _add_random_argument(p, "held_out")
    p.add_argument(
        "--policy", type=existing_file, help="policy checkpoint (from train / demo); omit to evaluate Stanley only"
    )
    p.add_argument("--stanley", action="store_true", help="also run the Stanley baseline (gains tuned on the paths)")
    p.add_argument(
        "--stanley-grid",
        choices=("full", "small"),
        default="full",
        help="Stanley gains searched: full (45 sets, default) or small (3 sets, quick but a weak baseline)",
    )
    p.add_argument("--n-envs", type=positive_int, default=8, help="parallel environments (default %(default)s)")
    _add_wheels_argument(p)
    p.add_argument("--out", type=output_dir, default="out", help="output directory (plots, metrics; default out)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar of the Stanley tuning")


def _cmd_eval(args) -> int:
    from genesis_grad.steering.baselines import DEFAULT_GRID, SMALL_GRID, evaluate_stanley, tune_stanley
    from genesis_grad.steering.evaluate import evaluate_policy, plot_errors, plot_trajectories
    from genesis_grad.steering.policy import load_policy
    from genesis_grad.steering.sim import CAR_FILES, SteeringSim

    if not args.policy and not args.stanley:
        print("nothing to evaluate: give --policy CKPT and/or --stanley", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = _paths_from_args(args)
    # Read the checkpoint before building the scene, so that an unusable one is reported at once.
    policy = load_policy(args.policy)[0] if args.policy else None
    print(f"[eval] building the car scene ({args.n_envs} envs; a first run compiles kernels, ~1-2 min)", flush=True)
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True, car_file=CAR_FILES[args.wheels])
    rows, runs, results = [], {}, {}
    if policy is not None:
        metrics, records = evaluate_policy(sim, policy, paths)
        rows += [("mlp", m) for m in metrics]
        runs["mlp"], results["mlp"] = records, [m.as_dict() for m in metrics]
    if args.stanley:
        grid = DEFAULT_GRID if args.stanley_grid == "full" else SMALL_GRID
        gains, _ = tune_stanley(sim, paths, grid, progress=not args.no_progress)
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
    p.add_argument(
        "--reference",
        type=existing_file,
        default=None,
        metavar="FILE.csv",
        help="the track to drive (a reference CSV); default: the hand-made user_track shipped with the package "
        "(corners of 1.3-1.6 m radius, close to the car's 1.1 m limit, at 1.2-1.8 m/s)",
    )
    # A short run from scratch: a smaller batch (at the learning rate that suits it) keeps the demo to minutes.
    _add_train_arguments(p, iterations=100, n_envs=16, lr=3e-3)


def _cmd_demo(args) -> int:
    import torch

    from genesis_grad.steering import paths as P
    from genesis_grad.steering import recipe
    from genesis_grad.steering.baselines import TUNED, evaluate_stanley, tune_gains
    from genesis_grad.steering.evaluate import evaluate_policy, plot_demo
    from genesis_grad.steering.policy import SteeringMLP, load_policy
    from genesis_grad.steering.sim import CAR_FILES, DEFAULT_POLICY, SteeringSim
    from genesis_grad.steering.train import TrainConfig, train_gradient

    t_start = time.time()
    out = Path(args.out)
    if status := refuse_existing_run("demo", out, args.overwrite):
        return status
    track = P.load_reference_csv(args.reference) if args.reference else P.hand_made_tracks()[-1]
    print(f"[demo] building the car scene ({args.n_envs} envs; the first run compiles kernels, ~1-2 min)")
    sim = SteeringSim(n_envs=args.n_envs, requires_grad=True, car_file=CAR_FILES[args.wheels])
    print(f"[demo] scene ready after {time.time() - t_start:.0f} s; track '{track.name}', {track.length:.1f} m")

    # The classical controllers get the best a user can give them: their gains tuned on this very track.
    tuned = {}
    for label, (gains_class, controller_class, grid) in TUNED.items():
        gains, scores = tune_gains(sim, [track], gains_class, controller_class, grid, progress=not args.no_progress)
        metrics, runs = evaluate_stanley(sim, gains, [track])
        tuned[label] = (metrics[0], runs[0], gains)
        print(f"[demo] {label} tuned on the track over {len(scores)} gain sets: {metrics[0].lateral_rms:.4f} m")

    # An MLP trained from scratch for a few minutes, scored on the track (never trained on) as it learns.
    print(
        f"[demo] training an MLP from scratch: {args.iterations} windows of {args.horizon} steps x {args.n_envs} envs"
    )
    torch.manual_seed(args.seed)
    policy = SteeringMLP()
    history = train_gradient(
        policy,
        sim,
        recipe.training_set(),
        iterations=args.iterations,
        cfg=TrainConfig(horizon=args.horizon, lr=args.lr, seed=args.seed),
        eval_fn=lambda p: evaluate_policy(sim, p, [track])[0][0].lateral_rms,
        eval_every_env_steps=max(args.iterations // 5, 1) * args.n_envs * args.horizon,
        checkpoint_dir=out / "checkpoints",
        progress=not args.no_progress,
    )
    short_metrics, short_runs = evaluate_policy(sim, policy, [track])
    # The policy `genesis-grad train` makes with the default recipe (seed 0), shipped with the package.
    default_policy, record = load_policy(DEFAULT_POLICY)
    default_metrics, default_runs = evaluate_policy(sim, default_policy, [track])
    windows = record.get("iteration", recipe.ITERATIONS)
    env_steps = record.get("env_steps", windows * recipe.N_ENVS * 100)

    rows = [
        (f"MLP, default recipe ({windows} windows, shipped)", default_metrics[0]),
        (f"MLP, this run ({args.iterations} windows)", short_metrics[0]),
        *((f"{label} tuned on the track", m) for label, (m, _, _) in tuned.items()),
    ]
    print()
    _print_table(rows)
    best_label = min(tuned, key=lambda k: tuned[k][0].lateral_rms)
    best = tuned[best_label][0]
    for label, m in rows[:2]:
        ratio = m.lateral_rms / best.lateral_rms
        verdict = "better" if ratio < 1.0 else "worse"
        print(
            f"[demo] {label}: lateral RMS {m.lateral_rms:.4f} m, {ratio:.2f}x the best tuned controller's "
            f"({best_label}, {best.lateral_rms:.4f} m): {verdict}"
        )
    plot = plot_demo(
        {rows[0][0]: default_runs[0], rows[1][0]: short_runs[0], **{f"{k} (tuned)": v[1] for k, v in tuned.items()}},
        history,
        {f"{k} tuned on the track": v[0].lateral_rms for k, v in tuned.items()},
        (env_steps, default_metrics[0].lateral_rms),
        out / "demo.png",
    )
    results = {
        "track": track.name,
        "default_policy": default_metrics[0].as_dict(),
        "this_run": short_metrics[0].as_dict(),
        "tuned": {k: {"gains": vars(g), **m.as_dict()} for k, (m, _, g) in tuned.items()},
        "history": history.as_dict(),
    }
    (out / "demo_metrics.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"plots: {plot}")
    print(f"[demo] total {time.time() - t_start:.0f} s")
    return 0


COMMANDS = (
    Subcommand(
        "train",
        "train the MLP steering controller by back-propagation through the physics",
        _train_arguments,
        _cmd_train,
    ),
    Subcommand(
        "eval",
        "evaluate a trained policy (and/or Stanley) in closed loop on whole paths",
        _eval_arguments,
        _cmd_eval,
    ),
    Subcommand(
        "demo",
        "a short end-to-end run (about 4 min on 2 CPU cores): an MLP trained through the physics against Stanley and "
        "pure pursuit tuned on the track, with plots",
        _demo_arguments,
        _cmd_demo,
    ),
)
