"""
Cost of the differentiable getters: a grad-mode step with 4 getter calls against the same step without them.

Runs against whichever Genesis is imported, so the same script measures the plugin (stock Genesis +
`import genesis_grad_patch`) and the upstream patch (the patched tree first on PYTHONPATH, GENESIS_GRAD_PATCH_DISABLE=1):

    python scripts/measure_getter_overhead.py
    PYTHONPATH=build/upstream-genesis GENESIS_GRAD_PATCH_DISABLE=1 python scripts/measure_getter_overhead.py

Both runs are alternated within one process and the ratio of their medians is printed, so that machine noise hits
both alike. The workload is the one of `benchmarks/overhead.py` (planar car, 4 environments, a PD target every step,
`get_qpos`, `get_dofs_velocity`, `get_pos`, `get_quat` after each step; the targets track gradients).
"""

import argparse
import statistics
import time
from pathlib import Path

import genesis as gs
import torch

import genesis_grad_patch as ggp

CAR = str(Path(__file__).parents[1] / "tests" / "assets" / "planar_car.xml")
STEER = [3, 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--n-envs", type=int, default=4)
    args = parser.parse_args()
    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True, gravity=(0, 0, 0)), show_viewer=False
    )
    car = scene.add_entity(gs.morphs.MJCF(file=CAR))
    scene.build(n_envs=args.n_envs)
    # Tracked targets: the plugin's getters build the graph only in a rollout with a tracked input.
    targets = torch.full((args.steps, args.n_envs, 2), 0.2, dtype=torch.float64, requires_grad=True)

    def rollout(with_getters: bool) -> float:
        start = time.perf_counter()
        scene.reset()
        for t in range(args.steps):
            car.control_dofs_position(targets[t], dofs_idx_local=STEER)
            scene.step()
            if with_getters:
                values = car.get_qpos(), car.get_dofs_velocity(), car.get_pos(), car.get_quat()
                assert all(value.requires_grad for value in values)
        return time.perf_counter() - start

    without, with_ = [], []
    for i in range(args.repeats + 1):
        t_without, t_with = rollout(False), rollout(True)
        if i:  # the first pair warms up
            without.append(t_without)
            with_.append(t_with)
    mode = "plugin" if ggp.is_installed() else f"patched Genesis ({Path(gs.__file__).parent})"
    t_without, t_with = statistics.median(without), statistics.median(with_)
    print(
        f"{mode}: step without getters {1e3 * t_without / args.steps:.3f} ms, with 4 getters "
        f"{1e3 * t_with / args.steps:.3f} ms, ratio {t_with / t_without:.3f}"
    )


if __name__ == "__main__":
    main()
