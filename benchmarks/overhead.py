"""
Overhead of the plugin against stock Genesis, measured side by side in one process.

Each measurement alternates stock (plugin uninstalled) and plugin runs of the same workload, and reports the ratio of
their medians, so that machine noise hits both alike. Two scenes, each in its own process (`gs.init` is once per
process):

- ``report``: the report's own set-up, unbatched, float32: one car on the ground (the steering car, free base, wheel
  contacts), PD steering targets and `get_qpos` + `get_vel` every step, targets not tracked;
- ``batched``: 4 environments, float64, the planar car, PD targets and `get_qpos` + `get_dofs_velocity` every step;
- ``contacts``: 4 environments, float64, pybullet's racecar URDF on a plane (cylinder wheel contacts, which the plugin
  detects in closed form and stock Genesis through its plane-convex path), tracked steering forces and wheel velocity
  targets: forward and backward of the same rollout, plugin against stock; and the contacts alone, the plugin on both
  sides, its closed-form wheel contacts against Genesis's differentiable plane-convex contacts of the same pairs.

Targets: off-grad forward (targets and two getters every step) <= 1.01, grad-mode forward with the getters <= 1.05,
backward of a PD-target rollout against the stock backward of the same rollout driven by `control_dofs_force` <= 1.05
(and, the plugin's own share of it, the backward of the force-driven rollout, plugin against stock);
on the batched scene also the replay record (forward + backward of a decimated rollout, tracked targets every 5th step
and held in between, against stock re-sending them every step, which stock replays exactly) <= 1.05.

Usage: python benchmarks/overhead.py [--scene report|batched|contacts] [--steps 100] [--repeats 15]
"""

import argparse
import gc
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import genesis as gs
import torch

import genesis_grad_patch as ggp
from genesis_grad_patch._impl import curved_contacts

ROOT = Path(__file__).parents[1]
PLANAR_CAR = str(ROOT / "tests" / "assets" / "planar_car.xml")
STEERING_CAR = str(ROOT / "genesis_grad" / "steering" / "assets" / "car.xml")
SCENES = {
    # name: (precision, n_envs, car, steering dofs, second getter)
    "report": ("32", 0, STEERING_CAR, None, "get_vel"),
    "batched": ("64", 4, PLANAR_CAR, [3, 4], "get_dofs_velocity"),
    "contacts": ("64", 4, None, None, None),
}


def build(requires_grad: bool, n_envs: int, car_file: str):
    on_ground = car_file == STEERING_CAR
    gravity = (0, 0, -9.81) if on_ground else (0, 0, 0)
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=requires_grad, gravity=gravity), show_viewer=False
    )
    if on_ground:
        scene.add_entity(gs.morphs.Plane())
    car = scene.add_entity(gs.morphs.MJCF(file=car_file))
    scene.build(n_envs=n_envs)
    return scene, car


def timed(fn) -> float:
    """Process CPU time of `fn()`: steadier than wall-clock time on a shared machine (another process's work does not
    count), and the same measure on both sides of a ratio. The garbage of the previous run (and of an `install`) is
    collected first, so that a full collection does not land in one side's run."""
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


