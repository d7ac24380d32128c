"""
Tracking errors of the car with respect to its reference, as differentiable torch expressions.

The nearest reference point is an index, found without gradient (an argmin has none). The errors are then smooth
functions of the pose read from the simulator, so their gradient flows back through the physics:

    e_lat   = dy cos(ref_yaw) - dx sin(ref_yaw)     (> 0 when the car is left of the path)
    e_head  = wrap(heading - ref_yaw) in [-pi, pi)
    e_speed = speed - ref_speed

exactly as ``compute_error_state_torch`` of the users' script. Everything is batched over environments, each of which
may follow its own path (``TorchReference`` stacks several paths, padded to a common length).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .paths import TorchReference

__all__ = ["TorchReference", "compute_error_state_torch", "nearest_reference_index", "wrap_angle_torch"]


def wrap_angle_torch(angle: torch.Tensor) -> torch.Tensor:
    """Wrap to [-pi, pi) with a gradient of 1 everywhere (the wrap is piecewise a constant shift)."""
    return torch.remainder(angle + math.pi, 2.0 * math.pi) - math.pi


def _as_tensor(values) -> torch.Tensor:
    # torch.tensor copies: the arrays of a ReferencePath are read-only, which torch.as_tensor warns about.
    return values if torch.is_tensor(values) else torch.tensor(np.asarray(values))


def _ref_values(reference, key: str, ref_idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reference values at ``ref_idx`` as constants (no gradient), for a mapping of (N,) or (B, N) arrays."""
    if isinstance(reference, TorchReference):
        return reference.at(key, ref_idx).to(like)
    values = _as_tensor(reference[key]).to(like)
    if values.dim() == 2:
        return torch.gather(values, 1, ref_idx.long().reshape(-1, 1)).reshape(ref_idx.shape)
    return values[ref_idx.long()]


@torch.no_grad()
def nearest_reference_index(
    pos_x: torch.Tensor,
    pos_y: torch.Tensor,
    reference,
    prev_idx: torch.Tensor | None = None,
    window: tuple[int, int] = (20, 80),
) -> torch.Tensor:
    """
    Index of the nearest reference point for each environment (no gradient).

    Parameters
    ----------
    pos_x, pos_y : torch.Tensor
        Positions, shape (B,).
    reference : Mapping
        ``TorchReference`` or a mapping whose ``pos_x``/``pos_y`` are (N,) arrays shared by all environments.
    prev_idx : torch.Tensor, optional
        The previous index of each environment. If given, only indices in ``[prev - window[0], prev + window[1]]`` are
        searched: this tracks progress along paths that cross themselves (figure eight), where the global nearest
        point can jump to the other branch. ``window[1]`` must cover the distance driven between two calls.
    window : tuple of int
        Samples searched behind and ahead of ``prev_idx``.
    """
    like = pos_x.detach()
    px, py = like[:, None], pos_y.detach().to(like)[:, None]
    ref_x, ref_y = _as_tensor(reference["pos_x"]).to(like), _as_tensor(reference["pos_y"]).to(like)
    if ref_x.dim() == 1:
        ref_x, ref_y = ref_x[None].expand(len(like), -1), ref_y[None].expand(len(like), -1)
    n_valid = reference.n.to(like.device) if isinstance(reference, TorchReference) else None
    if prev_idx is None:
        d2 = (px - ref_x) ** 2 + (py - ref_y) ** 2
        if n_valid is not None:
            arange = torch.arange(ref_x.shape[1], device=like.device)[None, :]
            d2 = d2.masked_fill(arange >= n_valid[:, None], float("inf"))
        return torch.argmin(d2, dim=1)
    # Windowed search: gather only the candidates, clamped into the valid range (duplicates at the ends are harmless).
    last = (n_valid if n_valid is not None else torch.full_like(prev_idx, ref_x.shape[1])) - 1
    offsets = torch.arange(-window[0], window[1] + 1, device=like.device)[None, :]
    cand = torch.minimum(torch.clamp(prev_idx.to(like.device)[:, None] + offsets, min=0), last[:, None])
    d2 = (px - torch.gather(ref_x, 1, cand)) ** 2 + (py - torch.gather(ref_y, 1, cand)) ** 2
    return torch.gather(cand, 1, torch.argmin(d2, dim=1, keepdim=True))[:, 0]


def compute_error_state_torch(
    g_pos_x: torch.Tensor,
    g_pos_y: torch.Tensor,
    g_heading: torch.Tensor,
    g_speed: torch.Tensor,
    reference,
    ref_idx: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Lateral, heading and speed errors against the reference point ``ref_idx``, as in the users' script.

    Parameters
    ----------
    g_pos_x, g_pos_y, g_heading, g_speed : torch.Tensor
        Pose and forward speed of the car, shape (B,) (or scalars), as read from the simulator: gradients flow
        through them.
    reference : Mapping
        ``ReferencePath`` / dict of (N,) arrays, or ``TorchReference`` of (B, N) tensors. Its values are constants.
    ref_idx : torch.Tensor or int, optional
        Index of the reference point of each environment. Defaults to the nearest point (found without gradient).

    Returns
    -------
    e_lat, e_head, e_speed : torch.Tensor
        Errors of shape (B,); ``e_head`` is wrapped to [-pi, pi).
    """
    g_pos_x, g_pos_y, g_heading, g_speed = torch.broadcast_tensors(
        *(
            torch.as_tensor(v, dtype=torch.float64) if not torch.is_tensor(v) else v
            for v in (g_pos_x, g_pos_y, g_heading, g_speed)
        )
    )
    scalar = g_pos_x.dim() == 0
    if scalar:
        g_pos_x, g_pos_y, g_heading, g_speed = (v.reshape(1) for v in (g_pos_x, g_pos_y, g_heading, g_speed))
    if ref_idx is None:
        ref_idx = nearest_reference_index(g_pos_x, g_pos_y, reference)
    ref_idx = torch.as_tensor(ref_idx, device=g_pos_x.device).reshape(-1).expand(g_pos_x.shape[0])

    ref_x = _ref_values(reference, "pos_x", ref_idx, g_pos_x)
    ref_y = _ref_values(reference, "pos_y", ref_idx, g_pos_x)
    ref_yaw = _ref_values(reference, "yaw", ref_idx, g_pos_x)
    ref_speed = _ref_values(reference, "speed", ref_idx, g_pos_x)

    dx = g_pos_x - ref_x
    dy = g_pos_y - ref_y
    e_lat = dy * torch.cos(ref_yaw) - dx * torch.sin(ref_yaw)
    e_head = wrap_angle_torch(g_heading - ref_yaw)
    e_speed = g_speed - ref_speed
    if scalar:
        return e_lat[0], e_head[0], e_speed[0]
    return e_lat, e_head, e_speed
