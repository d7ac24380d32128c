"""
Reference paths for the steering task.

A reference is a read-only mapping with the four arrays the users' script indexes, ``pos_x``, ``pos_y``, ``yaw`` and
``speed``, sampled at (roughly) uniform arc-length spacing. Derived quantities the controllers need (arc length,
curvature) are attributes, so that ``dict(reference)`` stays exactly the format of the report.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..csv_text import read_csv_text
from .errors import ReferenceFileError

if TYPE_CHECKING:
    import torch

REFERENCE_KEYS = ("pos_x", "pos_y", "yaw", "speed")

# Default spacing between reference points, in meters. The nearest-point search quantizes the along-track position to
# this spacing; on a curve of radius R the lateral error it induces is about ds^2 / (8 R), i.e. < 0.1 mm here.
DEFAULT_DS = 0.05

# load_reference_csv: consecutive points closer than this (m) count as a repeated point; a turn whose cosine is below
# -_COS_TOLERANCE (more than 90 degrees, up to rounding) as going backwards; a yaw further than YAW_TOLERANCE_DEG from
# the direction of travel on most rows draws a warning.
_MIN_STEP = 1e-9
_COS_TOLERANCE = 1e-9
YAW_TOLERANCE_DEG = 30.0
# The steering car's minimum turning radius (m): WHEELBASE / tan(STEER_LIMIT) = 0.6 / tan(0.5) in sim.py (a test keeps
# them equal). Within a quarter of its circle it turns by 90 degrees at most: a path turning by more than that within
# so short a stretch (a hairpin of two right angles, a circle tighter than the car's) cannot be followed.
MIN_TURN_RADIUS = 1.1
MAX_TURN_DEG = 90.0
# Coordinates beyond this (m) are refused: no track is this large, and squared distances of larger ones overflow.
MAX_COORDINATE = 1e6
# Reference speeds below this (m/s) are refused: an evaluation lasts the path's duration at its reference speed.
MIN_SPEED = 0.05
# A vertex whose direction changes by more than this (rad) is a corner: kept exactly when the path is resampled.
_CORNER_RAD = 0.05


def wrap_angle(angle):
    """Wrap angles to [-pi, pi). Works on floats, numpy arrays and torch tensors."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


class ReferencePath(Mapping):
    """
    A reference path: arrays ``pos_x``, ``pos_y``, ``yaw`` (rad) and ``speed`` (m/s) of equal length.

    Parameters
    ----------
    pos_x, pos_y, yaw, speed : array_like
        The reference samples, in driving order.
    name : str, optional
        A label used in reports and plots.

    Attributes
    ----------
    s : np.ndarray
        Cumulative arc length (m), starting at 0.
    curvature : np.ndarray
        Signed curvature d(yaw)/ds (1/m), positive when turning left.
    """

    def __init__(self, pos_x, pos_y, yaw, speed, name: str = "path"):
        self._data = {
            "pos_x": np.asarray(pos_x, dtype=np.float64).copy(),
            "pos_y": np.asarray(pos_y, dtype=np.float64).copy(),
            "yaw": wrap_angle(np.asarray(yaw, dtype=np.float64)),
            "speed": np.asarray(speed, dtype=np.float64).copy(),
        }
        for value in self._data.values():
            value.flags.writeable = False
        self.name = name
        seg = np.hypot(np.diff(self._data["pos_x"]), np.diff(self._data["pos_y"]))
        self.s = np.concatenate([[0.0], np.cumsum(seg)])
        yaw_unwrapped = np.unwrap(self._data["yaw"])
        if len(self) > 2:
            curvature = np.gradient(yaw_unwrapped, self.s)
        else:
            curvature = np.zeros(len(self))
        self.curvature = curvature
        self.s.flags.writeable = False
        self.curvature.flags.writeable = False

    def __getitem__(self, key: str) -> np.ndarray:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data["pos_x"])

    @property
    def length(self) -> float:
        """Total arc length (m)."""
        return float(self.s[-1])

    @property
    def duration(self) -> float:
        """Time (s) to drive the whole path at the reference speed."""
        ds = np.diff(self.s)
        v = 0.5 * (self._data["speed"][1:] + self._data["speed"][:-1])
        return float(np.sum(ds / np.maximum(v, 1e-3)))

    def __repr__(self) -> str:
        return f"ReferencePath(name={self.name!r}, n={len(self)}, length={self.length:.2f} m)"