def side_by_side(stock_fn, plugin_fn, repeats: int) -> tuple[float, float]:
    """
    Median seconds of stock and plugin runs, alternated; the first pair warms up and is dropped.

    Each switch (`uninstall` / `install`) is followed by one untimed run: a switch makes new function objects, which
    Python 3.11's adaptive interpreter specializes again on their first calls (measured: ~1 ms on the first 100-step run
    after `install`, none on the next), a cost paid once per process by a user, not once per rollout.
    """
    stock, plugin = [], []
    for i in range(repeats + 1):
        ggp.uninstall()
        stock_fn()
        t_stock = timed(stock_fn)
        ggp.install()
        plugin_fn()
        t_plugin = timed(plugin_fn)
        if i:
            stock.append(t_stock)
            plugin.append(t_plugin)
    return statistics.median(stock), statistics.median(plugin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--scene", choices=sorted(SCENES), help="one scene in this process (default: each in its own)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.scene is None:
        for scene in ("report", "batched", "contacts"):
            cmd = [
                sys.executable,
                __file__,
                "--scene",
                scene,
                "--steps",
                str(args.steps),
                "--repeats",
                str(args.repeats),
            ]
            subprocess.run(cmd, check=True)
        return
    run_scene(args.scene, args.steps, args.repeats)


def run_contacts(steps: int, repeats: int) -> None:
    """The racecar's wheel contacts: forward, and backward, of one tracked rollout, plugin against stock."""
    import pybullet_data

    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    scene = gs.Scene(sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True), show_viewer=False)
    scene.add_entity(gs.morphs.Plane())
    urdf = str(Path(pybullet_data.getDataPath()) / "racecar" / "racecar.urdf")
    car = scene.add_entity(gs.morphs.URDF(file=urdf, pos=(0.0, 0.0, 0.05)))
    n_envs = 4
    scene.build(n_envs=n_envs)
    steer = [car.get_joint(n).dofs_idx_local[0] for n in ("left_steering_hinge_joint", "right_steering_hinge_joint")]
    wheels = [car.get_joint(n).dofs_idx_local[0] for n in ("left_rear_wheel_joint", "right_rear_wheel_joint")]
    car.set_dofs_kv(torch.tensor([5.0, 5.0]), wheels)
    speed = torch.full((n_envs, 2), 10.0, dtype=torch.float64)
    forces = 0.1 * torch.ones((steps, n_envs, 2), dtype=torch.float64)

    def rollout():
        x = forces.clone().requires_grad_()
        scene.reset()
        for t in range(steps):
            car.control_dofs_force(x[t], dofs_idx_local=steer)
            car.control_dofs_velocity(speed, dofs_idx_local=wheels)
            scene.step()
        return car.get_pos().sum() if ggp.is_installed() else scene.sim.rigid_solver.get_state().qpos.sum()

    def backward_side_by_side() -> tuple[float, float]:
        stock_bw, plugin_bw = [], []
        for i in range(repeats + 1):
            ggp.uninstall()
            rollout().backward()
            loss = rollout()
            t_stock = timed(loss.backward)
            ggp.install()
            rollout().backward()
            loss = rollout()
            t_plugin = timed(loss.backward)
            if i:
                stock_bw.append(t_stock)
                plugin_bw.append(t_plugin)
        return statistics.median(stock_bw), statistics.median(plugin_bw)

    def use_closed_form(on: bool) -> None:
        curved_contacts.use_closed_form(scene.sim.rigid_solver, on)

    def contacts_side_by_side() -> tuple[tuple[float, float], tuple[float, float]]:
        times = {False: ([], []), True: ([], [])}
        for i in range(repeats + 1):
            for on in (False, True):
                use_closed_form(on)
                rollout().backward()
                t0 = time.process_time()
                loss = rollout()
                t_forward = time.process_time() - t0
                t_backward = timed(loss.backward)
                if i:
                    times[on][0].append(t_forward)
                    times[on][1].append(t_backward)
        use_closed_form(True)
        forward = statistics.median(times[False][0]), statistics.median(times[True][0])
        backward = statistics.median(times[False][1]), statistics.median(times[True][1])
        return forward, backward

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ggp.GradientBreakWarning)  # the cylinder pairs, reported on Genesis's path
        contacts_forward, contacts_backward = contacts_side_by_side()
        rows = [
            (
                "grad-mode forward, wheel contacts (closed form vs stock)",
                *side_by_side(rollout, rollout, repeats),
                1.05,
            ),
            ("backward, wheel contacts (closed form vs stock)", *backward_side_by_side(), 1.05),
            ("grad-mode forward, contacts alone (closed form vs Genesis's, plugin on both)", *contacts_forward, 1.05),
            ("backward, contacts alone (closed form vs Genesis's, plugin on both)", *contacts_backward, 1.05),
        ]
    print_rows("contacts", steps, n_envs, repeats, "64", rows)


def print_rows(name: str, steps: int, n_envs: int, repeats: int, precision: str, rows: list) -> None:
    print(f"\nscene={name} steps={steps} n_envs={n_envs} repeats={repeats} backend=cpu precision={precision}")
    print("| workload | stock (ms) | plugin (ms) | ratio | target |")
    print("|---|---|---|---|---|")
    for label, stock, plugin, target in rows:
        ratio = plugin / stock
        flag = "ok" if ratio <= target else "over"
        print(f"| {label} | {1e3 * stock:.1f} | {1e3 * plugin:.1f} | {ratio:.3f} | <= {target} ({flag}) |")


