"""
``genesis-grad sysid generate | fit``: system identification from the command line (listed in ``COMMANDS``, which
``genesis_grad.cli`` assembles). Every flag is checked at parse time (one-line usage error, exit status 2); a trajectory
CSV or parameter file that cannot be used ends in one line on stderr and exit status 2. Genesis and torch are imported
inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from genesis_grad.arguments import (
    Subcommand,
    existing_file,
    non_negative_float,
    output_dir,
    positive_float,
    positive_int,
    random_seed,
)

from .errors import ParameterError
from .parameters import check_selection_syntax

DEFAULT_SELECTION = "kp,kv,damping@0-3"


def selection(text: str) -> str:
    """argparse type: a parameter selection ``KINDS@DOFS[;...]`` (joints are checked once the robot is loaded)."""
    try:
        return check_selection_syntax(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def robot_file(text: str) -> str:
    """argparse type: an existing MJCF (.xml) or URDF (.urdf) file."""
    existing_file(text)
    if Path(text).suffix.lower() not in (".xml", ".urdf"):
        raise argparse.ArgumentTypeError(f"not an MJCF (.xml) or URDF (.urdf) file: {text!r}")
    return text


def params_source(text: str) -> str:
    """argparse type: a JSON parameter file, or inline JSON (``'{"kp": {"joint1": 5000}}'``)."""
    if text.lstrip().startswith("{"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise argparse.ArgumentTypeError("JSON nested too deeply to be a parameter file") from None
        return text
    return existing_file(text)


def bound_ratio(text: str) -> float:
    """argparse type: a number > 1 (parameters stay within [nominal / r, nominal * r])."""
    value = positive_float(text)
    if value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be greater than 1, got {text!r}")
    return value


def csv_output(text: str) -> Path:
    """argparse type: an output CSV path (its directory is created)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a file name")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a directory: {text!r}")
    return path


