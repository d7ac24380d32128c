"""
Writes the hand-made tracks (``genesis_grad/steering/tracks/*.csv``, read by ``paths.hand_made_tracks()``) that
``benchmarks/steering.py`` and ``genesis-grad demo`` evaluate on, as a user draws them: straights and corners given by
hand, in metres, with a speed profile. No training run ever reads them.

- ``user_track.csv``: corners close to the car's steering limit (radii 1.3-1.6 m; the car turns down to 1.1 m) and a
  speed varying between 1.2 and 1.8 m/s, about 30 m;
- ``city_blocks.csv``: a polyline with sharp right-angle corners (no car follows them exactly), 1.0-1.6 m/s;
- ``hairpins.csv``: two hairpins (180 degrees on a 1.5 m radius) between fast straights, 1.2-3 m/s.

Run ``python benchmarks/make_tracks.py`` to write them again (they are committed).
"""

import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent.parent / "genesis_grad" / "steering" / "tracks"
DS = 0.05


def _draw(pieces, speed_of_s) -> dict:
    """Sample pieces ("straight", length) / ("arc", radius, degrees, +1 left / -1 right) / ("corner", degrees) every
    DS metres; the speed is a function of the arc length."""
    x, y, yaw, heading, s = [0.0], [0.0], [0.0], 0.0, [0.0]
    for piece in pieces:
        if piece[0] == "corner":
            turn = math.radians(piece[1])
            yaw[-1] = heading + 0.5 * turn
            heading += turn
            continue
        if piece[0] == "straight":
            length, kappa = piece[1], 0.0
        else:
            _, radius, degrees, side = piece
            length, kappa = radius * math.radians(degrees), side / radius
        n = max(round(length / DS), 1)
        for _ in range(n):
            step = length / n
            mid = heading + 0.5 * kappa * step
            chord = step if kappa == 0.0 else 2.0 * math.sin(0.5 * kappa * step) / kappa
            x.append(x[-1] + chord * math.cos(mid))
            y.append(y[-1] + chord * math.sin(mid))
            heading += kappa * step
            yaw.append(heading)
            s.append(s[-1] + step)
    s = np.asarray(s)
    return {"pos_x": np.asarray(x), "pos_y": np.asarray(y), "yaw": np.asarray(yaw), "speed": speed_of_s(s)}


TRACKS = {
    "user_track": (
        [
            ("straight", 4.0),
            ("arc", 1.4, 90, 1),
            ("straight", 2.5),
            ("arc", 1.3, 90, -1),
            ("straight", 3.0),
            ("arc", 1.6, 120, -1),
            ("straight", 2.0),
            ("arc", 1.4, 75, 1),
            ("straight", 3.5),
            ("arc", 1.3, 90, 1),
            ("straight", 3.0),
        ],
        lambda s: 1.5 + 0.3 * np.sin(2.0 * np.pi * s / 9.0),
    ),
    "city_blocks": (
        [
            ("straight", 4.0),
            ("corner", 90),
            ("straight", 3.0),
            ("corner", -90),
            ("straight", 4.0),
            ("corner", -90),
            ("straight", 2.5),
            ("corner", 90),
            ("straight", 3.5),
            ("corner", 45),
            ("straight", 3.0),
        ],
        lambda s: 1.3 + 0.3 * np.cos(2.0 * np.pi * s / 7.0),
    ),
    "hairpins": (
        [
            ("straight", 6.0),
            ("arc", 1.5, 180, 1),
            ("straight", 5.0),
            ("arc", 1.5, 180, -1),
            ("straight", 6.0),
        ],
        None,
    ),
}


def _hairpin_speed(s: np.ndarray) -> np.ndarray:
    """3 m/s on the straights, 1.2 m/s through the hairpins, braking and accelerating at 1.5 m/s^2."""
    arcs = [(6.0, 6.0 + 1.5 * math.pi), (11.0 + 1.5 * math.pi, 11.0 + 3.0 * math.pi)]
    v2 = np.full_like(s, 3.0**2)
    for start, end in arcs:
        inside = np.clip(np.maximum(start - s, s - end), 0.0, None)  # distance to the arc, 0 on it
        v2 = np.minimum(v2, 1.2**2 + 2.0 * 1.5 * inside)
    return np.sqrt(v2)


def main() -> None:
    for name, (pieces, speed) in TRACKS.items():
        columns = _draw(pieces, speed or _hairpin_speed)
        rows = np.stack([columns[k] for k in ("pos_x", "pos_y", "yaw", "speed")], axis=1)
        np.savetxt(HERE / f"{name}.csv", rows, delimiter=",", header="pos_x,pos_y,yaw,speed", comments="", fmt="%.6f")


if __name__ == "__main__":
    main()
