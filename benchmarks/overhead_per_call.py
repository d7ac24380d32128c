"""
Per-call overhead of the plugin on the report's scene (one car on the ground, unbatched, float32): each call the
report's loop makes (a PD target, `get_qpos`, `get_vel`, `scene.step`) timed alone, stock and plugin alternated in one
process, minimum of 5 alternations of a few thousand calls each. Finer than `overhead.py`'s 100-step rollouts: the
off-grad target (1%, ~3 us per step) is below what a whole rollout resolves on a shared 2-core machine.

Usage: python benchmarks/overhead_per_call.py
"""

import time
from collections.abc import Callable
from functools import partial

import genesis as gs
import torch
from overhead import STEERING_CAR, build

import genesis_grad_patch as ggp


def per_call(fn: Callable, n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _call(obj, name: str, *args, **kwargs):
    return getattr(obj, name)(*args, **kwargs)


def main() -> None:
    gs.init(backend=gs.cpu, precision="32", logging_level="warning")
    print("| scene | call | stock (us) | plugin (us) | plugin - stock (us) |")
    print("|---|---|---|---|---|")
    for requires_grad in (False, True):
        scene, car = build(requires_grad, 0, STEERING_CAR)
        steer = [car.get_joint(j).dofs_idx_local[0] for j in ("steer_fl", "steer_fr")]
        target = 0.2 * torch.ones(2, dtype=gs.tc_float)
        scene.reset()
        # Methods are looked up at each call (a bound method made once would keep whichever version was installed).
        calls = {
            "control_dofs_position": (partial(_call, car, "control_dofs_position", target, dofs_idx_local=steer), 3000),
            "get_qpos": (partial(_call, car, "get_qpos"), 3000),
            "get_vel": (partial(_call, car, "get_vel"), 3000),
            "scene.step": (partial(_call, scene, "step"), 300),
        }
        label = "grad" if requires_grad else "off-grad"
        total_stock = total_plugin = 0.0
        for name, (fn, n) in calls.items():
            stock, plugin = [], []
            for _ in range(5):
                ggp.uninstall()
                per_call(fn, n // 3)  # warm-up after the switch (see overhead.side_by_side)
                stock.append(per_call(fn, n))
                ggp.install()
                per_call(fn, n // 3)
                plugin.append(per_call(fn, n))
                scene.reset()
            total_stock, total_plugin = total_stock + min(stock), total_plugin + min(plugin)
            print(
                f"| {label} | {name} | {1e6 * min(stock):.1f} | {1e6 * min(plugin):.1f} | {1e6 * (min(plugin) - min(stock)):+.1f} |"
            )
        print(
            f"| {label} | one step of the loop | {1e6 * total_stock:.1f} | {1e6 * total_plugin:.1f} | ratio {total_plugin / total_stock:.3f} |"
        )


if __name__ == "__main__":
    main()