def _from_curve(
    xy: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    t_end: float,
    speed: float | Callable[[np.ndarray], np.ndarray],
    name: str,
    ds: float = DEFAULT_DS,
) -> ReferencePath:
    """Sample a parametric curve t in [0, t_end] uniformly in arc length, with yaw from its tangent."""
    t = np.linspace(0.0, t_end, 20001)
    x, y = xy(t)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    n = max(int(round(s[-1] / ds)), 1) + 1
    s_new = np.linspace(0.0, s[-1], n)
    t_new = np.interp(s_new, s, t)
    x, y = xy(t_new)
    # Tangent from a small parametric step, which is exact up to O(dt^2) and needs no finite difference over samples.
    dt = 1e-6 * t_end
    x1, y1 = xy(t_new + dt)
    x0, y0 = xy(t_new - dt)
    yaw = np.arctan2(y1 - y0, x1 - x0)
    v = speed(s_new) if callable(speed) else np.full(n, float(speed))
    if not (np.isfinite(v) & (v > 0.0)).all():
        # A car told to stop never finishes the path, and the evaluation time (the path's duration) is unbounded.
        raise ValueError(f"Path '{name}': the reference speed must be positive and finite, got {np.min(v):g} m/s.")
    return ReferencePath(x, y, yaw, v, name=name)


def straight(length: float = 20.0, speed: float = 1.5, ds: float = DEFAULT_DS) -> ReferencePath:
    """A straight line along +x from the origin."""
    return _from_curve(lambda t: (t, np.zeros_like(t)), length, speed, "straight", ds)


def lane_change(
    length: float = 24.0, offset: float = 1.5, transition: float = 6.0, speed: float = 1.5, ds: float = DEFAULT_DS
) -> ReferencePath:
    """Straight, then a smooth (cosine) lateral shift of ``offset`` over ``transition`` meters, then straight."""
    start = 0.5 * (length - transition)

    def xy(t):
        u = np.clip((t - start) / transition, 0.0, 1.0)
        return t, offset * 0.5 * (1.0 - np.cos(np.pi * u))

    return _from_curve(xy, length, speed, "lane_change", ds)


def circle(radius: float = 4.0, laps: float = 1.0, speed: float = 1.5, ds: float = DEFAULT_DS) -> ReferencePath:
    """A counter-clockwise circle starting at the origin heading +x (center at (0, radius))."""

    def xy(t):
        return radius * np.sin(t), radius * (1.0 - np.cos(t))

    return _from_curve(xy, 2.0 * np.pi * laps, speed, "circle", ds)


def sine(
    length: float = 30.0, amplitude: float = 1.0, wavelength: float = 10.0, speed: float = 1.5, ds: float = DEFAULT_DS
) -> ReferencePath:
    """A sine wave y = A sin(2 pi x / wavelength) along +x."""
    k = 2.0 * np.pi / wavelength
    return _from_curve(lambda t: (t, amplitude * np.sin(k * t)), length, speed, "sine", ds)


def figure_eight(size: float = 10.0, speed: float = 1.5, ds: float = DEFAULT_DS) -> ReferencePath:
    """
    A flattened figure eight, x = a sin t, y = (a / 4) sin 2t, driven once from the crossing.

    Flattening the lemniscate of Gerono (y = (a / 2) sin 2t) halves its peak curvature: about 4.3 / a, so 0.43 1/m
    (2.3 m radius) for the default ``size`` a = 10 m, within the car's reach at 0.5 rad of steering.
    """

    def xy(t):
        return size * np.sin(t), 0.25 * size * np.sin(2.0 * t)

    return _from_curve(xy, 2.0 * np.pi, speed, "figure_eight", ds)


GENERATORS: dict[str, Callable[..., ReferencePath]] = {
    "straight": straight,
    "lane_change": lane_change,
    "circle": circle,
    "sine": sine,
    "figure_eight": figure_eight,
}


def make_path(name: str, **kwargs) -> ReferencePath:
    """Build a reference path by generator name (see ``GENERATORS``)."""
    if name not in GENERATORS:
        raise ValueError(f"Unknown path '{name}', expected one of {sorted(GENERATORS)}.")
    return GENERATORS[name](**kwargs)


