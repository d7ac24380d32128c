"""
Misuse of the ``genesis-grad`` CLI, of policy checkpoints and of reference CSVs.

Every case must end in one clear line (a ``ValueError`` message, or one line on stderr and a non-zero exit status at
the CLI), never a traceback, a hang or a silent wrong result. No test builds a scene: the ``SteeringSim`` the commands
would build is replaced by a stand-in that raises ``SceneBuilt``, so a command that gets past its checks fails fast.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import one_stderr_line, run_cli

from genesis_grad.cli import build_parser, main
from genesis_grad.steering import paths as P
from genesis_grad.steering.policy import SteeringMLP, load_policy, save_policy


class SceneBuilt(Exception):
    """Raised by the stand-in ``SteeringSim``: the command got past its argument and input-file checks."""


@pytest.fixture(autouse=True)
def no_scene(monkeypatch):
    import genesis_grad.steering.sim as sim_module

    def refuse(*args, **kwargs):
        raise SceneBuilt

    monkeypatch.setattr(sim_module, "SteeringSim", refuse)


def write_csv(path, rows, header=("pos_x", "pos_y", "yaw", "speed"), encoding="utf-8"):
    path.write_text(
        ",".join(header) + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows), encoding=encoding
    )
    return path


# ------------------------------------------------------------------ checkpoints are loaded as weights only


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: any code the unpickler runs would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    policy = SteeringMLP(hidden=(8,))
    ckpt = tmp_path / "evil.pt"
    torch.save({"config": policy.config(), "state_dict": policy.state_dict(), "note": _WritesMarker(marker)}, ckpt)
    assert not marker.exists()
    return ckpt, marker


def test_checkpoint_embedding_code_is_refused_without_running_it(malicious_checkpoint):
    # Before: torch.load(weights_only=False) ran the embedded call (the marker was created) and the policy loaded.
    ckpt, marker = malicious_checkpoint
    with pytest.raises(ValueError, match=r"refused: the checkpoint embeds the Python object .*open") as info:
        load_policy(ckpt)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_cli_eval_refuses_a_checkpoint_embedding_code(malicious_checkpoint, capsys):
    ckpt, marker = malicious_checkpoint
    assert run_cli(["eval", "--policy", str(ckpt), "--paths", "sine"]) == 2
    assert "refused" in one_stderr_line(capsys)
    assert not marker.exists()


def test_checkpoints_written_by_the_trainer_still_load(tmp_path):
    from genesis_grad.steering.train import TrainConfig

    torch.manual_seed(0)
    policy = SteeringMLP(preview_distances=(0.0, 1.0), hidden=(8, 4))
    history = {"env_steps": [80], "loss": [1.5], "skipped": 0, "config": TrainConfig().as_dict()}
    save_policy(policy, tmp_path / "new.pt", iteration=1, history=history)
    # The format before this change: tuples in the config (what checkpoints on disk hold).
    torch.save({"config": policy.config(), "state_dict": policy.state_dict(), "iteration": 1}, tmp_path / "old.pt")
    for name in ("new.pt", "old.pt"):
        loaded, record = load_policy(tmp_path / name)
        assert loaded.config() == policy.config() and record["iteration"] == 1
        torch.testing.assert_close(loaded.flat_parameters(), policy.flat_parameters(), rtol=0.0, atol=0.0)


# ------------------------------------------------------------------ unusable checkpoints, one line each


def _bad_checkpoint(tmp_path, kind: str):
    policy = SteeringMLP(hidden=(8,))
    path = tmp_path / f"{kind}.pt"
    if kind in ("truncated", "empty"):
        save_policy(policy, path, iteration=1)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "bare_state_dict":
        torch.save(policy.state_dict(), path)
    elif kind == "other_shape":
        torch.save({"config": policy.config(), "state_dict": SteeringMLP(hidden=(16,)).state_dict()}, path)
    elif kind == "old_observation":
        # Written before the observation layouts were versioned: no obs_version in its config (version 1).
        config = {k: v for k, v in policy.config().items() if k != "obs_version"}
        torch.save({"config": config, "state_dict": policy.state_dict()}, path)
    elif kind == "other_observation":
        torch.save({"config": {**policy.config(), "obs_version": 99}, "state_dict": policy.state_dict()}, path)
    elif kind == "nan_weights":
        state = policy.state_dict()
        state["net.0.weight"][0, 0] = math.nan
        torch.save({"config": policy.config(), "state_dict": state}, path)
    return path


# Before: OSError / RuntimeError (PytorchStreamReader ... central directory), EOFError, KeyError '101', KeyError
# 'config', load_state_dict's multi-line size-mismatch report, and for NaN weights no error at all.
BAD_CHECKPOINTS = {
    "truncated": "truncated or corrupted",
    "empty": "empty file",
    "text": "truncated or corrupted",
    "bare_state_dict": "not a steering-policy checkpoint",
    "other_shape": r"do not fit the model .*net\.0\.weight: checkpoint \[16, 27\], model \[8, 27\]",
    "old_observation": "trained on observation version 1, this genesis-grad reads version 3 only",
    "other_observation": "trained on observation version 99, this genesis-grad reads version 3 only",
    "nan_weights": r"'net\.0\.weight' holds 1 NaN or infinite value",
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_unusable_checkpoint_gives_one_clear_line(tmp_path, kind):
    path = _bad_checkpoint(tmp_path, kind)
    with pytest.raises(ValueError, match=BAD_CHECKPOINTS[kind]) as info:
        load_policy(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_cli_eval_reports_an_unusable_checkpoint_before_building_the_scene(tmp_path, capsys, kind):
    path = _bad_checkpoint(tmp_path, kind)
    assert run_cli(["eval", "--policy", str(path), "--paths", "sine", "--out", str(tmp_path / "out")]) == 2
    line = one_stderr_line(capsys)
    assert line.startswith("genesis-grad eval: error: ") and str(path) in line


def test_checkpoint_errors_are_input_file_errors(tmp_path):
    from genesis_grad.steering.errors import CheckpointError, InputFileError

    with pytest.raises(CheckpointError) as info:
        load_policy(_bad_checkpoint(tmp_path, "empty"))
    assert isinstance(info.value, InputFileError)


# ------------------------------------------------------------------ non-positive speeds


@pytest.mark.parametrize("speed", ["0", "-1", "0.5,0", "-0.0", "nan", "inf"])
def test_speed_flag_must_be_positive(capsys, speed):
    # Before: parsed; training ran, then the evaluation of a 0 m/s path never ended.
    assert run_cli(["train", f"--speed={speed}", "--iterations", "1"]) == 2
    assert "argument --speed:" in one_stderr_line(capsys)


def test_generated_path_refuses_zero_speed():
    with pytest.raises(ValueError, match="must be positive"):
        P.make_path("sine", speed=0.0)


@pytest.mark.parametrize(
    "speeds, match",
    [((0, 0, 0), "row 1: zero speed"), ((1, 0, 0), "row 2: zero speed"), ((1, 1, -2), "row 3: negative speed")],
)
def test_csv_with_non_positive_speed_is_refused_with_the_row(tmp_path, speeds, match):
    # Before: speeds of 0 loaded; the evaluation's time limit (the duration at the reference speed) was unbounded.
    csv = write_csv(tmp_path / "ref.csv", [(i, 0, 0, v) for i, v in enumerate(speeds)])
    with pytest.raises(ValueError, match=match):
        P.load_reference_csv(csv)


def test_cli_refuses_a_zero_speed_csv_before_training(tmp_path, capsys):
    csv = write_csv(tmp_path / "stop.csv", [(0, 0, 0, 0), (1, 0, 0, 0)])
    assert run_cli(["train", "--reference", str(csv), "--out", str(tmp_path / "out")]) == 2
    assert "row 1: zero speed" in one_stderr_line(capsys)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ every flag validated at parse time


@pytest.fixture
def scripts(tmp_path):
    """A doctor script and a gradcheck target that fail the test if they are ever run."""
    script = tmp_path / "script.py"
    script.write_text("def main():\n    raise AssertionError('the script ran')\n")
    return str(script)


INVALID_FLAGS = [
    (["train", "--iterations", "-1"], "--iterations"),
    (["train", "--iterations", "0"], "--iterations"),
    (["train", "--iterations", "2.5"], "--iterations"),
    (["train", "--n-envs", "0"], "--n-envs"),
    (["train", "--horizon", "0"], "--horizon"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--paths", ""], "--paths"),
    (["train", "--paths", "sine,nope"], "--paths"),
    (["train", "--speed", ""], "--speed"),
    (["train", "--speed", "fast"], "--speed"),
    (["train", "--out", ""], "--out"),
    (["train", "--reference", "no_such.csv"], "--reference"),
    (["eval", "--stanley", "--n-envs", "0"], "--n-envs"),
    (["eval", "--policy", "no_such.pt"], "--policy"),
    (["eval", "--stanley", "--paths", ""], "--paths"),
    (["demo", "--reference", "no_such.csv"], "--reference"),
    (["demo", "--iterations", "0"], "--iterations"),
    (["demo", "--n-envs", "0"], "--n-envs"),
    (["doctor", "no_such.py"], "script"),
    (["doctor", "{script}", "--main", "1x"], "--main"),
    (["gradcheck", "{script}"], "target"),
    (["gradcheck", "{script}:main", "--n-probe", "0"], "--n-probe"),
    (["gradcheck", "{script}:main", "--eps", "0"], "--eps"),
    (["gradcheck", "{script}:main", "--rtol", "-1"], "--rtol"),
    (["gradcheck", "{script}:main", "--atol", "nan"], "--atol"),
    (["gradcheck", "{script}:main", "--seed", "-2"], "--seed"),
]


@pytest.mark.parametrize("argv, flag", INVALID_FLAGS, ids=[" ".join(a) for a, _ in INVALID_FLAGS])
def test_invalid_flag_is_refused_at_parse_time(tmp_path, capsys, scripts, argv, flag):
    # Before: --iterations -1 exited 0 with an untrained checkpoint; --n-envs 0, --horizon 0, --paths "", --speed ""
    # ended in torch internals; the doctor/gradcheck flags reached the script or gradcheck unchecked.
    argv = [a.format(script=scripts) for a in argv]
    if argv[0] in ("train", "eval", "demo"):
        argv += ["--out", str(tmp_path / "out")] if "--out" not in argv else []
    assert run_cli(argv) == 2
    line = one_stderr_line(capsys)
    assert line.startswith(f"genesis-grad {argv[0]}: error: argument {flag}: "), line
    assert not (tmp_path / "out").exists()


def test_valid_flags_parse_to_typed_values():
    args = build_parser().parse_args(["train", "--speed", "0.5, 1.5,3", "--paths", "sine,circle", "--seed", "7"])
    assert args.speed == [0.5, 1.5, 3.0] and args.paths == ["sine", "circle"] and args.seed == 7
    defaults = build_parser().parse_args(["demo"])
    assert defaults.reference is None and defaults.iterations == 100 and defaults.wheels == "cylinder"
    assert (defaults.n_envs, defaults.lr) == (16, 3e-3)  # the demo's short run: a small batch at its rate
    train = build_parser().parse_args(["train"])
    assert train.speed == [0.5, 1.5, 3.0] and train.random_default == 32 and train.iterations == 200
    # The default recipe's batch and learning rate go together: the rate suits the batch of 64.
    assert (train.n_envs, train.lr) == (64, 1e-2)


# ------------------------------------------------------------------ reference CSVs


def test_csv_with_utf8_byte_order_mark_loads(tmp_path):
    # Before: "missing column(s) ['pos_x']" (the header's first name was read as '\ufeffpos_x').
    csv = write_csv(tmp_path / "excel.csv", [(0, 0, 0, 1), (1, 0, 0, 1), (2, 0, 0, 1)], encoding="utf-8-sig")
    assert csv.read_bytes().startswith(b"\xef\xbb\xbf")
    ref = P.load_reference_csv(csv)
    assert (ref["pos_x"][0], ref["pos_x"][-1], ref.length) == (0.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "content, match",
    [
        (bytes(range(256)) * 4, r"not a UTF-8 text CSV file: byte 0x80 on line 2"),
        (b"pos_x,pos_y,yaw,speed\n0,0,0,1\n1,\x000,0,1\n", r"not a text CSV file: NUL byte on line 3"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", r"not a UTF-8 text CSV file: byte 0x8b on line 1"),
    ],
    ids=["binary", "nul", "gzip"],
)
def test_binary_csv_gives_one_clear_line(tmp_path, content, match):
    # Before: a raw UnicodeDecodeError ("'utf-8' codec can't decode byte 0x80 in position 128") or _csv.Error.
    path = tmp_path / "junk.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        P.load_reference_csv(path)
    assert "\n" not in str(info.value)


def test_cli_reports_a_binary_csv_in_one_line(tmp_path, capsys):
    path = tmp_path / "junk.csv"
    path.write_bytes(bytes(range(256)))
    assert run_cli(["train", "--reference", str(path), "--out", str(tmp_path / "out")]) == 2
    assert one_stderr_line(capsys).startswith(f"genesis-grad train: error: {path}: not a UTF-8 text CSV file")


def test_right_angle_corners_load(tmp_path):
    # Before: "row 3 goes backwards with respect to the heading (step 1 m, progress along yaw 0 m)".
    q = math.pi / 2
    rows = [(0, 0, 0, 1), (1, 0, 0, 1), (1, 1, q, 1), (1, 2, q, 1), (0, 2, 2 * q, 1), (-1, 2, 2 * q, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = P.load_reference_csv(write_csv(tmp_path / "corners.csv", rows))
    assert ref.length == pytest.approx(5.0)


@pytest.mark.parametrize("turn_deg, ok", [(90.0, True), (95.0, False), (135.0, False), (180.0, False)])
def test_only_a_turn_beyond_90_degrees_goes_backwards(tmp_path, turn_deg, ok):
    a = math.radians(turn_deg)
    rows = [(0, 0, 0, 1), (1, 0, 0, 1), (1 + math.cos(a), math.sin(a), a, 1)]
    csv = write_csv(tmp_path / "turn.csv", rows)
    if ok:
        P.load_reference_csv(csv)
    else:
        with pytest.raises(ValueError, match=rf"row 3 goes backwards: the path turns by {turn_deg:.0f} degrees"):
            P.load_reference_csv(csv)


def _line_rows(direction: float, yaw: float, n: int = 10):
    return [(i * math.cos(direction), i * math.sin(direction), yaw, 1.0) for i in range(n)]


@pytest.mark.parametrize(
    "rows, match",
    [
        # Driving along +y with the yaw in degrees. Before: loaded without a word (90 rad wraps to 117 degrees).
        (_line_rows(math.pi / 2, 90.0), r"row 1: yaw 90 rad .*looks like degrees"),
        # A circle whose yaw is in degrees. Before: "goes backwards with respect to the heading".
        (
            [(4 * math.sin(t), 4 - 4 * math.cos(t), math.degrees(t), 1.0) for t in np.linspace(0, 6, 40)],
            r"row \d+: .*looks like degrees",
        ),
        # Driving along +x with the yaw pointing back. Before: "goes backwards with respect to the heading".
        (_line_rows(0.0, math.pi), r"row 1: yaw 3.14159 rad is 180 degrees off .*against the direction of travel"),
    ],
    ids=["degrees_line", "degrees_circle", "reversed"],
)
def test_yaw_contradicting_the_path_warns_with_the_row(tmp_path, rows, match):
    with pytest.warns(UserWarning, match=match):
        P.load_reference_csv(write_csv(tmp_path / "yaw.csv", rows))


@pytest.mark.parametrize("name", ["sine", "circle", "figure_eight", "lane_change"])
def test_consistent_yaw_does_not_warn(tmp_path, name):
    ref = P.make_path(name)
    # Noise on a few rows (< half of them) is not a unit or sign mistake.
    yaw = ref["yaw"].copy()
    yaw[::3] += 1.0
    P.save_reference_csv({**ref, "yaw": yaw}, tmp_path / "ref.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.load_reference_csv(tmp_path / "ref.csv")


def test_cli_prints_the_yaw_warning_in_one_line(tmp_path, capsys):
    csv = write_csv(tmp_path / "deg.csv", _line_rows(math.pi / 2, 90.0))
    with pytest.raises(SceneBuilt):  # the file is usable: the command goes on to build the scene
        main(["train", "--reference", str(csv), "--out", str(tmp_path / "out")])
    line = one_stderr_line(capsys)
    assert line.startswith(f"genesis-grad train: warning: {csv}: row 1: yaw 90 rad")


@pytest.mark.parametrize(
    "rows, match",
    [
        ([(0, 0, 0, 1), (1, "x", 0, 1)], r"row 2, column 'pos_y': 'x' is not a number"),
        ([(0, 0, 0, 1), (0, 0, 0, 1)], r"row 2 repeats the previous point"),
        ([(0, 0, 0, 1), (1, 0, 0, 1), (0, 0, 0, 1)], r"row 3 goes backwards"),
    ],
)
def test_cli_reports_csv_errors_in_one_line(tmp_path, capsys, rows, match):
    csv = write_csv(tmp_path / "bad.csv", rows)
    assert run_cli(["eval", "--stanley", "--reference", str(csv), "--out", str(tmp_path / "out")]) == 2
    line = one_stderr_line(capsys)
    assert line.startswith(f"genesis-grad eval: error: {csv}: ")
    assert re.search(match, line), line


def test_unreadable_csv_gives_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the reference CSV") as info:
        P.load_reference_csv(tmp_path)  # a directory
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ reference geometry in metres, runs not replaced


def _straight_rows(n: int, length: float = 20.0):
    return [(length * i / (n - 1), 0.0, 0.0, 1.5) for i in range(n)]


def test_a_hairpin_no_car_can_drive_is_refused(tmp_path):
    """Two right angles 1 mm apart (a U-turn in place). Before: accepted, and training reported a perfect run."""
    rows = [(0, 0, 0, 1), (1, 0, 0, 1), (1, 0.001, math.pi / 2, 1), (0, 0.001, math.pi, 1), (-1, 0.001, math.pi, 1)]
    with pytest.raises(ValueError, match=r"rows 2-3: the path turns by 180 degrees within 0.001 m, sharper than"):
        P.load_reference_csv(write_csv(tmp_path / "hairpin.csv", rows))


@pytest.mark.parametrize("radius, ok", [(4.0, True), (1.2, True), (0.9, False)])
def test_a_circle_tighter_than_the_car_turns_is_refused(tmp_path, radius, ok):
    theta = np.linspace(0.0, math.pi, 400)
    rows = [(radius * math.sin(t), radius * (1 - math.cos(t)), t, 1.0) for t in theta]
    csv = write_csv(tmp_path / "circle.csv", rows)
    if ok:
        P.load_reference_csv(csv)
    else:
        with pytest.raises(ValueError, match="sharper than the car can follow"):
            P.load_reference_csv(csv)


def test_min_turn_radius_is_the_cars():
    from genesis_grad.steering import sim

    assert P.MIN_TURN_RADIUS == pytest.approx(sim.WHEELBASE / math.tan(sim.STEER_LIMIT), abs=0.01)


def test_the_path_does_not_depend_on_how_finely_the_file_is_sampled(tmp_path):
    """The same 20 m straight in 201 rows and in 200,001 rows. Before: the nearest-point search window, a fixed number
    of samples, covered 4 m ahead in one and 8 mm in the other (completion 0.41 against 0.04)."""
    coarse = P.load_reference_csv(write_csv(tmp_path / "coarse.csv", _straight_rows(201)))
    fine = P.load_reference_csv(write_csv(tmp_path / "fine.csv", _straight_rows(200_001)))
    assert len(coarse) == len(fine) == 401
    for key in coarse:
        np.testing.assert_allclose(fine[key], coarse[key], atol=1e-9)


def test_resampling_keeps_the_corners_of_a_polyline(tmp_path):
    q = math.pi / 2
    rows = [(0, 0, 0, 1), (2, 0, 0, 1), (2, 2, q, 1), (4, 2, 0, 1)]
    ref = P.load_reference_csv(write_csv(tmp_path / "poly.csv", rows))
    points = set(zip(ref["pos_x"].round(12), ref["pos_y"].round(12), strict=True))
    assert {(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (4.0, 2.0)} <= points
    assert np.diff(ref.s).max() <= 0.05 + 1e-12 and ref.length == pytest.approx(6.0)


@pytest.mark.parametrize(
    "header, rows, match",
    [
        (
            ("pos_x", "pos_y", "yaw", "speed", "pos_x"),
            [(0, 0, 0, 1, 5), (1, 0, 0, 1, 6)],
            r"column\(s\) \['pos_x'\] appear more than once",
        ),
        (("pos_x", "pos_y", "yaw", "speed"), [(0, 0, 0, 1e-9), (1, 0, 0, 1)], "row 1: speed 1e-09 m/s is below 0.05"),
        (("pos_x", "pos_y", "yaw", "speed"), [(0, 0, 0, 1), (1e308, 0, 0, 1)], "row 2, column 'pos_x': 1e.308 m is"),
    ],
    ids=["repeated_column", "speed_1e-9", "coordinate_1e308"],
)
def test_unusable_reference_values_are_refused_at_read_time(tmp_path, header, rows, match):
    with pytest.raises(ValueError, match=match):
        P.load_reference_csv(write_csv(tmp_path / "bad.csv", rows, header=header))


def test_an_out_that_cannot_be_created_is_refused_at_parse_time(capsys):
    """Before: the scene was built (33 s), then a `NotADirectoryError` traceback."""
    assert run_cli(["train", "--out", "/dev/null/sub"]) == 2
    assert "cannot be created: '/dev/null' is not a directory" in one_stderr_line(capsys)


def test_train_refuses_to_replace_another_run(tmp_path, capsys):
    """Before: `policy_last.pt` silently replaced, the old run's `policy_iter*.pt` left beside it."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "policy_iter0040.pt").write_bytes(b"old")
    (out / "checkpoints" / "training_state.pt").write_bytes(b"old")
    assert run_cli(["train", "--out", str(out)]) == 2
    assert "holds another run (2 checkpoint(s)" in one_stderr_line(capsys)
    assert (out / "checkpoints" / "policy_iter0040.pt").exists()
    with pytest.raises(SceneBuilt):  # with --overwrite the command goes on, the old run's checkpoints gone
        run_cli(["train", "--out", str(out), "--overwrite"])
    assert not list((out / "checkpoints").glob("*.pt")), "a later --resume would go on from the replaced run"