def _default_robot() -> str:
    from .sim import default_robot

    return default_robot()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--robot",
        type=robot_file,
        default=None,
        help="MJCF/URDF of the robot; default: genesis-world's Franka Panda (franka_emika_panda/panda_no_tendon.xml)",
    )
    p.add_argument(
        "--identify",
        type=selection,
        default=DEFAULT_SELECTION,
        metavar="KINDS@DOFS",
        help="parameters: kinds (kp, kv, damping, armature or all) @ dofs (indices, ranges a-b, joint names or all), "
        f"';'-separated groups; e.g. kp@0-3 (4), kp,kv,damping@0-3 (12), 'all@0-6;kp@7,8' (30); default {DEFAULT_SELECTION}",
    )
    p.add_argument("--seed", type=random_seed, default=0, help="random seed (default 0)")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sysid_command", metavar="ACTION", required=True)
    g = sub.add_parser(
        "generate",
        help="simulate a trajectory CSV with hidden ground-truth parameters",
        description="Simulate a trajectory CSV of a robot driven by random joint targets, with ground-truth "
        "parameters kept apart in <out>.truth.json, for `sysid fit` to identify.",
    )
    _add_common(g)
    g.add_argument(
        "--params-true",
        type=params_source,
        default=None,
        metavar="JSON",
        help="ground truth: JSON file or inline JSON {kind: {joint: value}}; default: the --identify parameters of "
        "the model scaled by random factors in exp([-perturb, perturb])",
    )
    g.add_argument("--perturb", type=positive_float, default=0.3, help="log-spread of the random truth (default 0.3)")
    g.add_argument("--duration", type=positive_float, default=4.0, help="seconds (default 4)")
    g.add_argument("--dt", type=positive_float, default=0.01, help="sample and simulation step, s (default 0.01)")
    g.add_argument("--amplitude", type=positive_float, default=0.3, help="peak target excursion, rad (default 0.3)")
    g.add_argument("--noise", type=non_negative_float, default=0.0, metavar="STD", help="position noise std (rad)")
    g.add_argument(
        "--noise-vel",
        type=non_negative_float,
        default=None,
        metavar="STD",
        help="velocity noise std (default: --noise)",
    )
    g.add_argument(
        "--no-velocity-targets",
        action="store_true",
        help="pure position servo (no target_vel_ columns): kv and damping of a joint then act alike",
    )
    g.add_argument(
        "--out",
        type=csv_output,
        default="traj.csv",
        help="trajectory CSV (default traj.csv); the truth goes to <out>.truth.json",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out CSV and its truth file (refused otherwise)"
    )

    f = sub.add_parser(
        "fit",
        help="identify the parameters from a trajectory CSV",
        description="Identify the joint parameters (kp, kv, damping, armature) that make the simulated robot follow a "
        "trajectory CSV, by gradient descent through the differentiable simulation, with error bars.",
    )
    f.add_argument("trajectory", type=existing_file, help="trajectory CSV (time, target_<joint>..., q_<joint>...)")
    _add_common(f)
    f.add_argument(
        "--method",
        choices=("lm", "adam", "lbfgs", "cma", "nelder-mead"),
        default="lm",
        help="lm: Levenberg-Marquardt on back-propagated gradients and a sketched J^T J (default; the fastest in "
        "benchmarks/sysid.py); adam, lbfgs: first-order on the same gradients; cma, nelder-mead: gradient-free",
    )
    f.add_argument(
        "--iterations",
        type=positive_int,
        default=150,
        help="lm accepted steps / adam steps / lbfgs outer iterations / cma generations / nelder-mead evaluations "
        "(default 150)",
    )
    f.add_argument(
        "--max-steps", type=positive_int, default=None, help="budget of simulated steps (forward + backward)"
    )
    f.add_argument("--window", type=positive_int, default=50, help="steps per multiple shooting window (default 50)")
    f.add_argument("--windows", type=positive_int, default=None, help="number of windows (default: as many as fit)")
    f.add_argument("--lr", type=positive_float, default=0.05, help="adam learning rate in log units (default 0.05)")
    f.add_argument("--sigma0", type=positive_float, default=0.2, help="cma / nelder-mead initial spread (default 0.2)")
    f.add_argument("--bound-ratio", type=bound_ratio, default=10.0, help="bounds [nominal/r, nominal*r] (default 10)")
    f.add_argument(
        "--params-true",
        type=params_source,
        default=None,
        metavar="JSON",
        help="known truth (e.g. <traj>.truth.json) to report the parameter errors",
    )
    f.add_argument("--no-uncertainty", action="store_true", help="skip the Gauss-Newton error bars (2 rollouts each)")
    f.add_argument("--out", type=output_dir, default="out/sysid", help="output directory (report, plot)")
    f.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bar")


def _cmd_sysid(args) -> int:
    from .problem import GradientUnavailable

    try:
        return _generate(args) if args.sysid_command == "generate" else _fit(args)
    except GradientUnavailable as exc:
        print(f"genesis-grad sysid: error: {exc}", file=sys.stderr)
        return 1


def _generate(args) -> int:
    from .generate import generate
    from .parameters import load_params, params_to_json, parse_selection, perturbed
    from .sim import SysIdSim
    from .trajectory import save_trajectory_csv

    existing = [p for p in (Path(args.out), Path(args.out).with_suffix(".truth.json")) if p.exists()]
    if existing and not args.overwrite:
        names = " and ".join(repr(str(p)) for p in existing)
        print(
            f"genesis-grad sysid generate: error: {names} exist(s); choose another --out, or pass --overwrite",
            file=sys.stderr,
        )
        return 2
    robot = args.robot or _default_robot()
    sim = SysIdSim(robot, dt=args.dt, n_envs=1, requires_grad=False)
    spec = parse_selection(args.identify, sim.dof_names)
    if args.params_true:
        truth = load_params(args.params_true, sim.dof_names, sim.nominal)
    else:
        truth = perturbed(sim.nominal, spec, args.perturb, args.seed)
    traj = generate(
        sim,
        truth,
        duration=args.duration,
        amplitude=args.amplitude,
        noise=args.noise,
        noise_vel=args.noise_vel,
        seed=args.seed,
        velocity_targets=not args.no_velocity_targets,
    )
    out = save_trajectory_csv(traj, args.out)
    truth_path = out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(params_to_json(truth, sim.dof_names), indent=2))
    print(f"trajectory: {out} ({len(traj)} samples, dt {args.dt:g} s); ground truth: {truth_path}")
    return 0