def load_reference_csv(path: str | Path, name: str | None = None) -> ReferencePath:
    """
    Read a reference path from a CSV file with a header holding the columns ``pos_x``, ``pos_y``, ``yaw``, ``speed``.

    The file is UTF-8, with or without the byte-order mark spreadsheet programs write. Other columns are ignored.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    name : str, optional
        Label of the path; the file's stem by default.

    Returns
    -------
    ReferencePath

    Raises
    ------
    ReferenceFileError
        A ``ValueError`` whose message is one line with the file, the offending row (1-based, header excluded) and the
        reason: the file cannot be read or is not UTF-8 text, a column is missing, a value is not a finite number,
        there are fewer than 2 rows, a speed is not positive, a point repeats the previous one, or the path goes
        backwards (turns by more than 90 degrees from one segment to the next, so its arc length along the direction
        of travel decreases).

    Warns
    -----
    UserWarning
        When the yaw disagrees with the direction of the path by more than ``YAW_TOLERANCE_DEG`` on most rows (yaw in
        degrees instead of radians, or pointing against the direction of travel). The path is still returned.
    """
    path = Path(path)
    text = read_csv_text(path, "reference CSV", ReferenceFileError)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        repeated = sorted({h for h in header if header.count(h) > 1 and h})
        if repeated:
            raise ReferenceFileError(f"{path}: column(s) {repeated} appear more than once in the header.")
        missing = [key for key in REFERENCE_KEYS if key not in header]
        if missing:
            raise ReferenceFileError(
                f"{path}: missing column(s) {missing}; expected a header with {list(REFERENCE_KEYS)}."
            )
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise ReferenceFileError(f"{path}: line {reader.line_num}: not valid CSV: {exc}.") from None
    if len(rows) < 2:
        raise ReferenceFileError(f"{path}: a reference path needs at least 2 rows, got {len(rows)}.")

    columns = {key: np.empty(len(rows)) for key in REFERENCE_KEYS}
    for i, row in enumerate(rows):
        for key in REFERENCE_KEYS:
            raw_value = row.get(key)
            try:
                value = float(raw_value)
            except (TypeError, ValueError):
                raise ReferenceFileError(
                    f"{path}: row {i + 1}, column '{key}': {raw_value!r} is not a number."
                ) from None
            if not math.isfinite(value):
                raise ReferenceFileError(f"{path}: row {i + 1}, column '{key}' is {raw_value!r} (NaN or infinite).")
            if key in ("pos_x", "pos_y") and abs(value) > MAX_COORDINATE:
                raise ReferenceFileError(
                    f"{path}: row {i + 1}, column '{key}': {value:g} m is beyond {MAX_COORDINATE:g} m (not metres?)."
                )
            columns[key][i] = value

    # A speed of zero makes the car stop on the path: the run never reaches the end, and the evaluation time, which is
    # the path's duration at the reference speed, is unbounded.
    speed = columns["speed"]
    if (speed <= 0.0).any():
        i = int(np.argmax(speed <= 0.0))
        kind = "negative" if speed[i] < 0.0 else "zero"
        raise ReferenceFileError(
            f"{path}: row {i + 1}: {kind} speed {speed[i]:g} m/s; reference speeds must be positive."
        )
    if (speed < MIN_SPEED).any():
        i = int(np.argmax(speed < MIN_SPEED))
        raise ReferenceFileError(
            f"{path}: row {i + 1}: speed {speed[i]:g} m/s is below {MIN_SPEED:g} m/s (an evaluation lasts the path's "
            "duration at its reference speed)."
        )

    dx, dy = np.diff(columns["pos_x"]), np.diff(columns["pos_y"])
    seg = np.hypot(dx, dy)
    if (seg <= _MIN_STEP).any():
        i = int(np.argmax(seg <= _MIN_STEP))
        raise ReferenceFileError(
            f"{path}: arc length is not strictly increasing: row {i + 2} repeats the previous point "
            f"(step {seg[i]:.3g} m)."
        )
    # The arc length decreases when a segment has negative progress along the previous one, i.e. the path turns by
    # more than 90 degrees at a point and doubles back: the nearest-point search (and e_lat) become ambiguous there.
    # A 90-degree corner has zero progress and is fine. The yaw column plays no part, it is checked below.
    cos_turn = (dx[1:] * dx[:-1] + dy[1:] * dy[:-1]) / (seg[1:] * seg[:-1])
    backwards = cos_turn < -_COS_TOLERANCE
    if backwards.any():
        i = int(np.argmax(backwards))
        turn = math.degrees(math.acos(max(-1.0, float(cos_turn[i]))))
        raise ReferenceFileError(
            f"{path}: arc length is not strictly increasing: row {i + 3} goes backwards: the path turns by "
            f"{turn:.0f} degrees at row {i + 2} (more than 90 degrees reverses the direction of travel)."
        )
    _refuse_sharp_turns(path, dx, dy, seg)
    _warn_on_yaw_mismatch(path, columns["yaw"], np.arctan2(dy, dx))
    return ReferencePath(**_resampled(columns, seg, dx, dy), name=name or path.stem)