def test_sysid_generate_refuses_to_replace_a_truth_file(tmp_path, capsys):
    """Before: `notes.truth.json` beside `--out notes.csv` silently replaced."""
    (tmp_path / "notes.truth.json").write_text("{}")
    assert run_cli(["sysid", "generate", "--out", str(tmp_path / "notes.csv")]) == 2
    assert "notes.truth.json' exist(s); choose another --out, or pass --overwrite" in one_stderr_line(capsys)
    assert (tmp_path / "notes.truth.json").read_text() == "{}"


def test_a_truncated_checkpoint_is_called_truncated(tmp_path):
    """Before: "cannot read the policy checkpoint: Invalid argument"."""
    path = tmp_path / "policy.pt"
    save_policy(SteeringMLP(), path, iteration=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted file"):
        load_policy(path)


def test_a_steering_limit_beyond_90_degrees_is_refused(tmp_path):
    """Before: `steer_limit=1e300` in a checkpoint's config was accepted."""
    path = tmp_path / "policy.pt"
    save_policy(SteeringMLP(), path, iteration=1)
    record = torch.load(path, weights_only=True)
    record["config"]["steer_limit"] = 1e300
    torch.save(record, path)
    with pytest.raises(ValueError, match=r"invalid value\(s\) \{'steer_limit': 1e\+300\}"):
        load_policy(path)


# ------------------------------------------------------------------ Ctrl-C and --resume


def test_ctrl_c_then_resume_gives_the_uninterrupted_run(tmp_path):
    """SIGINT during `train` stops cleanly after the last whole window (exit 130, the policy written, how to go on in
    one line), and `--resume` ends exactly where the uninterrupted run ends. Before: a `KeyboardInterrupt` traceback,
    no `policy_last.pt`, no way to go on."""
    import signal
    import subprocess
    import sys
    import time

    # Enough windows after the first saved state for the signal to land while the run still trains.
    cmd = [sys.executable, "-m", "genesis_grad", "train", "--iterations", "40", "--horizon", "10", "--n-envs", "2"]
    # Three short paths rather than the default recipe's 73 (the run ends with a closed-loop pass over its paths).
    cmd += ["--no-progress", "--speed", "1.5", "--random", "0", "--tracks", "0"]
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # SIGINT at its default in the child, whatever this process inherited: Python does not turn SIGINT into
    # KeyboardInterrupt when it starts with the signal ignored.
    run = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "cut")],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = tmp_path / "cut" / "checkpoints" / "training_state.pt"
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        try:
            if torch.load(state, weights_only=True)["iteration"] >= 1:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Go on with the same command and --resume" in err.strip().splitlines()[-1]
    assert (tmp_path / "cut" / "checkpoints" / "policy_last.pt").is_file()
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_policy(tmp_path / "whole" / "checkpoints" / "policy_last.pt")[0].state_dict()
    b = load_policy(tmp_path / "cut" / "checkpoints" / "policy_last.pt")[0].state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-12