def _fit(args) -> int:
    import numpy as np

    from .optimize import GRADIENT_METHODS, fit
    from .parameters import load_params, parse_selection
    from .problem import SysIdProblem
    from .report import format_table, parameter_rows, plot_fit, write_report
    from .sim import SysIdSim
    from .trajectory import check_against_robot, load_trajectory_csv
    from .uncertainty import gauss_newton

    traj = load_trajectory_csv(args.trajectory)  # before the scene is built: a bad file is reported at once
    robot = args.robot or _default_robot()
    n_windows = args.windows or max((len(traj) - 1) // args.window, 1)
    window = min(args.window, len(traj) - 1)
    sim = SysIdSim(
        robot,
        dt=traj.dt,
        n_envs=n_windows,
        requires_grad=args.method in GRADIENT_METHODS,
        per_env_params=args.method == "lm",
    )
    check_against_robot(traj, sim.dof_names, [sim.dof_names[i] for i in sim.actuated], args.trajectory)
    spec = parse_selection(args.identify, sim.dof_names)
    if traj.target_vel is None:
        both = sorted({d for k, d in spec.entries if k == "kv"} & {d for k, d in spec.entries if k == "damping"})
        if both:
            names = ", ".join(sim.dof_names[d] for d in both)
            print(
                f"genesis-grad sysid: warning: no target_vel_ columns: kv and damping of {names} act alike "
                "(only their sum is identifiable)",
                file=sys.stderr,
            )
    problem = SysIdProblem(sim, traj, spec, window, args.bound_ratio)
    truth = spec.gather(load_params(args.params_true, sim.dof_names, sim.nominal)) if args.params_true else None
    loss0 = problem.loss(np.zeros(len(spec)))
    print(f"{len(spec)} parameters, {n_windows} windows of {window} steps; loss at the model's values {loss0:.4e}")
    t0 = time.perf_counter()
    result = fit(
        problem,
        args.method,
        iterations=args.iterations,
        max_steps=args.max_steps,
        lr=args.lr,
        sigma0=args.sigma0,
        seed=args.seed,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t0
    unc = None if args.no_uncertainty else gauss_newton(problem, result.z)
    rows = parameter_rows(problem, result, truth, unc)
    print(format_table(rows))
    # Error bars describe the spread of a converged estimate: at a point where the budget stopped the fit they look as
    # precise as a converged one's (1.4-3.1% next to true errors of 8-34% measured), so they are flagged.
    unconverged = (
        None if result.converged else f"the fit stopped on its budget ({result.stop_reason}) before converging"
    )
    if unconverged and unc is not None:
        print(
            f"genesis-grad sysid: warning: {unconverged}: the error bars (rel_std) hold for a converged fit only; the "
            "identified values may be further off (raise --iterations or --max-steps)",
            file=sys.stderr,
        )
    steps = result.history["steps"][-1]
    print(
        f"{args.method}: loss {result.loss:.4e} (RMSE {np.sqrt(result.loss):.3e} rad), {steps} simulated steps "
        f"({result.history['forward_steps'][-1]} forward), {wall:.1f} s, stopped on {result.stop_reason}"
    )
    out = Path(args.out)
    plot = plot_fit(out / "sysid_fit.png", problem, result.z, np.zeros(len(spec)))
    extra = {
        "trajectory": args.trajectory,
        "selection": args.identify,
        "loss_start": loss0,
        "converged": result.converged,
    }
    if truth is not None:
        extra["max_rel_error"] = max(r["rel_error"] for r in rows)
    report = write_report(out / "sysid_report.json", problem, result, rows, unc, extra)
    print(f"report: {report}; plot: {plot}")
    return 0


COMMANDS = (
    Subcommand(
        "sysid",
        "system identification: kp, kv, damping, armature per joint from a trajectory",
        _add_arguments,
        _cmd_sysid,
    ),
)