def _turns(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The signed change of direction (rad) at each interior point of a polyline."""
    return np.arctan2(dx[:-1] * dy[1:] - dy[:-1] * dx[1:], dx[:-1] * dx[1:] + dy[:-1] * dy[1:])


def _refuse_sharp_turns(path: Path, dx: np.ndarray, dy: np.ndarray, seg: np.ndarray) -> None:
    """Refuse a path whose direction changes by more than `MAX_TURN_DEG` within a quarter of the car's turning
    circle, wherever it is and however finely it is sampled (the check is in metres, not in rows)."""
    if len(seg) < 2:
        return
    window = 0.5 * math.pi * MIN_TURN_RADIUS
    s_turn = np.cumsum(seg)[:-1]  # arc length at each interior point
    cumulative = np.concatenate([[0.0], np.cumsum(_turns(dx, dy))])
    # For each interior point i, the net turn over the points in [s_i, s_i + window].
    end = np.searchsorted(s_turn, s_turn + window, side="right")
    net = cumulative[end] - cumulative[np.arange(len(s_turn))]
    worst = int(np.argmax(np.abs(net)))
    limit = math.radians(MAX_TURN_DEG + 0.5)
    if abs(net[worst]) > limit:
        # The shortest stretch from there that turns too far: its first and last turning points (1-based rows).
        partial = cumulative[worst + 1 : end[worst] + 1] - cumulative[worst]
        last = worst + int(np.argmax(np.abs(partial) > limit))
        raise ReferenceFileError(
            f"{path}: rows {worst + 2}-{last + 2}: the path turns by {math.degrees(abs(partial[last - worst])):.0f} "
            f"degrees within {s_turn[last] - s_turn[worst]:.3g} m, sharper than the car can follow (at most "
            f"{MAX_TURN_DEG:.0f} degrees within {window:.2f} m, its minimum turning radius being {MIN_TURN_RADIUS} m); "
            "space the turns further apart or round them."
        )


def _resampled(columns: dict, seg: np.ndarray, dx: np.ndarray, dy: np.ndarray, ds: float = DEFAULT_DS) -> dict:
    """
    The path at a spacing of about `ds`, its corners kept exactly: the nearest-point search and the preview count
    samples, so a path's metrics must not depend on how finely its file was written. A file already sampled at about
    `ds` is returned as it is.
    """
    if ((seg > 0.5 * ds) & (seg < 1.5 * ds)).all():
        return columns
    s = np.concatenate([[0.0], np.cumsum(seg)])
    corners = np.flatnonzero(np.abs(_turns(dx, dy)) > _CORNER_RAD) + 1
    knots = np.unique(np.concatenate([[0], corners, [len(s) - 1]]))
    pieces = [
        np.linspace(s[a], s[b], max(int(round((s[b] - s[a]) / ds)), 1) + 1)[:-1]
        for a, b in zip(knots[:-1], knots[1:], strict=True)
    ]
    s_new = np.concatenate([*pieces, [s[-1]]])
    out = {key: np.interp(s_new, s, columns[key]) for key in ("pos_x", "pos_y", "speed")}
    # The yaw of the file's nearest point, as the search would have found it on the file's own points: a polyline's
    # yaw is the heading of a whole segment, which interpolating between its corners would turn halfway.
    after = np.clip(np.searchsorted(s, s_new), 1, len(s) - 1)
    nearest = np.where(s_new - s[after - 1] <= s[after] - s_new, after - 1, after)
    out["yaw"] = columns["yaw"][nearest]
    return out


def _yaw_disagreement(yaw: np.ndarray, seg_heading: np.ndarray) -> np.ndarray:
    """Per row, the angle (rad) between the yaw and the closer of the directions of its incoming and outgoing segments.

    Comparing with both segments accepts any yaw at a corner (the heading there is anything between the two).
    """
    heading_in = np.concatenate([seg_heading[:1], seg_heading])
    heading_out = np.concatenate([seg_heading, seg_heading[-1:]])
    return np.minimum(np.abs(wrap_angle(yaw - heading_in)), np.abs(wrap_angle(yaw - heading_out)))


def _warn_on_yaw_mismatch(path: Path, yaw: np.ndarray, seg_heading: np.ndarray) -> None:
    """
    Warn when the yaw contradicts the direction of travel on most rows: a unit or sign mistake, not noise.

    Two cases: the yaw is more than ``YAW_TOLERANCE_DEG`` off on most rows; or it is in degrees, which read as radians
    is usually far off but not always (90 rad wraps to 117 degrees, only 27 degrees off a path heading 90 degrees).
    Degrees are recognized by values beyond one turn that fit the path better once converted; radians only exceed a
    turn when unwrapped over a whole lap, and then converting them does not fit.
    """
    tolerance = math.radians(YAW_TOLERANCE_DEG)
    disagreement = _yaw_disagreement(yaw, seg_heading)
    as_degrees = _yaw_disagreement(np.radians(yaw), seg_heading)
    bad = disagreement > tolerance
    looks_like_degrees = (
        np.abs(yaw).max() > 2.0 * math.pi
        and (as_degrees <= tolerance).mean() > 0.5
        and (as_degrees < disagreement).mean() > 0.5
    )
    if bad.mean() <= 0.5 and not looks_like_degrees:
        return
    i = int(np.argmax(bad)) if bad.any() else int(np.argmax(as_degrees < disagreement))
    off = math.degrees(float(disagreement[i]))
    direction = math.degrees(float(seg_heading[min(i, len(seg_heading) - 1)]))
    # Small values fit both a reversed yaw and degrees (3.14 is also 3 degrees off +x): values beyond a turn decide
    # for degrees, otherwise the reversal is the likelier mistake.
    if looks_like_degrees:
        hint = "the yaw column looks like degrees; it must be in radians"
    elif (_yaw_disagreement(yaw + math.pi, seg_heading) > tolerance).mean() <= 0.5:
        hint = "the yaw points against the direction of travel"
    elif (as_degrees > tolerance).mean() <= 0.5:
        hint = "the yaw column looks like degrees; it must be in radians"
    else:
        hint = "the yaw is expected in radians, along the direction from each point to the next"
    warnings.warn(
        f"{path}: row {i + 1}: yaw {yaw[i]:g} rad is {off:.0f} degrees off the path direction ({direction:.0f} "
        f"degrees), more than {YAW_TOLERANCE_DEG:g} degrees on {int(bad.sum())} of {len(bad)} rows: {hint}.",
        UserWarning,
        stacklevel=3,
    )


def save_reference_csv(reference: Mapping, path: str | Path) -> None:
    """Write a reference mapping to CSV with the columns read by ``load_reference_csv``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [np.asarray(reference[key], dtype=np.float64) for key in REFERENCE_KEYS]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REFERENCE_KEYS)
        for row in zip(*arrays, strict=True):
            writer.writerow([repr(float(v)) for v in row])


