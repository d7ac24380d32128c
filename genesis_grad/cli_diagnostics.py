"""
`genesis-grad doctor SCRIPT.py` and `genesis-grad gradcheck SCRIPT.py:FUNC`.

Both are listed in `COMMANDS`, which `genesis_grad.cli` assembles; each handler takes the parsed arguments and
returns the exit status.

Conventions for the scripts (run with `runpy`, under the module name `__genesis_grad__`, so a
`if __name__ == "__main__":` block does not run):

- doctor: the script defines a function `main()` returning `(loss, params)`, or the globals `loss` and `params` (a
  module, a dict of named tensors or a list of tensors) or `model` (a `torch.nn.Module`). `--main NAME` picks another
  function than `main`. The script must not reset the scene after computing the loss.
- gradcheck: `FUNC()` returns `(rollout, inputs)` or `(rollout, inputs, options)`, where `rollout(*inputs)` returns a
  scalar loss and resets the scene itself, and `options` is a dict of keyword arguments of `gradcheck` (e.g.
  `{"scene": scene}` to have the scene reset before each evaluation).
"""

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

from genesis_grad.arguments import (
    Subcommand,
    existing_file,
    identifier,
    non_negative_float,
    positive_float,
    positive_int,
    random_seed,
)

RUN_NAME = "__genesis_grad__"


def _run_script(path: str) -> dict[str, Any]:
    script = Path(path)
    if not script.is_file():
        raise SystemExit(f"genesis-grad: no such script: {path}")
    sys.path.insert(0, str(script.resolve().parent))
    try:
        return runpy.run_path(str(script), run_name=RUN_NAME)
    finally:
        sys.path.pop(0)


def _loss_and_params(namespace: dict[str, Any], func: str) -> tuple[Any, Any]:
    if callable(namespace.get(func)):
        result = namespace[func]()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise SystemExit(f"genesis-grad doctor: {func}() must return (loss, params), got {type(result).__name__}.")
        return result
    if "loss" not in namespace:
        raise SystemExit(
            f"genesis-grad doctor: the script defines neither {func}() returning (loss, params) nor a global `loss`."
        )
    params = namespace.get("params", namespace.get("model"))
    return namespace["loss"], params


def run_doctor(args: argparse.Namespace) -> int:
    """Run a script and print the doctor's report on its loss. Returns 0 if healthy, 1 otherwise."""
    import genesis_grad_patch as ggp

    namespace = _run_script(args.script)
    loss, params = _loss_and_params(namespace, args.main_name)
    report = ggp.doctor(loss, params)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report)
    return 0 if report.healthy else 1


def run_gradcheck(args: argparse.Namespace) -> int:
    """Run `FUNC` of a script and gradcheck the rollout it returns. Returns 0 if it passes, 1 otherwise."""
    import genesis_grad_patch as ggp

    script, sep, func = args.target.rpartition(":")
    if not sep or not script or not func:
        raise SystemExit("genesis-grad gradcheck: expected SCRIPT.py:FUNC")
    namespace = _run_script(script)
    if not callable(namespace.get(func)):
        raise SystemExit(f"genesis-grad gradcheck: {script} defines no function {func}().")
    result = namespace[func]()
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        raise SystemExit(
            f"genesis-grad gradcheck: {func}() must return (rollout, inputs) or (rollout, inputs, options)."
        )
    rollout, inputs, options = (*result, {})[:3]
    options = {
        "eps": args.eps,
        "n_probe": args.n_probe,
        "seed": args.seed,
        "rtol": args.rtol,
        "atol": args.atol,
        **dict(options),
    }
    outcome = ggp.gradcheck(rollout, inputs, **options)
    print(json.dumps(outcome.to_dict(), indent=2) if args.json else outcome)
    return 0 if outcome.passed else 1


def script_target(text: str) -> str:
    """argparse type of the gradcheck target: ``SCRIPT.py:FUNC`` with an existing script and a function name."""
    script, sep, func = text.rpartition(":")
    if not sep or not script or not func:
        raise argparse.ArgumentTypeError(f"expected SCRIPT.py:FUNC, got {text!r}")
    existing_file(script)
    identifier(func)
    return text


def _doctor_arguments(doctor: argparse.ArgumentParser) -> None:
    doctor.add_argument("script", type=existing_file, help="the script to run (SCRIPT.py)")
    doctor.add_argument(
        "--main",
        dest="main_name",
        type=identifier,
        default="main",
        help="function returning (loss, params) (default: main)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")


def _gradcheck_arguments(gradcheck: argparse.ArgumentParser) -> None:
    gradcheck.add_argument("target", type=script_target, help="SCRIPT.py:FUNC")
    gradcheck.add_argument("--eps", type=positive_float, default=1e-6, help="finite-difference step (default: 1e-6)")
    gradcheck.add_argument("--n-probe", type=positive_int, default=8, help="coordinates probed (default: 8)")
    gradcheck.add_argument("--seed", type=random_seed, default=0, help="seed of the probe sampling (default: 0)")
    gradcheck.add_argument("--rtol", type=non_negative_float, default=1e-4, help="relative tolerance (default: 1e-4)")
    gradcheck.add_argument("--atol", type=non_negative_float, default=1e-8, help="absolute tolerance (default: 1e-8)")
    gradcheck.add_argument("--json", action="store_true", help="print the result as JSON")


COMMANDS = (
    Subcommand(
        "doctor",
        "explain which parameters a script's loss reaches through the simulation",
        _doctor_arguments,
        run_doctor,
        description="Run SCRIPT.py and report the autograd graph behind its loss: simulation steps, state reads, "
        "control inputs, and why each parameter without gradient gets none. The script defines main() returning "
        "(loss, params), or the globals `loss` and `params` (or `model`).",
    ),
    Subcommand(
        "gradcheck",
        "compare a rollout's autograd gradient with finite differences",
        _gradcheck_arguments,
        run_gradcheck,
        description="Call FUNC() of SCRIPT.py, which returns (rollout, inputs[, options]), and compare the autograd "
        "gradient of rollout(*inputs) with central finite differences on sampled input coordinates.",
    ),
)
