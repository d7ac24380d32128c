"""
Data-parallel training (``steering/distributed.py``, ``genesis-grad train --nproc``) and the training logs.

The 1-vs-2-process check runs the trainer in fresh interpreters (``tests/_distributed_worker.py``): two gloo ranks of
two environments each must end on the parameters of one process with four, over the same windows, to 1e-10 (float64).
Each rank compiles into its own kernel cache (rank r > 0 in ``<cache>-rank<r>``), as ``train --nproc`` does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_stderr_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "_distributed_worker.py"


def run_worker(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_two_processes_match_one_process_over_the_same_global_batch(tmp_path):
    one = run_worker(tmp_path, "one", "--nproc", "1", "--n-envs", "4", "--tensorboard", str(tmp_path / "tb"))
    two = run_worker(tmp_path, "two", "--nproc", "2", "--n-envs", "4")
    diffs = {k: float((one["params"][k] - two["params"][k]).abs().max()) for k in one["params"]}
    assert max(diffs.values()) < 1e-10, diffs
    # The parameters moved (a vacuous match of untrained weights would prove nothing), and the logged global values
    # (loss averaged over the ranks, env-steps of all of them) are the single process's.
    assert one["history"]["skipped"] == two["history"]["skipped"] == 0
    assert two["history"]["env_steps"] == one["history"]["env_steps"]
    assert two["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-12)
    assert two["history"]["lateral_rms"] == pytest.approx(one["history"]["lateral_rms"], rel=1e-12)
    assert two["history"]["grad_norm"] == pytest.approx(one["history"]["grad_norm"], rel=1e-9)

    # TensorBoard (written by the single process through train_gradient's on_window): one point per window and tag.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genesis_grad.steering.tensorboard_log import SCALARS

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(SCALARS.values()) <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == one["history"]["env_steps"]
    assert [e.value for e in loss] == pytest.approx(one["history"]["loss"], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("train/env_steps_per_s"))


# ------------------------------------------------------------------ CLI: --nproc and --tensorboard are checked first


class SceneBuilt(Exception):
    """Raised by the stand-in ``SteeringSim``: the command got past its checks."""


@pytest.fixture
def no_scene(monkeypatch):
    import genesis_grad.steering.sim as sim_module

    def refuse(*args, **kwargs):
        raise SceneBuilt

    monkeypatch.setattr(sim_module, "SteeringSim", refuse)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--nproc", "0"], "--nproc"),
        (["--nproc", "-2"], "--nproc"),
        (["--nproc", "two"], "--nproc"),
        (["--tensorboard", ""], "--tensorboard"),
    ],
)
def test_invalid_distributed_flags_are_refused_at_parse_time(no_scene, tmp_path, capsys, argv, flag):
    assert run_cli(["train", *argv, "--out", str(tmp_path / "out")]) == 2
    assert one_stderr_line(capsys).startswith(f"genesis-grad train: error: argument {flag}: ")
    assert not (tmp_path / "out").exists()


def test_tensorboard_dir_naming_a_file_is_refused(no_scene, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run_cli(["train", "--tensorboard", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in one_stderr_line(capsys)


def test_nproc_must_divide_the_environments(no_scene, tmp_path, capsys):
    assert run_cli(["train", "--nproc", "3", "--n-envs", "16", "--out", str(tmp_path / "out")]) == 2
    line = one_stderr_line(capsys)
    assert line.startswith("genesis-grad train: error: --n-envs 16 does not split over 3 processes"), line
    assert "multiple of 3 (e.g. 18)" in line
    assert not (tmp_path / "out").exists()


def test_nproc_must_agree_with_torchrun(no_scene, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert run_cli(["train", "--nproc", "2", "--out", str(tmp_path / "out")]) == 2
    assert "the launcher started 4 processes" in one_stderr_line(capsys)


def test_valid_nproc_spawns_that_many_ranks_with_the_arguments(no_scene, monkeypatch, tmp_path):
    from genesis_grad.steering import distributed

    calls = []
    monkeypatch.setattr(distributed, "spawn", lambda nproc, fn, args: calls.append((nproc, fn, args)))
    assert run_cli(["train", "--nproc", "2", "--n-envs", "4", "--out", str(tmp_path / "out")]) == 0
    ((nproc, fn, (args,)),) = calls
    assert nproc == 2 and fn.__name__ == "_cmd_train" and args.n_envs == 4 and args.nproc == 2


def test_a_failing_rank_is_one_line_and_status_1(no_scene, monkeypatch, tmp_path, capsys):
    from genesis_grad.steering import distributed

    def fail(nproc, fn, args):
        raise RuntimeError("Traceback (most recent call last):\n  ...\nValueError: boom")

    monkeypatch.setattr(distributed, "spawn", fail)
    assert run_cli(["train", "--nproc", "2", "--n-envs", "4", "--out", str(tmp_path / "out")]) == 1
    assert one_stderr_line(capsys) == "genesis-grad train: error: a training process failed: ValueError: boom"


# ------------------------------------------------------------------ global batch slicing (no scene)


def test_local_slices_partition_the_global_batch():
    from genesis_grad.steering import paths as P
    from genesis_grad.steering.distributed import Distributed
    from genesis_grad.steering.train import TrainConfig, sample_window_starts

    paths = [P.make_path("sine", speed=1.5), P.make_path("circle", speed=1.5), P.make_path("straight", speed=1.0)]
    ref, start = sample_window_starts(paths, 6, torch.Generator().manual_seed(1), TrainConfig(), 0.01)
    slices = [Distributed(rank=r, world_size=3).local_slice(ref, start) for r in range(3)]
    for key in ("x", "y", "yaw", "speed", "steer", "idx"):
        assert torch.equal(torch.cat([getattr(s, key) for _, s in slices]), getattr(start, key))
    for key in ref:
        assert torch.equal(torch.cat([r[key] for r, _ in slices]), ref[key])
    assert torch.equal(torch.cat([r.n for r, _ in slices]), ref.n)
    with pytest.raises(ValueError, match="does not split over 4 processes"):
        Distributed(rank=0, world_size=4).local_slice(ref, start)


# ------------------------------------------------------------------ the demo's training curve


def test_training_curve_without_evaluations_fills_the_figure(tmp_path):
    # Before: the demo passes losses only, and its PNG had a hidden, empty right half.
    import matplotlib.image

    from genesis_grad.steering.evaluate import plot_training_curve

    steps = list(range(100, 6100, 100))
    path = plot_training_curve(
        {"gradient": {"env_steps": steps, "loss": [1.0 / (1 + 0.01 * s) for s in steps]}}, tmp_path / "c.png"
    )
    img = matplotlib.image.imread(path)[..., :3]
    ink = (img < 0.9).any(axis=2)
    half = ink.shape[1] // 2
    assert ink[:, half:].sum() > 0.3 * ink[:, :half].sum()


def test_a_bad_reference_is_reported_once_before_any_rank_starts(no_scene, monkeypatch, tmp_path, capsys):
    from genesis_grad.steering import distributed

    monkeypatch.setattr(distributed, "spawn", lambda *a: pytest.fail("ranks started"))
    csv = tmp_path / "bad.csv"
    csv.write_text("pos_x,pos_y,yaw,speed\n0,0,0,1\n")
    assert (
        run_cli(["train", "--nproc", "2", "--n-envs", "4", "--reference", str(csv), "--out", str(tmp_path / "o")]) == 2
    )
    assert one_stderr_line(capsys).startswith("genesis-grad train: error: ")


def test_the_new_flags_keep_the_cli_light():
    # `genesis-grad --help` stays instant: parsing --nproc / --tensorboard imports neither torch nor TensorBoard.
    code = (
        "import sys; from genesis_grad.cli import build_parser; "
        "build_parser().parse_args(['train', '--nproc', '2', '--tensorboard', 'tb']); "
        "print([m for m in ('torch', 'genesis', 'tensorboard', 'quadrants') if m in sys.modules])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tensorboard_flag_without_tensorboard_installed_is_one_line(no_scene, monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    assert run_cli(["demo", "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "out")]) == 2
    line = one_stderr_line(capsys)
    assert line.startswith("genesis-grad demo: error: argument --tensorboard: needs the tensorboard package"), line