def test_resume_refuses_other_flags_or_nothing_to_resume(tmp_path, capsys):
    from genesis_grad.steering.cli import run_config

    out = tmp_path / "run"
    assert run_cli(["train", "--out", str(out), "--resume"]) == 2
    assert "nothing to resume in" in one_stderr_line(capsys)
    (out / "checkpoints").mkdir(parents=True)
    args = build_parser().parse_args(["train", "--out", str(out)])
    torch.save({"iteration": 3, "run_config": run_config(args)}, out / "checkpoints" / "training_state.pt")
    assert run_cli(["train", "--out", str(out), "--resume", "--lr", "0.003"]) == 2
    assert "--resume needs the flags of the run it continues: --lr 0.01 -> 0.003" in one_stderr_line(capsys)
    with pytest.raises(SceneBuilt):  # the same flags: the command goes on to build the scene
        run_cli(["train", "--out", str(out), "--resume"])


def test_train_on_ones_own_reference_adds_no_random_references(tmp_path):
    """`train --reference my.csv` trains on that file alone; without it, the default recipe's 32 + 32 random ones."""
    from genesis_grad.steering import paths as P
    from genesis_grad.steering.cli import _paths_from_args

    csv = tmp_path / "mine.csv"
    P.save_reference_csv(P.sine(), csv)
    own = _paths_from_args(build_parser().parse_args(["train", "--reference", str(csv)]))
    assert [p.name for p in own] == ["mine"]
    more = _paths_from_args(build_parser().parse_args(["train", "--reference", str(csv), "--tracks", "2"]))
    assert [p.name for p in more] == ["mine", "track_train_0", "track_train_1"]
    assert len(_paths_from_args(build_parser().parse_args(["train"]))) == 9 + 32 + 32
