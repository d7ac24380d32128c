"""The outputs of a fit: the JSON report, the parameter table and the fit plot (measured vs simulated joints)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .optimize import FitResult
from .parameters import params_to_json
from .problem import SysIdProblem


def parameter_rows(problem: SysIdProblem, result: FitResult, truth: np.ndarray | None, unc: dict | None) -> list[dict]:
    """One dict per parameter: label, nominal, identified, and where known the truth, relative error, std, sensitivity."""
    rows = []
    for i, label in enumerate(problem.spec.labels):
        row = {"parameter": label, "nominal": float(problem.nominal[i]), "identified": float(result.values[i])}
        if truth is not None:
            row["true"] = float(truth[i])
            row["rel_error"] = float(abs(result.values[i] / truth[i] - 1.0))
        if unc is not None:
            row["rel_std"] = float(unc["rel_std"][i])
            row["sensitivity"] = float(unc["sensitivity"][i])
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of ``parameter_rows``."""
    cols = [
        c for c in ("parameter", "nominal", "identified", "true", "rel_error", "rel_std", "sensitivity") if c in rows[0]
    ]
    fmt = {"rel_error": "{:.2%}", "rel_std": "{:.2%}", "sensitivity": "{:.2e}"}
    cells = [[fmt.get(c, "{:.6g}").format(r[c]) if c != "parameter" else r[c] for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def write_report(
    path: str | Path, problem: SysIdProblem, result: FitResult, rows: list[dict], unc: dict | None, extra: dict
) -> Path:
    """The JSON report: the identified model (``params.identified``, loadable by ``--params-true``), the table, the
    loss, the step counts, the uncertainty summary and the loss history."""
    full = problem.spec.scatter(result.values, problem.sim.nominal)
    kinds = sorted({k for k, _ in problem.spec.entries}, key=["kp", "kv", "damping", "armature"].index)
    report = {
        "robot": problem.sim.robot_file,
        "method": result.method,
        "loss": result.loss,
        "rmse_rad": float(np.sqrt(result.loss)),
        "stop_reason": result.stop_reason,
        "steps": result.history["steps"][-1] if result.history["steps"] else 0,
        "forward_steps": result.history["forward_steps"][-1] if result.history["steps"] else 0,
        "wall_clock_s": result.history["wall"][-1] if result.history["wall"] else 0.0,
        "windows": {"count": problem.windows.shape[0], "steps": problem.windows.shape[1]},
        "params": {"identified": params_to_json(full, problem.sim.dof_names, kinds), "table": rows},
        "uncertainty": None
        if unc is None
        else {k: unc[k] for k in ("condition", "residual_std", "n_residuals")}
        | {"correlation": np.asarray(unc["correlation"]).round(6).tolist()},
        "history": result.history,
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


def plot_fit(path: str | Path, problem: SysIdProblem, z_fit: np.ndarray, z_start: np.ndarray | None = None) -> Path:
    """
    Measured joint positions against the windows simulated with the identified (and the starting) parameters, one
    panel per joint, and below them the position error of both over time (log scale): a good fit overlays the
    measurement to well below a line width, so the error panel is where it shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = problem.windows
    B, W = w.shape
    t = problem.traj.time[(w.start[:, None] + np.arange(1, W + 1)[None]).reshape(-1)]
    measured = w.q.reshape(B * W, -1).numpy()
    fitted = (problem.residuals(z_fit).reshape(B * W, -1)) + measured
    start = None if z_start is None else problem.residuals(z_start).reshape(B * W, -1) + measured
    names = problem.sim.dof_names
    cols = 3 if len(names) > 4 else 2
    rows = -(-len(names) // cols)
    fig = plt.figure(figsize=(4.2 * cols, 2.3 * rows + 2.4))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.2])
    axes = [fig.add_subplot(grid[j // cols, j % cols]) for j in range(len(names))]
    for j, ax in enumerate(axes):
        for b in range(B):  # one line per window: the restarts from the measured state are visible as gaps
            s = slice(b * W, (b + 1) * W)
            ax.plot(t[s], measured[s, j], color="k", lw=2.2, alpha=0.35, label="measured" if b == 0 else None)
            if start is not None:
                ax.plot(t[s], start[s, j], color="tab:red", lw=0.9, ls="--", label="model (start)" if b == 0 else None)
            ax.plot(t[s], fitted[s, j], color="tab:blue", lw=1.0, label="identified" if b == 0 else None)
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    err_ax = fig.add_subplot(grid[rows, :])
    tiny = 1e-300  # an exact fit has zero error, which a log axis cannot show
    for b in range(B):
        s = slice(b * W, (b + 1) * W)
        if start is not None:
            err_ax.semilogy(
                t[s],
                np.abs(start - measured)[s].max(axis=1) + tiny,
                color="tab:red",
                lw=0.9,
                ls="--",
                label="model (start)" if b == 0 else None,
            )
        err_ax.semilogy(
            t[s],
            np.abs(fitted - measured)[s].max(axis=1) + tiny,
            color="tab:blue",
            lw=1.0,
            label="identified" if b == 0 else None,
        )
    err_ax.set_ylabel("max joint error (rad)", fontsize=8)
    err_ax.set_xlabel("time (s)", fontsize=8)
    err_ax.tick_params(labelsize=7)
    err_ax.legend(fontsize=7)
    fig.suptitle(f"system identification: {len(problem.spec)} parameters, {B} windows of {W} steps", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