# ------------------------------------------------------------------ procedurally randomized references

# Car limits the random references respect (assets/car.xml; duplicated from sim.py, which imports Genesis, so that this
# module stays importable without it; tests/test_steering.py checks they agree).
CAR_WHEELBASE = 0.6
CAR_STEER_LIMIT = 0.5
# The tightest curvature a reference may ask for, as a fraction of the kinematic limit tan(STEER_LIMIT) / WHEELBASE
# (0.91 1/m): the controller needs steering headroom to correct errors on the tightest turn.
CURVATURE_MARGIN = 0.8
SPEED_RANGE = (0.5, 5.0)  # m/s, the speed range the single policy is trained and evaluated on
MAX_LATERAL_ACCEL = 4.0  # m/s^2, well under the wheel-ground friction (mu = 1): v^2 |kappa| stays below it
MAX_ACCEL = 1.5  # m/s^2 along the path, well under what the rear drive delivers

# Randomized references are identified by (split, index): the generator is seeded with both, so a training reference
# and a held-out one can never coincide, whatever indices a caller asks for.
SPLITS = {"train": 0, "held_out": 1}


def random_reference(
    index: int,
    split: str = "train",
    length: float = 30.0,
    curvature_margin: float = CURVATURE_MARGIN,
    speed_range: tuple[float, float] = SPEED_RANGE,
    max_lateral_accel: float = MAX_LATERAL_ACCEL,
    max_accel: float = MAX_ACCEL,
    ds: float = DEFAULT_DS,
) -> ReferencePath:
    """
    A random reference the car can physically follow: a smooth random curvature profile and a random speed profile.

    The curvature is a cosine interpolation between random knots 2 to 6 m apart, each uniform in ``[-kappa_max,
    kappa_max]`` with ``kappa_max = curvature_margin * tan(STEER_LIMIT) / WHEELBASE``, with straight stretches (a third
    of the knots are zero), and at most ``max_lateral_accel / speed_range[0]^2``. The speed is a cosine interpolation between random knots 4 to 10 m apart, uniform in
    ``speed_range``, then lowered where ``v^2 |kappa|`` would exceed ``max_lateral_accel`` and rate-limited to
    ``max_accel`` (forward and backward passes on ``v^2``), so every speed stays in ``speed_range``.

    Parameters
    ----------
    index : int
        Which reference of the split (non-negative).
    split : {"train", "held_out"}
        The seed stream: the references of the two splits are drawn from disjoint streams.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}, expected one of {sorted(SPLITS)}.")
    if index < 0:
        raise ValueError(f"The reference index must be non-negative, got {index}.")
    rng = np.random.default_rng(np.random.SeedSequence([SPLITS[split], int(index)]))
    # A reference at a constant high speed (speed_range = (5, 5)) cannot turn as tightly as the kinematic limit allows:
    # its curvature is bounded by the lateral acceleration at the lowest speed of the range as well.
    kappa_max = min(
        curvature_margin * math.tan(CAR_STEER_LIMIT) / CAR_WHEELBASE, max_lateral_accel / speed_range[0] ** 2
    )
    n = max(int(round(length / ds)), 2) + 1
    s = np.linspace(0.0, length, n)

    def curvature_values(m: int) -> np.ndarray:
        v = rng.uniform(-kappa_max, kappa_max, m) * (rng.uniform(size=m) > 1.0 / 3.0)
        v[0] = 0.0  # start straight: the car starts with its wheels straight, at the first point
        return v

    kappa = _knot_profile(s, rng, (2.0, 6.0), curvature_values)
    speed = _speed_profile(s, rng, speed_range, np.sqrt(max_lateral_accel / np.maximum(np.abs(kappa), 1e-9)), max_accel)
    step = np.diff(s)
    # Integrate the heading and the position (trapezoid on the heading's cosine and sine).
    yaw = np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * step)])
    x = np.concatenate([[0.0], np.cumsum(0.5 * (np.cos(yaw[1:]) + np.cos(yaw[:-1])) * step)])
    y = np.concatenate([[0.0], np.cumsum(0.5 * (np.sin(yaw[1:]) + np.sin(yaw[:-1])) * step)])
    return ReferencePath(x, y, yaw, speed, name=f"random_{split}_{index}")


# Corners of the random tracks: turns of up to 90 degrees, either sharp (a polyline's corner, which no car follows
# exactly) or arcs of a radius the car can drive with steering to spare; a sharp corner is driven at most as fast as
# the car's tightest circle allows at the lateral-acceleration bound, over CORNER_ZONE metres on each side.
TURN_DEG = (20.0, 89.0)
ARC_RADIUS = (1.4, 5.0)
SHARP_FRACTION = 0.3
HAIRPIN_FRACTION = 0.2
CORNER_ZONE = 1.0


def random_track(
    index: int,
    split: str = "train",
    length: float = 30.0,
    speed_range: tuple[float, float] = SPEED_RANGE,
    max_lateral_accel: float = MAX_LATERAL_ACCEL,
    max_accel: float = MAX_ACCEL,
    ds: float = DEFAULT_DS,
) -> ReferencePath:
    """
    A random track of straights and corners, as people draw them: a reference the car can follow up to its corners.

    Straights of 1.8-5 m joined by turns of 20-89 degrees, left or right; a turn is sharp (a polyline's corner) with
    probability ``SHARP_FRACTION``, otherwise an arc of radius 1.4-5 m (the car turns down to 1.1 m). With probability
    ``HAIRPIN_FRACTION`` a turn of 89 degrees is followed, 1.8-2.5 m later, by a second one the same way (a hairpin:
    178 degrees within 2-13 m; the straights between turns keep any 1.73 m, a quarter of the car's turning circle, to
    90 degrees at most, which the CSV reader checks).
    The speed is drawn as in ``random_reference`` (random knots in ``speed_range``, rate-limited to ``max_accel``) and
    capped where ``v^2 / R`` would exceed ``max_lateral_accel``; within ``CORNER_ZONE`` of a sharp corner, R is the car's
    tightest turning radius.

    Parameters
    ----------
    index : int
        Which track of the split (non-negative).
    split : {"train", "held_out"}
        The seed stream; disjoint from ``random_reference``'s for the same (split, index).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}, expected one of {sorted(SPLITS)}.")
    if index < 0:
        raise ValueError(f"The track index must be non-negative, got {index}.")
    rng = np.random.default_rng(np.random.SeedSequence([SPLITS[split], int(index), 1]))
    # Pieces of (arc length, curvature) with sharp corners as zero-length pieces of a given turn.
    pieces: list[tuple[float, float, float]] = []  # (length, curvature, sharp turn in rad)
    total, hairpin_sign = 0.0, 0.0
    while total < length:
        # At least a quarter of the car's turning circle between turns: no more than 90 degrees within it.
        straight_length = rng.uniform(1.8, 2.5) if hairpin_sign else rng.uniform(1.8, 5.0)
        pieces.append((straight_length, 0.0, 0.0))
        total += straight_length
        sign = hairpin_sign or rng.choice((-1.0, 1.0))
        turn = sign * math.radians(TURN_DEG[1] if hairpin_sign else rng.uniform(*TURN_DEG))
        hairpin_sign = sign if not hairpin_sign and rng.uniform() < HAIRPIN_FRACTION else 0.0
        if hairpin_sign:
            turn = sign * math.radians(TURN_DEG[1])
        if rng.uniform() < SHARP_FRACTION:
            pieces.append((0.0, 0.0, turn))
        else:
            radius = rng.uniform(*ARC_RADIUS)
            pieces.append((abs(turn) * radius, sign / radius, 0.0))
            total += abs(turn) * radius
    # Sample the pieces every ds (a sharp corner is a sample of its own, with the mean of the two headings).
    xs, ys, yaws, radii, sharp_s = [0.0], [0.0], [0.0], [math.inf], []
    arc, heading = 0.0, 0.0
    for piece_length, kappa, sharp in pieces:
        if sharp:
            yaws[-1] = heading + 0.5 * sharp
            heading += sharp
            sharp_s.append(arc)
            continue
        n = max(int(round(piece_length / ds)), 1)
        step = piece_length / n
        for _ in range(n):
            if kappa:
                new_heading = heading + kappa * step
                chord = 2.0 * math.sin(0.5 * kappa * step) / kappa
                mid = 0.5 * (heading + new_heading)
            else:
                new_heading, chord, mid = heading, step, heading
            xs.append(xs[-1] + chord * math.cos(mid))
            ys.append(ys[-1] + chord * math.sin(mid))
            heading = new_heading
            yaws.append(heading)
            radii.append(1.0 / abs(kappa) if kappa else math.inf)
            arc += step
        if arc >= length:
            break
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(xs), np.diff(ys)))])
    radius = np.asarray(radii)
    for corner in sharp_s:
        radius = np.where(np.abs(s - corner) <= CORNER_ZONE, np.minimum(radius, MIN_TURN_RADIUS), radius)
    speed = _speed_profile(s, rng, speed_range, np.sqrt(max_lateral_accel * radius), max_accel)
    return ReferencePath(xs, ys, yaws, speed, name=f"track_{split}_{index}")


