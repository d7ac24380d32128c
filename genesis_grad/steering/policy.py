"""
The steering policy: an MLP from the car's state and the reference ahead of it, seen from the car, to a steering
command in [-limit, limit].

Inputs, each scaled to O(1) by fixed constants (no learned normalization, so a checkpoint is self-contained):

- ``e_speed``, ``speed``: the lateral dynamics depend on the speed (the same curve needs less steering when driving
  slower, the tyres slip more when driving faster);
- ``steer``: the current wheel angle, which lags the command by the servo's ~0.1 s time constant;
- the reference points at ``preview_distances`` of arc length ahead of the nearest point of the path (0 m: that point
  itself, which gives the lateral error), in the car's frame: what a driver sees through the windscreen, and what pure
  pursuit steers by (one point) and Stanley (the nearest point and the heading);
- the reference speed at the same distances: the speed profiles vary along the path (0.5-5 m/s).

Every input is continuous in the car's pose, also where the path has a sharp corner: an earlier layout fed the
reference curvature ahead, which is a spike at a polyline's corner (16 1/m at a right angle sampled every 5 cm), and
the error state against the nearest sample, whose heading jumps there; the policy's command jumped with them.

The layout of these inputs is versioned (``OBS_VERSION``, stored in checkpoints): a checkpoint trained on another
layout is refused by ``load_policy`` rather than fed inputs it was not trained on.
"""

from __future__ import annotations

import errno
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .sim import STEER_LIMIT, Observation

DEFAULT_PREVIEW = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)

# Fixed input scales: values of these sizes map to O(1) features. A reference point d metres ahead is scaled by
# max(d, _POINT_SCALE): its offset across the car's heading relative to its distance is the bearing a driver steers by.
_SPEED_SCALE, _POINT_SCALE = 2.0, 0.25

# Version of the input layout of ``observation_features``, stored in checkpoint configs. 1 (no version stored) and 2:
# error state, speed, wheel angle, the reference curvature (and from 2 the speed) ahead; 3: speed error, speed, wheel
# angle, the reference points ahead in the car's frame and the reference speed ahead (3 + 3K features).
OBS_VERSION = 3


def observation_features(obs: Observation, steer_limit: float = STEER_LIMIT) -> torch.Tensor:
    """
    (B, 3 + 3K) scaled features of an observation: the input of the MLP, and the observation of the PPO baseline.

    Parameters
    ----------
    obs : Observation
        The observation, with its K preview points and speeds (the sim computes them at the distances the caller
        asked for).
    steer_limit : float
        Wheel-angle bound (rad) the angle is scaled by.

    Returns
    -------
    torch.Tensor
        Columns ``e_speed``, ``speed``, ``steer``, then the K reference points ahead (x then y, in the car's frame,
        each over max(distance, 0.25 m)), then the K reference speeds ahead (layout ``OBS_VERSION``).
    """
    base = torch.stack([obs.e_speed / _SPEED_SCALE, obs.speed / _SPEED_SCALE, obs.steer / steer_limit], dim=1)
    scale = torch.clamp(torch.as_tensor(obs.preview_distances, dtype=base.dtype), min=_POINT_SCALE).to(base.device)
    points = obs.preview_xy.to(base) / scale[None, :, None]
    return torch.cat([base, points[..., 0], points[..., 1], (obs.preview_speed / _SPEED_SCALE).to(base)], dim=1)


