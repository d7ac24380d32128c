"""
Overhead of the plugin against stock Genesis, measured side by side in one process.

Each measurement alternates stock (plugin uninstalled) and plugin runs of the same workload, and reports the ratio of
their medians, so that machine noise hits both alike. Targets: off-grad forward step <= 1.01, grad-mode forward with
getters every step <= 1.05, backward of a PD-target rollout against the stock backward of the same rollout driven by
`control_dofs_force` <= 1.05, and the replay record (forward + backward of a decimated rollout, tracked targets every
5th step and held in between, against stock re-sending them every step, which stock replays exactly) <= 1.05.

Usage: python benchmarks/overhead.py [--steps 100] [--repeats 9]
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


def build(requires_grad: bool, n_envs: int):
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=requires_grad, gravity=(0, 0, 0)), show_viewer=False
    )
    car = scene.add_entity(gs.morphs.MJCF(file=CAR))
    scene.build(n_envs=n_envs)
    return scene, car


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(stock_fn, plugin_fn, repeats: int) -> tuple[float, float]:
    """Median seconds of stock and plugin runs, alternated; the first pair warms up and is dropped."""
    stock, plugin = [], []
    for i in range(repeats + 1):
        ggp.uninstall()
        t_stock = timed(stock_fn)
        ggp.install()
        t_plugin = timed(plugin_fn)
        if i:
            stock.append(t_stock)
            plugin.append(t_plugin)
    return statistics.median(stock), statistics.median(plugin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--n-envs", type=int, default=4)
    args = parser.parse_args()
    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    steps, n_envs = args.steps, args.n_envs
    targets = 0.2 * torch.ones((steps, n_envs, 2), dtype=torch.float64)

    plain_scene, plain_car = build(False, n_envs)

    def off_grad():
        plain_scene.reset()
        for t in range(steps):
            plain_car.control_dofs_position(targets[t], dofs_idx_local=STEER)
            plain_scene.step()

    grad_scene, grad_car = build(True, n_envs)

    def forward_with_getters():
        grad_scene.reset()
        for t in range(steps):
            grad_car.control_dofs_position(targets[t], dofs_idx_local=STEER)
            grad_scene.step()
            grad_car.get_qpos(), grad_car.get_dofs_velocity(), grad_car.get_pos(), grad_car.get_quat()

    def rollout(method: str):
        x = targets.clone().requires_grad_()
        grad_scene.reset()
        loss = 0.0
        for t in range(steps):
            getattr(grad_car, method)(x[t], dofs_idx_local=STEER)
            grad_scene.step()
            loss = loss + (grad_scene.sim.rigid_solver.get_state().qpos ** 2).sum()
        return loss

    def backward_of(method: str):
        loss = rollout(method)
        return lambda: loss.backward()

    rows = []
    rows.append(("off-grad forward step", *side_by_side(off_grad, off_grad, args.repeats), 1.01))
    rows.append(
        (
            "grad-mode forward, getters every step",
            *side_by_side(forward_with_getters, forward_with_getters, args.repeats),
            1.05,
        )
    )

    # Backward alone: each rollout is recorded untimed right before its backward.
    stock_bw, plugin_bw = [], []
    for i in range(args.repeats + 1):
        ggp.uninstall()
        stock_run = backward_of("control_dofs_force")
        t_stock = timed(stock_run)
        ggp.install()
        plugin_run = backward_of("control_dofs_position")
        t_plugin = timed(plugin_run)
        if i:
            stock_bw.append(t_stock)
            plugin_bw.append(t_plugin)
    rows.append(
        (
            "backward: PD targets (plugin) vs forces (stock)",
            statistics.median(stock_bw),
            statistics.median(plugin_bw),
            1.05,
        )
    )

    # The replay record: forward + backward of tracked forces, held between the ticks of a 5x slower policy (plugin,
    # exact) against the same rollout re-sending them every step (stock, exact); then both re-sending every step, the
    # record's worst case (a copy of the control fields per step).
    def forward_backward(every: int):
        def run():
            x = targets.clone().requires_grad_()
            grad_scene.reset()
            loss = 0.0
            for t in range(steps):
                if t % every == 0:
                    grad_car.control_dofs_force(x[t], dofs_idx_local=STEER)
                grad_scene.step()
                loss = loss + (grad_scene.sim.rigid_solver.get_state().qpos ** 2).sum()
            loss.backward()

        return run

    every_step, decimated = forward_backward(1), forward_backward(5)
    rows.append(
        (
            "replay: decimated forces (plugin) vs every step (stock), fwd+bwd",
            *side_by_side(every_step, decimated, args.repeats),
            1.05,
        )
    )
    rows.append(
        (
            "replay: forces every step, plugin vs stock, fwd+bwd",
            *side_by_side(every_step, every_step, args.repeats),
            1.05,
        )
    )

    print(f"steps={steps} n_envs={n_envs} repeats={args.repeats} backend=cpu precision=64")
    print("| workload | stock (ms) | plugin (ms) | ratio | target |")
    print("|---|---|---|---|---|")
    for name, stock, plugin, target in rows:
        ratio = plugin / stock
        flag = "ok" if ratio <= target else "over"
        print(f"| {name} | {1e3 * stock:.1f} | {1e3 * plugin:.1f} | {ratio:.3f} | <= {target} ({flag}) |")


if __name__ == "__main__":
    main()