def _speed_profile(
    s: np.ndarray,
    rng: np.random.Generator,
    speed_range: tuple[float, float],
    v_cap: np.ndarray,
    max_accel: float,
) -> np.ndarray:
    """Random knots 4-10 m apart in ``speed_range`` (cosine-interpolated), capped by ``v_cap`` and rate-limited to
    ``max_accel`` both ways (forward and backward passes on v^2), every speed kept in ``speed_range``."""
    v_target = _knot_profile(s, rng, (4.0, 10.0), lambda m: rng.uniform(*speed_range, m))
    v2 = np.clip(np.minimum(v_target, v_cap), *speed_range) ** 2
    step = np.diff(s)
    for i in range(1, len(s)):  # accelerating: v_i^2 <= v_{i-1}^2 + 2 a ds
        v2[i] = min(v2[i], v2[i - 1] + 2.0 * max_accel * step[i - 1])
    for i in range(len(s) - 2, -1, -1):  # braking ahead of a slower stretch
        v2[i] = min(v2[i], v2[i + 1] + 2.0 * max_accel * step[i])
    return np.clip(np.sqrt(v2), *speed_range)


def _knot_profile(s: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float], values) -> np.ndarray:
    """A profile over the arc lengths ``s``: knots ``spacing`` apart (uniform), from 0 to past the end, with the values
    ``values(number of knots)``, cosine-interpolated."""
    knots = [0.0]
    while knots[-1] < s[-1]:
        knots.append(knots[-1] + rng.uniform(*spacing))
    return _cosine_interp(s, np.asarray(knots), values(len(knots)))


