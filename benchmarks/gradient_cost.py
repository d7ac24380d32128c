"""
The price of a gradient: forward + backward of a tracked rollout, plugin against stock Genesis, in one process.

Workloads (float64, CPU, Genesis and torch on one thread):

- ``arm``: the two-link arm of the tests (capsules, gravity, position actuators), no contacts;
- ``car``: the steering car on the ground (free base, four wheel contacts, steering joints).

Each row runs one workload at one batch size and horizon, stock and plugin alternated (`side_by_side`): stock is the
plugin uninstalled, driven by tracked `control_dofs_force` with a loss read through `get_state()` (what stock Genesis
differentiates); the plugin is tracked `control_dofs_position` targets with a loss read through `get_qpos` and
`get_dofs_velocity` every step (the report's loop). Columns:

- forward + backward per env-step (process CPU time, median of the alternations), and its ratio plugin / stock;
- backward / forward of the plugin;
- kernel launches per forward step and per reversed step (counted on `quadrants`'s `Kernel.__call__`);
- memory kept per step: bytes allocated and still in use once a rollout is recorded and its loss held (1000 steps
  unbatched, 100 batched), divided by the steps (glibc's `mallinfo2`, in a child process running with `PYTHONMALLOC=malloc` so that Python
  objects are counted too, and one malloc arena so that every thread's allocations are).

Targets: forward + backward per env-step <= 0.5x stock's at 1 and 16 environments; memory per step <= 1.5x stock's.

Usage: python benchmarks/gradient_cost.py [--models arm,car] [--envs 0,16,256] [--steps 100] [--long 1000]
[--repeats 3]
"""

import argparse
import ctypes
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import genesis as gs
import torch

import genesis_grad_patch as ggp

ROOT = Path(__file__).parents[1]
MODELS = {
    "arm": ROOT / "tests" / "assets" / "arm.xml",
    "car": ROOT / "genesis_grad" / "steering" / "assets" / "car.xml",
}


class LaunchCounter:
    """Counts kernel launches (every `Kernel.__call__`, autodiff kernels included) while active."""

    def __init__(self):
        from quadrants.lang import kernel_impl

        self._cls = kernel_impl.Kernel
        self._stock = self._cls.__call__
        self.count = 0

    def __enter__(self) -> "LaunchCounter":
        stock, counter = self._stock, self

        def counting(kernel, *args, **kwargs):
            counter.count += 1
            return stock(kernel, *args, **kwargs)

        self._cls.__call__ = counting
        return self

    def __exit__(self, *exc) -> None:
        self._cls.__call__ = self._stock


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def allocated_bytes() -> int:
    """Bytes allocated through malloc and in use: numpy, torch's CPU tensors, quadrants, and Python objects when the
    process runs with `PYTHONMALLOC=malloc` (the memory rows run in such a child process)."""
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class Workload:
    def __init__(self, model: str, n_envs: int):
        scene = gs.Scene(sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True), show_viewer=False)
        if model == "car":
            scene.add_entity(gs.morphs.Plane())
        self.entity = scene.add_entity(gs.morphs.MJCF(file=str(MODELS[model])))
        scene.build(n_envs=n_envs)
        self.scene, self.n_envs = scene, n_envs
        n_dofs = self.entity.n_dofs
        self.dofs = [n_dofs - 2, n_dofs - 1]  # the arm's two joints, the car's two steering joints

    def rollout(self, steps: int) -> torch.Tensor:
        """Record a tracked rollout of `steps` steps and return its loss (plugin or stock, whichever is installed)."""
        batch = (self.n_envs,) if self.n_envs else ()
        x = torch.full((steps, *batch, 2), 0.1, dtype=torch.float64, requires_grad=True)
        plugin = ggp.is_installed()
        self.scene.reset()
        loss = 0.0
        for t in range(steps):
            if plugin:
                self.entity.control_dofs_position(x[t], dofs_idx_local=self.dofs)
            else:
                self.entity.control_dofs_force(x[t], dofs_idx_local=self.dofs)
            self.scene.step()
            if plugin:
                loss = loss + (self.entity.get_qpos() ** 2).sum() + self.entity.get_dofs_velocity().square().sum()
            else:
                state = self.scene.sim.rigid_solver.get_state()
                loss = loss + (state.qpos**2).sum() + state.dofs_vel.square().sum()
        return loss

    def forward_backward(self, steps: int) -> tuple[float, float]:
        start = time.process_time()
        loss = self.rollout(steps)
        middle = time.process_time()
        loss.backward()
        return middle - start, time.process_time() - middle

    def launches(self, steps: int) -> tuple[float, float]:
        with LaunchCounter() as counter:
            loss = self.rollout(steps)
            forward = counter.count
            loss.backward()
        return forward / steps, (counter.count - forward) / steps

    def memory_per_step(self, steps: int) -> float:
        self.rollout(steps).backward()  # caches and views made
        # What the reset frees (the last rollout's tape and read states) is not counted against this one. Genesis's
        # checkpoint store, the same on both sides, is kept across rollouts and overwritten step by step: not counted.
        self.scene.reset()
        before = allocated_bytes()
        loss = self.rollout(steps)
        kept = allocated_bytes() - before
        loss.backward()
        return kept / steps


