"""
System-identification benchmark: gradient (Levenberg-Marquardt, Adam, L-BFGS through the rollout) vs CMA-ES vs
Nelder-Mead.

Not a test. For 4, 12 and 30 parameters of the Franka Panda (``kp@0-3``, ``kp,kv,damping@0-3``, ``all@0-6;kp@7,8``),
it generates a noise-free 4 s trajectory (dt 0.01) from a hidden truth (each parameter scaled by exp(U[-0.3, 0.3])),
fits it from the model's own values with each method on the same simulator and loss (8 windows of 50 steps, one
scene with one parameter copy per window, which ``lm`` needs and the others broadcast to), and prints a markdown
table: final loss, largest relative parameter error, simulated steps (forward + backward environment-steps; a reversed
step counts 1) and wall-clock to reach a 1% parameter error and to reach the loss of the comparison (the worse of the
best gradient method's and CMA-ES's final losses), and CMA-ES's steps to each over the method's. The fit plot of the
12-parameter ``lm`` fit goes to docs/img/sysid_fit.png.

The selections are identifiable: in Genesis a PD servo applies ``kp (q_target - q) + kv (v_target - v)`` and the joint
damping ``-damping v``, so with the velocity targets the generator records (the targets' derivative) ``kv`` and
``damping`` act on different signals; only a pure position servo (``v_target = 0``, ``sysid generate
--no-velocity-targets``) makes them collinear (only ``kv + damping`` identifiable). They are badly conditioned though:
the damping (1 N m s/rad) next to ``kv`` (350-450) moves the joints by ~1e-4 rad.

Usage: python benchmarks/sysid.py [--lm-steps 60000,60000,150000] [--grad-evals 150] [--free-steps 800000]
[--sizes 4,12,30] [--out out/bench_sysid]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from genesis_grad.sysid.generate import generate
from genesis_grad.sysid.optimize import GRADIENT_METHODS, fit
from genesis_grad.sysid.parameters import parse_selection, perturbed
from genesis_grad.sysid.problem import SysIdProblem
from genesis_grad.sysid.report import plot_fit
from genesis_grad.sysid.sim import SysIdSim, default_robot

SELECTIONS = {4: "kp@0-3", 12: "kp,kv,damping@0-3", 30: "all@0-6;kp@7,8"}


def first(result, truth, cond):
    """(steps, wall) of the first evaluation after which ``cond(best loss, max rel error)`` holds, or (None, None)."""
    h = result.history
    for steps, wall, loss, z in zip(h["steps"], h["wall"], h["loss"], result.z_history, strict=True):
        if z is not None and cond(loss, np.abs(result.nominal * np.exp(z) / truth - 1).max()):
            return steps, wall
    return None, None


def ratio(cma_steps, steps, cma_budget) -> str:
    """CMA-ES's steps to a goal over a method's; '> x' where CMA-ES did not reach it in the ``cma_budget`` it ran."""
    if steps is None:
        return "-"
    if cma_steps is None:
        return f"> {cma_budget / steps:.1f}x"
    return f"{cma_steps / steps:.1f}x"


def fmt(v, spec="{:,}"):
    return "not reached" if v is None else spec.format(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--lm-steps", default="60000,60000,150000", help="step budgets of lm for 4, 12 and 30 parameters")
    ap.add_argument("--grad-evals", type=int, default=150, help="gradient evaluations of Adam and of L-BFGS")
    ap.add_argument("--free-steps", type=int, default=800_000, help="step budget of CMA-ES and of Nelder-Mead")
    ap.add_argument("--sizes", default="4,12,30")
    ap.add_argument("--out", default="out/bench_sysid")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    gen = SysIdSim(default_robot(), dt=0.01, n_envs=1, requires_grad=False)
    sim = SysIdSim(default_robot(), dt=0.01, n_envs=8, requires_grad=True, per_env_params=True)
    lm_steps = dict(zip(SELECTIONS, (int(s) for s in args.lm_steps.split(",")), strict=True))
    rows, raw = [], {}
    for size in [int(s) for s in args.sizes.split(",")]:
        spec = parse_selection(SELECTIONS[size], sim.dof_names)
        assert len(spec) == size, (len(spec), size)
        truth_full = perturbed(gen.nominal, spec, 0.3, seed=size)
        traj = generate(gen, truth_full, duration=4.0, seed=size)
        problem = SysIdProblem(sim, traj, spec, window=50)
        truth = spec.gather(truth_full)
        results = {}
        for method in ("lm", "adam", "lbfgs", "cma", "nelder-mead"):
            budget = {"lm": lm_steps[size], "adam": args.grad_evals * 800, "lbfgs": args.grad_evals * 800}
            iters = args.grad_evals if method == "adam" else 10**6
            t0 = time.time()
            r = fit(
                problem, method, iterations=iters, max_steps=budget.get(method, args.free_steps), seed=0, progress=False
            )
            r.nominal = problem.nominal
            results[method] = r
            print(
                f"[{size}] {method}: loss {r.loss:.3e}, max err {np.abs(r.values / truth - 1).max():.2%}, "
                f"{r.history['steps'][-1]} steps, {time.time() - t0:.0f} s ({r.stop_reason})",
                flush=True,
            )
        best_grad = min(GRADIENT_METHODS, key=lambda m: results[m].loss)
        target = max(results[best_grad].loss, results["cma"].loss)
        cma_run = results["cma"].history["steps"][-1]
        cma_1 = first(results["cma"], truth, lambda loss, e: e <= 0.01)[0]
        cma_t = first(results["cma"], truth, lambda loss, e, target=target: loss <= target)[0]
        for method, r in results.items():
            err = np.abs(r.values / truth - 1).max()
            s1, w1 = first(r, truth, lambda loss, e: e <= 0.01)
            st, wt = first(r, truth, lambda loss, e, target=target: loss <= target)
            ratio_1 = ratio(cma_1, s1, cma_run)
            ratio_t = ratio(cma_t, st, cma_run)
            rows.append((size, method, r.loss, err, s1, w1, st, wt, ratio_1, ratio_t, r.history["steps"][-1]))
            raw[f"{size}/{method}"] = {
                "loss": r.loss,
                "max_rel_error": err,
                "steps_to_1pct": s1,
                "wall_to_1pct": w1,
                "steps_to_target": st,
                "wall_to_target": wt,
                "target": target,
                "steps_total": r.history["steps"][-1],
                "wall_total": r.history["wall"][-1],
                "stop": r.stop_reason,
                "errors": (r.values / truth - 1).tolist(),
                "labels": spec.labels,
            }
        if size == 12:
            plot_fit(Path("docs/img/sysid_fit.png"), problem, results["lm"].z, np.zeros(size))
    print(f"\ntotal {time.time() - t_start:.0f} s\n")
    print(
        "| params | method | final loss | max param error | steps to 1% | wall to 1% | CMA-ES / it (1%) | "
        "steps to comparison loss | wall to it | CMA-ES / it (loss) | steps run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, m, loss, err, s1, w1, st, wt, r1, rt, total in rows:
        print(
            f"| {size} | {m} | {loss:.2e} | {err:.2%} | {fmt(s1)} | {fmt(w1, '{:.0f} s')} | {r1} | {fmt(st)} | "
            f"{fmt(wt, '{:.0f} s')} | {rt} | {total:,} |"
        )
    (out / "sysid_benchmark.json").write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