class SteeringMLP(nn.Module):
    """
    MLP steering controller, ``steer = limit * tanh(net(features))``.

    Parameters
    ----------
    preview_distances : sequence of float
        Distances (m) of arc length ahead of the nearest point of the path at which the reference point (in the car's
        frame) and speed are fed to the network.
    hidden : sequence of int
        Hidden layer widths (tanh activations).
    steer_limit : float
        Output bound (rad).
    """

    def __init__(
        self,
        preview_distances: Sequence[float] = DEFAULT_PREVIEW,
        hidden: Sequence[int] = (64, 64),
        steer_limit: float = STEER_LIMIT,
    ):
        super().__init__()
        self.preview_distances = tuple(float(d) for d in preview_distances)
        self.hidden = tuple(int(h) for h in hidden)
        self.steer_limit = float(steer_limit)
        sizes = (self.n_features, *self.hidden, 1)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers).double()
        # Start from (almost) "steer straight": a small last layer keeps the first rollouts tame and the tanh unsaturated.
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()

    @property
    def n_features(self) -> int:
        return 3 + 3 * len(self.preview_distances)

    def config(self) -> dict:
        """Constructor arguments and the input layout's ``obs_version`` (``OBS_VERSION``), stored in checkpoints."""
        return {
            "preview_distances": self.preview_distances,
            "hidden": self.hidden,
            "steer_limit": self.steer_limit,
            "obs_version": OBS_VERSION,
        }

    def features(self, obs: Observation) -> torch.Tensor:
        """(B, F) scaled input features of an observation (``observation_features``)."""
        return observation_features(obs, self.steer_limit)

    def forward(self, obs: Observation) -> torch.Tensor:
        """Steering command (B,) in [-limit, limit]."""
        return self.steer_limit * torch.tanh(self.net(self.features(obs))[:, 0])

    # -------------------------------------------------- population forward (zeroth-order training)

    def flat_parameters(self) -> torch.Tensor:
        """All parameters as one detached vector."""
        return torch.nn.utils.parameters_to_vector(self.parameters()).detach().clone()

    def load_flat_parameters(self, flat: torch.Tensor) -> None:
        torch.nn.utils.vector_to_parameters(flat.detach().to(next(self.parameters())), self.parameters())

    def forward_population(self, obs: Observation, flat_params: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """
        Steering of a population of parameter vectors at once: environment ``b`` uses ``flat_params[group[b]]``.

        Used by the evolution-strategies baseline to evaluate many perturbed networks in one batched rollout.
        """
        x = self.features(obs)
        params = flat_params[group]  # (B, D)
        offset = 0
        h = x[:, :, None]  # (B, F, 1)
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            n_out, n_in = lin.weight.shape
            w = params[:, offset : offset + n_out * n_in].reshape(-1, n_out, n_in)
            offset += n_out * n_in
            b = params[:, offset : offset + n_out, None]
            offset += n_out
            h = torch.baddbmm(b, w, h)
            if i < len(linears) - 1:
                h = torch.tanh(h)
        return self.steer_limit * torch.tanh(h[:, 0, 0])


def save_policy(policy: SteeringMLP, path, **extra) -> None:
    """
    Save a policy checkpoint: state dict, constructor config and any extra metadata.

    ``load_policy`` reads checkpoints with torch's weights-only unpickler, so ``extra`` must hold plain data only
    (numbers, strings, lists, tuples, dicts, tensors), as the trainer's ``iteration`` and ``history`` do.
    """
    config = policy.config()
    # Lists rather than tuples: plain containers every safe loader (and JSON) reads alike.
    config = {**config, "preview_distances": list(config["preview_distances"]), "hidden": list(config["hidden"])}
    torch.save({"config": config, "state_dict": policy.state_dict(), **extra}, path)


# The constructor arguments a checkpoint's config may hold, with the check each must pass.
_CONFIG_CHECKS = {
    "preview_distances": lambda v: (
        isinstance(v, list | tuple) and all(isinstance(d, int | float) and math.isfinite(d) and d >= 0.0 for d in v)
    ),
    "hidden": lambda v: (
        isinstance(v, list | tuple) and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in v)
    ),
    # A wheel angle, in radians: beyond 90 degrees a steering limit means nothing.
    "steer_limit": lambda v: isinstance(v, int | float) and 0.0 < v <= 0.5 * math.pi,
}


