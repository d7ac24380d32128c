"""System identification: CSV validation, parameter selections, the generator, the loss,
gradient steps, the gradient against finite differences, the Levenberg-Marquardt method (per-window Jacobian rows,
step counts, convergence) and the CLI. Small: 2 windows of 25 steps on the Panda."""

import json

import numpy as np
import pytest
import torch
from helpers import assert_grad_close, central_fd

from genesis_grad.cli import main
from genesis_grad.sysid import parameters as P
from genesis_grad.sysid.errors import ParameterError, TrajectoryFileError
from genesis_grad.sysid.trajectory import Trajectory, load_trajectory_csv, save_trajectory_csv

PANDA_DOFS = [f"joint{i}" for i in range(1, 8)] + ["finger_joint1", "finger_joint2"]
WINDOW, N_WINDOWS = 25, 2
SELECTION = "kp,kv,damping@0-3"


# ------------------------------------------------------------------ CSV validation (no scene)

GOOD = "time,target_a,q_a,q_b\n0,0,0,0\n0.01,0.1,0,0\n0.02,0.2,0.01,0\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("target_a,q_a\n0,0\n0,0\n", "missing column 'time'"),
        ("time,target_a\n0,0\n0.01,0\n", "no measured joint"),
        ("time,q_a\n0,0\n0.01,0\n", "no control target"),
        ("time,target_c,q_a\n0,0,0\n0.01,0,0\n", "'target_c' has no measured position"),
        ("time,target_a,q_a,q_a\n0,0,0,0\n0.01,0,0,0\n", "appears twice"),
        ("time,target_a,q_a\n0,0,0\n", "at least 2 rows"),
        ("time,target_a,q_a\n0,0,0\n0.01,x,0\n", "row 2, column 'target_a': 'x' is not a number"),
        ("time,target_a,q_a\n0,0,0\n0.01,0,nan\n", "row 2, column 'q_a' is 'nan'"),
        ("time,target_a,q_a\n0,0,0\n0,0,0\n", "time must increase"),
        ("time,target_a,q_a\n0,0,0\n0.01,0,0\n0.03,0,0\n", "row 3: time step"),
        ("time,target_a,q_a,q_b,dq_a\n0,0,0,0,0\n0.01,0,0,0,0\n", "dq_<joint> columns must be given"),
    ],
)
def test_csv_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "traj.csv"
    path.write_text(text)
    with pytest.raises(TrajectoryFileError) as info:
        load_trajectory_csv(path)
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_csv_binary_and_bom(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(TrajectoryFileError, match="not a UTF-8 text CSV"):
        load_trajectory_csv(path)
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    traj = load_trajectory_csv(path)
    assert traj.actuated == ["a"] and traj.joints == ["a", "b"] and traj.dt == pytest.approx(0.01)
    assert traj.target_vel is None and traj.velocities().shape == (3, 2)


def test_csv_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    traj = Trajectory(
        np.arange(5) * 0.01,
        ["a"],
        rng.normal(size=(5, 1)),
        rng.normal(size=(5, 1)),
        ["a", "b"],
        rng.normal(size=(5, 2)),
        rng.normal(size=(5, 2)),
    )
    back = load_trajectory_csv(save_trajectory_csv(traj, tmp_path / "t.csv"))
    for key in ("time", "target_pos", "target_vel", "q", "dq"):
        np.testing.assert_array_equal(getattr(back, key), getattr(traj, key))


# ------------------------------------------------------------------ parameter selections (no scene)


@pytest.mark.parametrize(
    "text, count",
    [
        ("kp@0-3", 4),
        ("kp,kv,damping@0-3", 12),
        ("all@0-6;kp@7,8", 30),
        ("damping@joint1,finger_joint2", 2),
        ("all@all", 36),
    ],
)
def test_selection_sizes(text, count):
    spec = P.parse_selection(text, PANDA_DOFS)
    assert len(spec) == count and len(set(spec.entries)) == count


@pytest.mark.parametrize(
    "text, message",
    [
        ("kp", "not KINDS@DOFS"),
        ("mass@0", "unknown parameter kind"),
        ("kp@9", "out of range"),
        ("kp@elbow", "neither a dof index"),
        ("kp@0;kp@0-1", "selected twice"),
        ("", "empty parameter selection"),
    ],
)
def test_selection_errors(text, message):
    with pytest.raises(ParameterError, match=message) as info:
        P.parse_selection(text, PANDA_DOFS)
    assert "\n" not in str(info.value)


def test_params_file_errors(tmp_path):
    base = {k: np.ones(len(PANDA_DOFS)) for k in P.KINDS}
    assert P.load_params('{"kp": {"joint2": 5.0}}', PANDA_DOFS, base)["kp"][1] == 5.0
    for text, message in [
        ('{"kp": {"joint9": 1}}', "unknown joint"),
        ('{"kp": {"joint1": -1}}', "positive finite"),
        ('{"mass": {}}', "unknown parameter kind"),
        ('{"kp": [1, 2]}', "has 2 values"),
    ]:
        with pytest.raises(ParameterError, match=message):
            P.load_params(text, PANDA_DOFS, base)
    with pytest.raises(ParameterError, match="cannot read"):
        P.load_params(str(tmp_path / "missing.json"), PANDA_DOFS, base)


# ------------------------------------------------------------------ CLI flags (no scene)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sysid", "fit", "missing.csv"], "no such file"),
        (["sysid", "fit", "README.md", "--window", "0"], "--window: must be a positive integer"),
        (["sysid", "fit", "README.md", "--method", "sgd"], "--method: invalid choice"),
        (["sysid", "fit", "README.md", "--bound-ratio", "1"], "must be greater than 1"),
        (["sysid", "generate", "--identify", "kp"], "not KINDS@DOFS"),
        (["sysid", "generate", "--noise", "-1"], "--noise: must be zero or positive"),
        (["sysid", "generate", "--params-true", "{bad"], "not valid JSON"),
        (["sysid", "generate", "--params-true", '{"kp": ' + "[" * 3000 + "]" * 3000 + "}"], "nested too deeply"),
        (["sysid", "generate", "--robot", "README.md"], "not an MJCF (.xml) or URDF"),
        (["sysid"], "required"),
    ],
)
def test_cli_flags_one_line_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1