def side_by_side(workload: Workload, steps: int, repeats: int) -> dict[str, tuple]:
    """Per side: median (forward, backward) seconds, alternated; one untimed run after each switch."""
    times = {"stock": [], "plugin": []}
    for i in range(repeats + 1):
        for side in ("stock", "plugin"):
            ggp.install() if side == "plugin" else ggp.uninstall()
            workload.forward_backward(steps)
            if i:
                times[side].append(workload.forward_backward(steps))
    return {
        side: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
        for side, runs in times.items()
    }


def memory_in_child(model: str, n_envs: int, steps: int) -> dict[str, float]:
    """KB kept per step, stock and plugin, measured in a child process (see `allocated_bytes`)."""
    # One malloc arena: `mallinfo2` reports the main arena only, and other threads would allocate in their own.
    env = {**os.environ, "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "1"}
    cmd = [sys.executable, __file__, "--memory-of", f"{model},{n_envs},{steps}"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()
    return {"stock": float(out[-2]), "plugin": float(out[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--models", default="arm,car")
    parser.add_argument("--envs", default="0,16,256", help="0 is one unbatched environment")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--long", type=int, default=1000, help="horizon of the unbatched long rows and of memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # model,n_envs,steps: the child of memory_in_child
    args = parser.parse_args()

    torch.set_num_threads(1)
    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    if args.memory_of:
        model, n_envs, steps = args.memory_of.split(",")
        workload = Workload(model, int(n_envs))
        kept = {}
        for side in ("stock", "plugin"):
            ggp.install() if side == "plugin" else ggp.uninstall()
            kept[side] = workload.memory_per_step(int(steps)) / 1e3
        print(f"{kept['stock']:.2f} {kept['plugin']:.2f}")
        return
    print(f"backend=cpu precision=64 repeats={args.repeats} (process CPU time, per env-step)")
    print(
        "| workload | envs | T | stock fwd+bwd (ms) | plugin fwd+bwd (ms) | plugin / stock | plugin bwd / fwd "
        "| launches fwd (stock / plugin) | launches rev (stock / plugin) | memory per step KB (stock / plugin) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for n_envs in (int(n) for n in args.envs.split(",")):
            workload = Workload(model, n_envs)
            horizons = [args.steps] + ([args.long] if n_envs == 0 and args.long else [])
            counts = {}
            for side in ("stock", "plugin"):
                ggp.install() if side == "plugin" else ggp.uninstall()
                counts[side] = workload.launches(args.steps)
            memory = memory_in_child(model, n_envs, args.long if n_envs == 0 and args.long else args.steps)
            for steps in horizons:
                med = side_by_side(workload, steps, args.repeats)
                per = max(n_envs, 1) * steps
                stock, plugin = sum(med["stock"]) / per, sum(med["plugin"]) / per
                print(
                    f"| {model} | {max(n_envs, 1)} | {steps} | {1e3 * stock:.3f} | {1e3 * plugin:.3f} "
                    f"| {plugin / stock:.2f} | {med['plugin'][1] / med['plugin'][0]:.1f} "
                    f"| {counts['stock'][0]:.1f} / {counts['plugin'][0]:.1f} "
                    f"| {counts['stock'][1]:.1f} / {counts['plugin'][1]:.1f} "
                    f"| {memory['stock']:.1f} / {memory['plugin']:.1f} |",
                    flush=True,
                )
    ggp.install()


if __name__ == "__main__":
    main()