def _cosine_interp(s: np.ndarray, knots_s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interpolate ``values`` at ``knots_s`` with half-cosine blends: continuous with a continuous slope (zero at the
    knots), so the curvature has no jumps the steering servo could not follow."""
    i = np.clip(np.searchsorted(knots_s, s, side="right") - 1, 0, len(knots_s) - 2)
    u = np.clip((s - knots_s[i]) / (knots_s[i + 1] - knots_s[i]), 0.0, 1.0)
    w = 0.5 * (1.0 - np.cos(np.pi * u))
    return values[i] * (1.0 - w) + values[i + 1] * w


TRACKS_DIR = Path(__file__).parent / "tracks"


def hand_made_tracks() -> list[ReferencePath]:
    """The hand-made tracks shipped with the package (``tracks/*.csv``, in name order), never trained on:
    ``city_blocks`` (sharp right-angle corners, 1.0-1.6 m/s), ``hairpins`` (two 180-degree turns on a 1.5 m radius
    between 3 m/s straights) and ``user_track`` (corners of 1.3-1.6 m radius, close to the car's 1.1 m limit, at
    1.2-1.8 m/s). ``benchmarks/make_tracks.py`` writes them."""
    return [load_reference_csv(path) for path in sorted(TRACKS_DIR.glob("*.csv"))]


def random_references(count: int, split: str = "train", first: int = 0, **kwargs) -> list[ReferencePath]:
    """``count`` random references of ``split``, indices ``first`` to ``first + count - 1`` (see ``random_reference``)."""
    return [random_reference(first + i, split, **kwargs) for i in range(count)]


# Paths the controllers are tuned / trained on, and the held-out one they are evaluated on without having seen it.
def training_paths(speed: float = 1.5) -> list[ReferencePath]:
    """The training set: a lane change, a sine and a circle, at ``speed``."""
    return [lane_change(speed=speed), sine(speed=speed), circle(speed=speed)]


def held_out_path(speed: float = 1.5) -> ReferencePath:
    """The held-out path: a figure eight (both turning directions, a crossing, curvature never seen whole)."""
    return figure_eight(speed=speed)


# Torch is imported inside the methods: the CLI reads this module to validate path names while parsing arguments,
# which must stay fast (no torch import).
_ALL_KEYS = (*REFERENCE_KEYS, "s", "curvature")


class TorchReference(Mapping):
    """
    Reference paths as torch tensors of shape (B, N), one row per environment, for batched error computation.

    Rows shorter than the longest path are padded with their last sample (so the arc length stays non-decreasing),
    and ``n`` holds the number of valid samples of each row. Keys: ``pos_x``, ``pos_y``, ``yaw``, ``speed``, ``s``,
    ``curvature``.

    Parameters
    ----------
    paths : sequence of ReferencePath
        The distinct paths.
    path_idx : sequence of int
        For each environment, the index in ``paths`` of the path it follows.
    """

    def __init__(self, paths: Sequence[ReferencePath], path_idx: Sequence[int], device=None, dtype=None):
        import torch

        dtype = torch.float64 if dtype is None else dtype
        self.paths = list(paths)
        self.path_idx = np.asarray(path_idx, dtype=np.int64)
        n_max = max(len(p) for p in self.paths)
        rows = {key: [] for key in _ALL_KEYS}
        for p in self.paths:
            for key in _ALL_KEYS:
                arr = np.asarray(getattr(p, key) if key in ("s", "curvature") else p[key], dtype=np.float64)
                rows[key].append(np.concatenate([arr, np.full(n_max - len(arr), arr[-1])]))
        per_path = {key: torch.tensor(np.stack(v), dtype=dtype, device=device) for key, v in rows.items()}
        idx = torch.as_tensor(self.path_idx, device=device)
        self._data = {key: v[idx] for key, v in per_path.items()}
        self.n = torch.tensor([len(self.paths[i]) for i in self.path_idx], device=device)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def n_envs(self) -> int:
        return len(self.path_idx)

    def at(self, key: str, idx: torch.Tensor) -> torch.Tensor:
        """Values of ``key`` at per-env indices ``idx`` of shape (B,) or (B, K)."""
        import torch

        idx = idx.long()
        squeeze = idx.dim() == 1
        out = torch.gather(self._data[key], 1, idx[:, None] if squeeze else idx)
        return out[:, 0] if squeeze else out

    def interp(self, key: str, s: torch.Tensor) -> torch.Tensor:
        """
        Values of ``key`` at arc lengths ``s`` (B, K), linear between samples (exact for a polyline's coordinates) and
        clamped to the path's ends. Differentiable in ``s``.
        """
        import torch

        arc, values = self._data["s"], self._data[key]
        last = (self.n - 1).to(arc.device)[:, None]
        lo = torch.searchsorted(arc, s.detach().contiguous(), right=True) - 1
        lo = torch.minimum(torch.clamp(lo, min=0), torch.clamp(last - 1, min=0))
        hi = torch.minimum(lo + 1, last)
        s0, s1 = torch.gather(arc, 1, lo), torch.gather(arc, 1, hi)
        u = torch.clamp((s - s0) / torch.clamp(s1 - s0, min=1e-12), 0.0, 1.0)
        v0, v1 = torch.gather(values, 1, lo), torch.gather(values, 1, hi)
        return v0 + u * (v1 - v0)

    def project(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        The point of the path nearest to (x, y) (B,) on the two segments around sample ``idx`` (B,): its arc length,
        the signed lateral offset of (x, y) from it (> 0 left of the path) and the path's heading there (the sample
        yaws interpolated). Continuous in (x, y) and differentiable, unlike the nearest sample: the offset does not
        jump by a sample's spacing, and on the outside of a polyline's corner it is the distance to the corner.
        """
        import torch

        last = (self.n - 1).to(idx.device)
        ends = (torch.clamp(idx - 1, min=0), idx, torch.minimum(idx + 1, last))
        best = None
        for a, b in zip(ends[:-1], ends[1:], strict=True):
            ax, ay, bx, by = (self.at(k, i) for k, i in (("pos_x", a), ("pos_y", a), ("pos_x", b), ("pos_y", b)))
            tx, ty = bx - ax, by - ay
            length = torch.hypot(tx, ty)
            safe = torch.clamp(length, min=1e-12)
            along = ((x - ax) * tx + (y - ay) * ty) / safe
            u = torch.clamp(along / safe, 0.0, 1.0)
            px, py = ax + u * tx, ay + u * ty
            dist2 = torch.where(length > 1e-12, (x - px) ** 2 + (y - py) ** 2, torch.full_like(x, torch.inf))
            line = (tx * (y - ay) - ty * (x - ax)) / safe
            # Beyond the segment's ends the nearest point is the end itself (the outside of a corner).
            clamped = (along < 0.0) | (along > length)
            lateral = torch.where(clamped, torch.sign(line) * torch.sqrt(dist2.clamp(min=1e-24)), line)
            yaw_a, yaw_b = self.at("yaw", a), self.at("yaw", b)
            heading = yaw_a + u * torch.remainder(yaw_b - yaw_a + math.pi, 2.0 * math.pi) - u * math.pi
            candidate = (dist2, self.at("s", a) + u * length, lateral, heading)
            if best is None:
                best = candidate
            else:
                nearer = candidate[0] < best[0]
                best = tuple(torch.where(nearer, c, b_) for c, b_ in zip(candidate, best, strict=True))
        return best[1], best[2], best[3]