def load_policy(path) -> tuple[SteeringMLP, dict]:
    """
    Load a checkpoint written by ``save_policy`` (or by the trainer).

    The file is read with ``torch.load(weights_only=True)``: a checkpoint is data, and one that embeds anything else
    (a pickled callable, a class instance) is refused without running it.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.

    Returns
    -------
    policy : SteeringMLP
        The policy, in evaluation mode.
    record : dict
        The whole checkpoint record (``config``, ``state_dict`` and the extra metadata, e.g. ``iteration``).

    Raises
    ------
    CheckpointError
        A ``ValueError`` with a one-line message: the file cannot be read, is empty, truncated or not a PyTorch
        checkpoint, holds objects other than weights and plain data, is not a steering-policy checkpoint, was trained on
        another observation layout (``OBS_VERSION``; checkpoints without one are of version 1), its
        weights do not match the model its config describes, or a weight is NaN or infinite.
    """
    path = Path(path)
    record = _load_record(path)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or "state_dict" not in record:
        found = sorted(map(str, record))[:6] if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(
            f"{path}: not a steering-policy checkpoint: expected a record with 'config' and 'state_dict' "
            f"(as written by genesis-grad train / save_policy), found {found}."
        )
    config, state_dict = dict(record["config"]), record["state_dict"]
    obs_version = config.pop("obs_version", 1)
    if type(obs_version) is not int or obs_version != OBS_VERSION:
        raise CheckpointError(
            f"{path}: the checkpoint was trained on observation version {repr(obs_version)[:40]}, this genesis-grad "
            f"reads version {OBS_VERSION} only (the reference points ahead in the car's frame); retrain with this "
            "version."
        )
    unknown = sorted(set(config) - set(_CONFIG_CHECKS))
    invalid = {key: config[key] for key, ok in _CONFIG_CHECKS.items() if key in config and not ok(config[key])}
    if unknown or invalid:
        raise CheckpointError(f"{path}: invalid policy config: unknown key(s) {unknown}, invalid value(s) {invalid}.")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(t) for t in state_dict.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of parameter names to tensors.")
    # Shapes first, on the meta device: a config describing a huge network allocates nothing before it is refused.
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in SteeringMLP(**config).state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    if found != expected:
        # A one-line summary instead of load_state_dict's multi-line report.
        diffs = [
            f"{name}: checkpoint {list(found[name]) if name in found else 'missing'}, model "
            f"{list(expected[name]) if name in expected else 'none'}"
            for name in sorted(set(found) | set(expected))
            if found.get(name) != expected.get(name)
        ]
        more = "; ..." if len(diffs) > 3 else ""
        raise CheckpointError(
            f"{path}: the weights do not fit the model its config describes ({config}): {'; '.join(diffs[:3])}{more}."
        )
    for name, tensor in state_dict.items():
        if not torch.isfinite(tensor).all():
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weight '{name}' holds {n_bad} NaN or infinite value(s) of {tensor.numel()}: the run that "
                "wrote it diverged; use an earlier checkpoint."
            )
    policy = SteeringMLP(**config)
    policy.load_state_dict(state_dict)
    policy.eval()
    return policy, record


def _load_record(path: Path):
    """``torch.load(weights_only=True)`` with each failure turned into a one-line ``CheckpointError``."""
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise CheckpointError(f"{path}: cannot read the policy checkpoint: {reason}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a policy checkpoint.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        refused = re.search(r"GLOBAL (\S+)", message)
        if refused is None:
            # Any other complaint of the weights-only unpickler ("Unsupported operand 4") is a corrupted stream.
            detail = next((line for line in message.splitlines() if line.startswith("Unsupported")), "")
            raise CheckpointError(
                f"{path}: corrupted file, not a readable PyTorch checkpoint ({detail or _first_line(exc)})."
            ) from None
        # The weights-only unpickler stopped at an import (a function or class to call or build), before running it.
        raise CheckpointError(
            f"{path}: refused: the checkpoint embeds the Python object {refused.group(1)}, which only an "
            "arbitrary-code unpickler could load; genesis-grad reads checkpoints as weights and plain data only "
            "(as written by genesis-grad train / save_policy)."
        ) from None
    except OSError as exc:
        # The file opened (it is checked above): an error while reading its archive is a cut-off or damaged file, which
        # torch reports as a bare "Invalid argument".
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR):
            raise CheckpointError(f"{path}: cannot read the policy checkpoint: {exc.strerror or exc}.") from None
        raise CheckpointError(
            f"{path}: truncated or corrupted file, not a readable PyTorch checkpoint ({exc.strerror or exc})."
        ) from None
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, TypeError) as exc:
        # What torch.load raises on a truncated zip archive (RuntimeError), a cut-off pickle (EOFError), or a text
        # or otherwise foreign file read as a legacy checkpoint (KeyError, ValueError, ...).
        raise CheckpointError(
            f"{path}: truncated or corrupted file, not a readable PyTorch checkpoint ({_first_line(exc)})."
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else ""
    detail = detail.split(". ")[0][:160]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