def run_scene(name: str, steps: int, repeats: int) -> None:
    if name == "contacts":
        run_contacts(steps, repeats)
        return
    precision, n_envs, car_file, steer, second_getter = SCENES[name]
    gs.init(backend=gs.cpu, precision=precision, logging_level="warning")
    plain_scene, plain_car = build(False, n_envs, car_file)
    grad_scene, grad_car = build(True, n_envs, car_file)
    if steer is None:
        steer = [grad_car.get_joint(j).dofs_idx_local[0] for j in ("steer_fl", "steer_fr")]
    batch = (n_envs,) if n_envs else ()
    targets = 0.2 * torch.ones((steps, *batch, 2), dtype=gs.tc_float)

    def drive(scene, car):
        def run():
            scene.reset()
            for t in range(steps):
                car.control_dofs_position(targets[t], dofs_idx_local=steer)
                scene.step()
                car.get_qpos(), getattr(car, second_getter)()

        return run

    def rollout(method: str):
        x = targets.clone().requires_grad_()
        grad_scene.reset()
        loss = 0.0
        for t in range(steps):
            getattr(grad_car, method)(x[t], dofs_idx_local=steer)
            grad_scene.step()
            loss = loss + (grad_scene.sim.rigid_solver.get_state().qpos ** 2).sum()
        return loss

    def backward_of(method: str):
        loss = rollout(method)
        return lambda: loss.backward()

    off_grad, forward_with_getters = drive(plain_scene, plain_car), drive(grad_scene, grad_car)
    rows = []
    rows.append(("off-grad forward, targets + 2 getters", *side_by_side(off_grad, off_grad, repeats), 1.01))
    rows.append(
        (
            "grad-mode forward, targets + 2 getters",
            *side_by_side(forward_with_getters, forward_with_getters, repeats),
            1.05,
        )
    )

    def backward_side_by_side(stock_method: str, plugin_method: str) -> tuple[float, float]:
        """Median seconds of the backward alone, stock and plugin alternated: each rollout is recorded untimed right
        before its backward, after one warm-up rollout and backward per switch (see `side_by_side`)."""
        stock_bw, plugin_bw = [], []
        for i in range(repeats + 1):
            ggp.uninstall()
            backward_of(stock_method)()
            stock_run = backward_of(stock_method)
            t_stock = timed(stock_run)
            ggp.install()
            backward_of(plugin_method)()
            plugin_run = backward_of(plugin_method)
            t_plugin = timed(plugin_run)
            if i:
                stock_bw.append(t_stock)
                plugin_bw.append(t_plugin)
        return statistics.median(stock_bw), statistics.median(plugin_bw)

    rows.append(
        (
            "backward: PD targets (plugin) vs forces (stock)",
            *backward_side_by_side("control_dofs_force", "control_dofs_position"),
            1.05,
        )
    )
    # The same workload on both sides (tracked forces, which stock differentiates too): what the plugin adds to a
    # reverse pass, without the PD targets' own reverse (the row above compares two different workloads).
    rows.append(
        (
            "backward: forces, plugin vs stock (same workload)",
            *backward_side_by_side("control_dofs_force", "control_dofs_force"),
            1.05,
        )
    )

    if name == "batched":
        # The replay record: forward + backward of tracked forces, held between the ticks of a 5x slower policy
        # (plugin, exact) against the same rollout re-sending them every step (stock, exact); then both re-sending every
        # step, the record's worst case (a copy of the control fields per step).
        def forward_backward(every: int):
            def run():
                x = targets.clone().requires_grad_()
                grad_scene.reset()
                loss = 0.0
                for t in range(steps):
                    if t % every == 0:
                        grad_car.control_dofs_force(x[t], dofs_idx_local=steer)
                    grad_scene.step()
                    loss = loss + (grad_scene.sim.rigid_solver.get_state().qpos ** 2).sum()
                loss.backward()

            return run

        every_step, decimated = forward_backward(1), forward_backward(5)
        rows.append(
            (
                "replay: decimated forces (plugin) vs every step (stock), fwd+bwd",
                *side_by_side(every_step, decimated, repeats),
                1.05,
            )
        )
        rows.append(
            (
                "replay: forces every step, plugin vs stock, fwd+bwd",
                *side_by_side(every_step, every_step, repeats),
                1.05,
            )
        )

    print_rows(name, steps, n_envs, repeats, precision, rows)


if __name__ == "__main__":
    main()
