"""
The default training recipe of ``genesis-grad train`` (and of ``benchmarks/steering.py``): one policy for the speed
range 0.5-5 m/s and the tracks people draw, on 2 CPU cores in about 10 minutes.

- References: the built-in lane change, sine and circle at 0.5, 1.5 and 3 m/s, ``RANDOM`` smooth random references
  (``paths.random_reference``) and ``RANDOM`` random tracks with corners (``paths.random_track``: sharp and round
  corners, hairpins), both of the ``train`` split, with speed profiles in 0.5-5 m/s.
- ``ITERATIONS`` windows of 100 steps x ``N_ENVS`` environments (1.28 M simulated env-steps), Adam at ``LR``
  (cosine-decayed to ``TrainConfig.lr_final``), the other ``TrainConfig`` defaults. A batch of 64 costs half as much
  CPU time per env-step as one of 16 (the reverse pass's fixed cost per step is shared by more cars), and its less
  noisy gradient takes the higher learning rate. Against 400 windows of 16 envs at 3e-3 (3 seeds each, the same
  held-out references): better at 0.5, 1.5 and 5 m/s and on the user's track, worse at 3 m/s, with 1.2x less CPU time
  and 1.5x more env-steps to the tuned PPO's level (``docs/steering.md``).

Light on purpose: the CLI reads these constants while parsing its arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .paths import ReferencePath

PATHS = ("lane_change", "sine", "circle")
SPEEDS = (0.5, 1.5, 3.0)
RANDOM = 32
ITERATIONS = 200
N_ENVS = 64
LR = 1e-2


def training_set(
    paths: tuple[str, ...] = PATHS, speeds: tuple[float, ...] = SPEEDS, random: int = RANDOM, tracks: int = RANDOM
) -> list[ReferencePath]:
    """The training references: each built-in path at each speed (named ``name@speed`` when there are several),
    then ``random`` smooth random references and ``tracks`` random tracks of the ``train`` split."""
    from . import paths as P

    references = []
    for name in paths:
        for speed in speeds:
            path = P.make_path(name, speed=speed)
            if len(speeds) > 1:
                path.name = f"{name}@{speed:g}"
            references.append(path)
    return references + P.random_references(random, "train") + [P.random_track(i, "train") for i in range(tracks)]