def test_deeply_nested_parameter_file_is_one_line(tmp_path):
    """Before: a `RecursionError` traceback from the JSON parser."""
    path = tmp_path / "deep.json"
    path.write_text('{"kp": ' + "[" * 3000 + "]" * 3000 + "}")
    with pytest.raises(ParameterError, match="nested too deeply"):
        P.load_params(str(path), PANDA_DOFS, {kind: np.ones(len(PANDA_DOFS)) for kind in P.KINDS})


def test_a_parameter_that_moves_nothing_is_named():
    """Before: LM's linear solve raised `LinAlgError: singular matrix` on a trajectory that never moves."""
    from types import SimpleNamespace

    from genesis_grad.sysid.errors import NotIdentifiable
    from genesis_grad.sysid.optimize import _refuse_flat_directions

    problem = SimpleNamespace(spec=SimpleNamespace(labels=["kp[joint1]", "damping[joint1]"]))
    _refuse_flat_directions(problem, np.array([1e-12, 3.0]))
    with pytest.raises(NotIdentifiable, match=r"not identifiable from this trajectory: damping\[joint1\] do\(es\) not"):
        _refuse_flat_directions(problem, np.array([1e-12, 0.0]))


def test_cli_bad_csv_before_any_scene(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("time,target_a,q_a\n0,0,0\n0.01,0,inf\n")
    assert main(["sysid", "fit", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "row 2, column 'q_a'" in err and err.count("\n") == 1


# ------------------------------------------------------------------ with the Panda


@pytest.fixture(scope="module")
def gen_sim():
    from genesis_grad.sysid.sim import SysIdSim, default_robot

    return SysIdSim(default_robot(), dt=0.01, n_envs=1, requires_grad=False)


@pytest.fixture(scope="module")
def fit_sim():
    from genesis_grad.sysid.sim import SysIdSim, default_robot

    return SysIdSim(default_robot(), dt=0.01, n_envs=N_WINDOWS, requires_grad=True)


@pytest.fixture(scope="module")
def lm_sim():
    from genesis_grad.sysid.sim import SysIdSim, default_robot

    return SysIdSim(default_robot(), dt=0.01, n_envs=N_WINDOWS, requires_grad=True, per_env_params=True)


@pytest.fixture(scope="module")
def data(gen_sim):
    from genesis_grad.sysid.generate import generate

    spec = P.parse_selection(SELECTION, gen_sim.dof_names)
    truth = P.perturbed(gen_sim.nominal, spec, 0.3, seed=1)
    traj = generate(gen_sim, truth, duration=N_WINDOWS * WINDOW * 0.01, seed=1)
    return spec, truth, traj


def _problem(fit_sim, traj, selection=SELECTION):
    from genesis_grad.sysid.problem import SysIdProblem

    return SysIdProblem(fit_sim, traj, P.parse_selection(selection, fit_sim.dof_names), WINDOW)


@pytest.fixture(scope="module")
def data_kp_damping(gen_sim):
    """A record whose truth differs from the model in kp and damping of joints 1-2 only (4 parameters)."""
    from genesis_grad.sysid.generate import generate

    spec = P.parse_selection("kp,damping@0-1", gen_sim.dof_names)
    truth = P.perturbed(gen_sim.nominal, spec, 0.3, seed=2)
    return spec, truth, generate(gen_sim, truth, duration=N_WINDOWS * WINDOW * 0.01, seed=2)


def test_generator_round_trip(gen_sim, data, tmp_path):
    spec, truth, traj = data
    assert traj.joints == gen_sim.dof_names and len(traj) == N_WINDOWS * WINDOW + 1
    assert np.ptp(traj.q, axis=0)[:7].min() > 1e-3  # every arm joint moves
    back = load_trajectory_csv(save_trajectory_csv(traj, tmp_path / "traj.csv"))
    for key in ("time", "target_pos", "target_vel", "q", "dq"):
        np.testing.assert_array_equal(getattr(back, key), getattr(traj, key))
    lower, upper = gen_sim.limits
    assert (traj.target_pos >= lower).all() and (traj.target_pos <= upper).all()


def test_loss_zero_at_truth(fit_sim, data):
    spec, truth, traj = data
    problem = _problem(fit_sim, traj)
    z_true = P.to_z(spec.gather(truth), problem.nominal)
    scale = float(np.mean(traj.q**2))
    assert problem.loss(z_true) <= 1e-20 * scale
    assert problem.loss(np.zeros(len(spec))) > 1e-6 * problem.loss(z_true) + 1e-12


@pytest.mark.plugin_only  # parameter gradients are the plugin's (params.py) until a patch carries them
def test_gradient_steps_lower_the_loss(fit_sim, data):
    from genesis_grad.sysid.optimize import fit

    spec, truth, traj = data
    problem = _problem(fit_sim, traj)
    problem.loss_and_grad(np.zeros(len(spec)))
    loss0 = problem.loss(np.zeros(len(spec)))
    result = fit(problem, "adam", iterations=5, lr=0.05, progress=False)
    assert result.loss < 0.5 * loss0
    assert result.history["steps"][-1] == 5 * 2 * N_WINDOWS * WINDOW + N_WINDOWS * WINDOW  # 5 fwd+bwd, 1 fwd


@pytest.mark.plugin_only  # parameter gradients are the plugin's (params.py) until a patch carries them
def test_gradient_matches_finite_differences(fit_sim, data):
    spec, truth, traj = data
    problem = _problem(fit_sim, traj, "all@0-1;kp@7")  # every kind, a hinge and a slide joint
    z = np.linspace(-0.2, 0.2, len(problem.spec))
    _, grad = problem.loss_and_grad(z)
    fd = central_fd(lambda x: torch.tensor(problem.loss(x.numpy()), dtype=torch.float64), torch.tensor(z), eps=1e-5)
    assert_grad_close(torch.tensor(grad), fd, rtol=1e-5)


@pytest.mark.plugin_only  # parameter gradients are the plugin's (params.py) until a patch carries them
def test_cli_generate_and_fit(tmp_path, capsys):
    traj = tmp_path / "traj.csv"
    assert main(["sysid", "generate", "--identify", "kp@0-1", "--duration", "0.5", "--out", str(traj)]) == 0
    truth = json.loads(traj.with_suffix(".truth.json").read_text())
    assert set(truth) == set(P.KINDS) and len(truth["kp"]) == 9
    out = tmp_path / "fit"
    argv = [
        "sysid",
        "fit",
        str(traj),
        "--identify",
        "kp@0-1",
        "--method",
        "cma",
        "--iterations",
        "2",
        "--window",
        "25",
        "--params-true",
        str(traj.with_suffix(".truth.json")),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads((out / "sysid_report.json").read_text())
    assert report["windows"] == {"count": 2, "steps": 25} and len(report["params"]["table"]) == 2
    assert {"rel_error", "rel_std", "sensitivity"} <= set(report["params"]["table"][0])
    # Two iterations stop the fit on its budget: its error bars are flagged (before: 1.4-3.1% error bars printed next
    # to true errors of 7.9-33.7%, nothing said), in the report and on stderr.
    assert report["converged"] is False
    assert "the error bars (rel_std) hold for a converged fit only" in capsys.readouterr().err
    assert (out / "sysid_fit.png").stat().st_size > 10_000
    # The identified model reads back as a parameter file.
    assert P.load_params(str(out / "sysid_report.json"), PANDA_DOFS, {k: np.ones(9) for k in P.KINDS})["kp"][0] > 1
    # The default method (lm) on the same record.
    i = argv.index("--method")
    argv = argv[:i] + argv[i + 2 :]
    argv[argv.index("--iterations") + 1] = "3"
    assert main(argv) == 0
    report = json.loads((out / "sysid_report.json").read_text())
    assert report["method"] == "lm" and report["steps"] > 0 and report["loss"] < report["loss_start"]


# ------------------------------------------------------------------ Levenberg-Marquardt


def test_rollout_restores_unselected_parameters(fit_sim, data):
    """scene.reset() keeps parameters: a rollout must not inherit those of another selection's rollout."""
    spec, truth, traj = data
    kp_only = _problem(fit_sim, traj, "kp@0-3")
    before = kp_only.loss(np.zeros(4))
    _problem(fit_sim, traj).loss(np.full(len(spec), 0.5))  # kv and damping at 1.65x the model's
    assert kp_only.loss(np.zeros(4)) == before


@pytest.mark.plugin_only  # parameter gradients are the plugin's (params.py) until a patch carries them
def test_window_vjp_rows_and_step_counts(lm_sim, fit_sim, data):
    spec, truth, traj = data
    problem = _problem(lm_sim, traj)
    z = np.linspace(-0.2, 0.2, len(spec))
    steps = problem.total_steps
    loss, rows = problem.window_vjp(z)
    assert rows.shape == (N_WINDOWS, len(spec))
    assert problem.total_steps - steps == 2 * N_WINDOWS * WINDOW  # forward + backward of every window
    # Per-window rows J_b^T r_b sum to N / 2 times the gradient of the mean squared error (shared parameters).
    ref_loss, ref_grad = _problem(fit_sim, traj).loss_and_grad(z)
    n_res = N_WINDOWS * WINDOW * len(lm_sim.dof_names)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(rows.sum(axis=0), 0.5 * n_res * ref_grad, rtol=1e-8, atol=1e-14)
    # A rejected trial point costs its forward steps only.
    steps = problem.total_steps
    assert problem.window_vjp(z, keep=lambda value: False) == (loss, None)
    assert problem.total_steps - steps == N_WINDOWS * WINDOW
    with pytest.raises(ValueError, match="per_env_params"):
        _problem(fit_sim, traj).window_vjp(z)


@pytest.mark.plugin_only  # parameter gradients are the plugin's (params.py) until a patch carries them
def test_lm_recovers_parameters_within_1_percent(lm_sim, data_kp_damping):
    from genesis_grad.sysid.optimize import fit

    spec, truth, traj = data_kp_damping
    problem = _problem(lm_sim, traj, "kp,damping@0-1")
    result = fit(problem, "lm", iterations=40, max_steps=40_000, target_loss=1e-20, progress=False)
    assert np.abs(result.values / spec.gather(truth) - 1).max() < 0.01, result.stop_reason
    # Every evaluation is counted: steps are whole windows, forward and backward.
    h = result.history
    assert h["steps"][-1] % (N_WINDOWS * WINDOW) == 0
    assert (np.diff(h["steps"]) >= 0).all()
    assert h["forward_steps"][-1] < h["steps"][-1] <= 2 * h["forward_steps"][-1]
