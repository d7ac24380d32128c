"""
Closed-loop evaluation without gradients: a controller drives whole paths from their start, and the run is scored by
lateral RMS, heading RMS, max lateral error and completion fraction. Plots are written as PNG (matplotlib, Agg).

Many (path, controller setting) runs go through the batched scene at once: each environment takes one run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .paths import ReferencePath, TorchReference
from .sim import Observation, SteeringSim, Trajectory, path_start_states

# A car this far from its path (m) has left it: the run stops counting there and completion says how far it got.
FAIL_LATERAL = 1.0


@dataclass
class PathMetrics:
    """Scores of one closed-loop run of a path."""

    path: str
    lateral_rms: float  # m, over the steps driven before finishing / failing
    heading_rms: float  # rad
    max_lateral: float  # m
    completion: float  # fraction of the path's arc length driven before failing or running out of time
    steps: int  # simulated steps counted in the scores

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunRecord:
    """Time series of one run, for plots."""

    path: ReferencePath
    x: np.ndarray
    y: np.ndarray
    e_lat: np.ndarray
    e_head: np.ndarray
    steer_cmd: np.ndarray
    active: np.ndarray
    dt: float

    @property
    def n_active(self) -> int:
        """Steps up to the end of the scored part of the run (finishing the path, failing, or the time limit)."""
        idx = np.nonzero(self.active)[0]
        return int(idx[-1]) + 2 if len(idx) else 1


ControllerFactory = Callable[[TorchReference, np.ndarray], Callable[[Observation], torch.Tensor]]


def _metrics(path: ReferencePath, traj: Trajectory, env: int, reference: TorchReference) -> PathMetrics:
    active = traj.stack("active")[:, env].numpy()
    e_lat = traj.stack("e_lat")[:, env].detach().numpy()
    e_head = traj.stack("e_head")[:, env].detach().numpy()
    idx = traj.stack("idx")[:, env].numpy()
    n = int(active.sum())
    if n == 0:
        return PathMetrics(path.name, math.nan, math.nan, math.nan, 0.0, 0)
    last = int(np.nonzero(active)[0][-1]) + 1  # the step at which it finished / failed (or the last one)
    reached_end = idx[last] >= len(path) - 1 if last < len(idx) else False
    completion = 1.0 if reached_end else float(path.s[idx[: last + 1].max()] / path.length)
    e_lat_a, e_head_a = e_lat[active], e_head[active]
    return PathMetrics(
        path=path.name,
        lateral_rms=float(np.sqrt(np.mean(e_lat_a**2))),
        heading_rms=float(np.sqrt(np.mean(e_head_a**2))),
        max_lateral=float(np.max(np.abs(e_lat_a))),
        completion=completion,
        steps=n,
    )


@torch.no_grad()
def run_paths(
    sim: SteeringSim,
    paths: Sequence[ReferencePath],
    make_controller: ControllerFactory,
    preview_distances: Sequence[float] = (),
    time_factor: float = 1.3,
    fail_lateral: float = FAIL_LATERAL,
    progress: str | None = None,
) -> tuple[list[PathMetrics], list[RunRecord]]:
    """
    Drive every path of ``paths`` (one run each, from its first point at reference speed) in batches of
    ``sim.n_envs`` environments.

    ``make_controller(reference, run_idx)`` builds the controller of one batch: ``run_idx[b]`` is the index in
    ``paths`` of the run in environment ``b`` (runs are batched by duration, batches are padded by repeating their
    last run), so a controller may
    use per-run settings (the Stanley grid search evaluates one gain set per environment). Each run gets
    ``time_factor`` times its reference duration. ``progress``, if given, labels a progress bar over the batches.
    """
    metrics: list[PathMetrics | None] = [None] * len(paths)
    records: list[RunRecord | None] = [None] * len(paths)
    B = sim.n_envs
    # A batch lasts as long as its longest run: batching runs of similar durations (slow and fast references, long
    # and short paths) avoids simulating mostly finished environments.
    order = np.argsort([p.duration for p in paths], kind="stable")
    batches = range(0, len(paths), B)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch", dynamic_ncols=True)
    for first in batches:
        run_idx = order[first : first + B]
        run_idx = np.concatenate([run_idx, np.full(B - len(run_idx), run_idx[-1])])
        batch_paths = [paths[i] for i in run_idx]
        reference = TorchReference(batch_paths, np.arange(B))
        n_steps = int(math.ceil(max(p.duration for p in batch_paths) * time_factor / sim.dt))
        controller = make_controller(reference, run_idx)
        traj = sim.rollout(
            reference,
            controller,
            path_start_states(reference),
            n_steps,
            preview_distances=preview_distances,
            fail_lateral=fail_lateral,
        )
        n_real = min(B, len(paths) - first)
        x, y = traj.stack("x").numpy(), traj.stack("y").numpy()
        e_lat, e_head = traj.stack("e_lat").numpy(), traj.stack("e_head").numpy()
        cmd, active = traj.stack("steer_cmd").numpy(), traj.stack("active").numpy()
        for b in range(n_real):
            metrics[run_idx[b]] = _metrics(batch_paths[b], traj, b, reference)
            records[run_idx[b]] = RunRecord(
                batch_paths[b], x[:, b], y[:, b], e_lat[:, b], e_head[:, b], cmd[:, b], active[:, b], sim.dt
            )
    return metrics, records


def evaluate_policy(sim: SteeringSim, policy, paths: Sequence[ReferencePath], **kwargs):
    """``run_paths`` for an MLP policy (see ``policy.SteeringMLP``)."""
    policy.eval()
    return run_paths(sim, paths, lambda ref, idx: policy, preview_distances=policy.preview_distances, **kwargs)


def mean_lateral_rms(metrics: Sequence[PathMetrics], penalty: float = FAIL_LATERAL) -> float:
    """Mean lateral RMS over runs, where an incomplete run counts as ``penalty`` over its missing fraction.

    Used to rank controllers: a controller that leaves the path must not win by scoring only its short good part.
    """
    values = [m.completion * m.lateral_rms + (1.0 - m.completion) * penalty for m in metrics]
    return float(np.mean(values)) if values else math.nan


def format_metrics_table(rows: Sequence[tuple[str, PathMetrics]]) -> str:
    """Markdown table of (controller label, metrics) rows."""
    lines = [
        "| controller | path | lateral RMS (m) | heading RMS (rad) | max lateral (m) | completion |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in rows:
        lines.append(
            f"| {label} | {m.path} | {m.lateral_rms:.4f} | {m.heading_rms:.4f} | {m.max_lateral:.4f} | "
            f"{m.completion:.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trajectories(runs: dict[str, Sequence[RunRecord]], path: str | Path, title: str = "") -> Path:
    """Trajectory vs reference, one panel per path, one line per controller label."""
    plt = _pyplot()
    labels = list(runs)
    n_paths = len(runs[labels[0]])
    fig, axes = plt.subplots(1, n_paths, figsize=(5 * n_paths, 4.5), squeeze=False)
    for j in range(n_paths):
        ax = axes[0, j]
        ref = runs[labels[0]][j].path
        ax.plot(ref["pos_x"], ref["pos_y"], "k--", lw=1.5, label="reference")
        for label in labels:
            rec = runs[label][j]
            n = rec.n_active
            ax.plot(rec.x[:n], rec.y[:n], lw=1.2, label=label)
        ax.set_title(ref.name)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_errors(runs: dict[str, Sequence[RunRecord]], path: str | Path) -> Path:
    """Lateral error, heading error and steering command over time, one column per path."""
    plt = _pyplot()
    labels = list(runs)
    n_paths = len(runs[labels[0]])
    fig, axes = plt.subplots(3, n_paths, figsize=(5 * n_paths, 7), squeeze=False, sharex="col")
    for j in range(n_paths):
        for label in labels:
            rec = runs[label][j]
            n = min(rec.n_active, len(rec.steer_cmd))
            t = np.arange(n) * rec.dt
            axes[0, j].plot(t, rec.e_lat[:n], lw=1, label=label)
            axes[1, j].plot(t, rec.e_head[:n], lw=1, label=label)
            axes[2, j].plot(t, rec.steer_cmd[:n], lw=1, label=label)
        axes[0, j].set_title(runs[labels[0]][j].path.name)
        axes[2, j].set_xlabel("time (s)")
    axes[0, 0].set_ylabel("e_lat (m)")
    axes[1, 0].set_ylabel("e_head (rad)")
    axes[2, 0].set_ylabel("steer cmd (rad)")
    axes[0, 0].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curve(curves: dict[str, dict[str, Sequence[float]]], path: str | Path) -> Path:
    """Training curves vs simulated env-steps: ``curves[label]`` has ``env_steps`` and ``loss`` and/or
    ``lateral_rms`` (closed-loop evaluation on the training paths, at ``eval_env_steps``).

    One panel per kind of curve present: a run without evaluations (the demo's) gets the loss panel alone, at full
    width, instead of a figure whose right half is an empty, hidden panel.
    """
    plt = _pyplot()
    panels = [key for key in ("loss", "lateral_rms") if any(c.get(key) for c in curves.values())] or ["loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    ax_of = {key: axes[0, i] for i, key in enumerate(panels)}
    for label, c in curves.items():
        if c.get("loss"):
            steps, loss = np.asarray(c["env_steps"]), np.asarray(c["loss"])
            # Each window is one sample of a noisy loss: show it faint, and its running mean over 25 windows.
            (line,) = ax_of["loss"].plot(steps, loss, lw=0.5, alpha=0.3)
            k = min(25, len(loss))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax_of["loss"].plot(steps[k - 1 :], smooth, lw=1.5, color=line.get_color(), label=f"{label} (mean of {k})")
        if c.get("lateral_rms"):
            ax_of["lateral_rms"].plot(c["eval_env_steps"], c["lateral_rms"], "o-", lw=1, ms=3, label=label)
    ylabels = {"loss": "training loss (window)", "lateral_rms": "closed-loop lateral RMS (m)"}
    for key, ax in ax_of.items():
        ax.set_ylabel(ylabels[key])
        ax.set_xlabel("simulated env-steps")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_demo(
    runs: dict[str, RunRecord],
    history,
    levels: dict[str, float],
    recipe_point: tuple[int, float],
    path: str | Path,
) -> Path:
    """
    The demo's figure, read at a glance: left, the absolute lateral error of each controller along the track (one run
    each); right, the MLP's closed-loop lateral RMS on the track as it trains (``history.eval_*``), the default
    recipe's policy as a point at its budget (``recipe_point`` = (env-steps, RMS)), and the tuned controllers as
    horizontal lines (``levels``).
    """
    plt = _pyplot()
    fig, (ax_err, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, rec in runs.items():
        n = min(rec.n_active, len(rec.e_lat))
        ax_err.plot(np.arange(n) * rec.dt, np.abs(rec.e_lat[:n]), lw=1.1, label=label)
    ax_err.set_xlabel("time along the track (s)")
    ax_err.set_ylabel("|lateral error| (m)")
    ax_err.set_title(next(iter(runs.values())).path.name)
    ax_err.grid(alpha=0.3)
    ax_err.legend(fontsize=8)
    ax_curve.plot(np.asarray(history.eval_env_steps) / 1e3, history.eval_lateral_rms, "o-", ms=3, label="MLP, this run")
    ax_curve.plot(recipe_point[0] / 1e3, recipe_point[1], "*", ms=12, label="MLP, default recipe")
    for i, (label, level) in enumerate(levels.items()):
        ax_curve.axhline(level, ls="--", lw=1, color=f"C{i + 2}", label=label)
    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("simulated env-steps of training (thousands)")
    ax_curve.set_ylabel("closed-loop lateral RMS on the track (m)")
    ax_curve.grid(alpha=0.3, which="both")
    ax_curve.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
