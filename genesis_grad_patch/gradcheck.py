"""
Rollout gradcheck: compare the autograd gradient of a simulated loss with central finite differences.

Like `torch.autograd.gradcheck`, but for a loss that runs a Genesis rollout: every evaluation is a full rollout (the
scene is reset before each one), so only `n_probe` sampled input coordinates are probed, in float64.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ._impl import breaks


@dataclass
class ProbeResult:
    """One probed input coordinate."""

    input_index: int
    flat_index: int
    autograd: float
    finite_difference: float
    abs_error: float
    rel_error: float
    passed: bool


@dataclass
class GradcheckResult:
    """What `gradcheck` found. `passed` is True when every probe is within `atol + rtol * |finite difference|`."""

    passed: bool
    worst_rel_error: float
    probes: list[ProbeResult]
    loss: float
    eps: float
    rtol: float
    atol: float
    notes: list[str] = field(default_factory=list)

    @property
    def worst(self) -> ProbeResult | None:
        """The probe with the largest relative error."""
        return max(self.probes, key=lambda p: p.rel_error, default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [
            f"Rollout gradcheck: {'PASSED' if self.passed else 'FAILED'}  (loss {self.loss:.6g}, eps {self.eps:g}, "
            f"rtol {self.rtol:g}, atol {self.atol:g}, worst relative error {self.worst_rel_error:.3e})",
            f"  {'input':>5}  {'index':>6}  {'autograd':>14}  {'finite diff.':>14}  {'rel. error':>10}  ok",
        ]
        for p in self.probes:
            lines.append(
                f"  {p.input_index:>5}  {p.flat_index:>6}  {p.autograd:>14.6e}  {p.finite_difference:>14.6e}  "
                f"{p.rel_error:>10.3e}  {'yes' if p.passed else 'NO'}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _as_inputs(inputs) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    elif isinstance(inputs, torch.nn.Module):
        inputs = list(inputs.parameters())
    inputs = list(inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("gradcheck expects a tensor, a sequence of tensors, or a torch.nn.Module as inputs.")
    return inputs


def central_differences(
    evaluate: Callable[[], float], x: torch.Tensor, coords: Sequence[int], eps: float
) -> list[float]:
    """
    Central finite differences of `evaluate()` along flat coordinates of `x`, perturbed in place and restored.

    The one finite-difference implementation of the project: `gradcheck` and the test suite use it.
    """
    view = x.view(-1)
    grads = []
    # Finite differences need the value only: no graph, and no strict-mode report on reads made without one.
    with torch.no_grad(), breaks.set_mode("off"):
        for j in coords:
            value = view[j].item()
            view[j] = value + eps
            plus = float(evaluate())
            view[j] = value - eps
            minus = float(evaluate())
            view[j] = value
            grads.append((plus - minus) / (2 * eps))
    return grads


def gradcheck(
    rollout: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor] | torch.nn.Module,
    eps: float = 1e-6,
    n_probe: int = 8,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-8,
    scene=None,
) -> GradcheckResult:
    """
    Check the gradient of a rollout's loss against central finite differences on sampled input coordinates.

    Parameters
    ----------
    rollout : callable
        `rollout(*inputs)` runs the simulation and returns a scalar loss. It must reset the scene itself, unless
        `scene` is given.
    inputs : Tensor | sequence of Tensor | torch.nn.Module
        The inputs to differentiate with respect to (a module stands for its parameters, and `rollout` is then called
        with the parameters as arguments: it may ignore them and use the module). Leaf tensors are used in place and
        restored afterwards; other tensors are replaced by leaf copies. Use float64.
    eps : float
        The finite-difference step.
    n_probe : int
        The number of coordinates probed, sampled uniformly without replacement over all inputs (all of them if there
        are fewer).
    seed : int
        Seed of the sampling of the coordinates.
    rtol, atol : float
        A probe passes when `|autograd - fd| <= atol + rtol * |fd|`.
    scene : gs.Scene, optional
        A scene to reset before every evaluation of `rollout`.

    Returns
    -------
    result : GradcheckResult
        Per-probe autograd and finite-difference values with their errors, the worst relative error, and `passed`.
    """
    tensors = _as_inputs(inputs)
    notes = []
    if any(x.dtype != torch.float64 for x in tensors):
        warnings.warn(
            "gradcheck inputs are not float64: finite differences will be dominated by rounding. Use float64 inputs "
            "and `gs.init(precision='64')`.",
            RuntimeWarning,
            stacklevel=2,
        )
    leaves, restore_flags = [], []
    for x in tensors:
        if x.is_leaf:
            restore_flags.append((x, x.requires_grad))
            x.requires_grad_(True)
            leaves.append(x)
        else:
            leaves.append(x.detach().clone().requires_grad_(True))

    def evaluate() -> torch.Tensor:
        if scene is not None:
            scene.reset()
        loss = rollout(*leaves)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"rollout must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}."
            )
        return loss.reshape(())

    try:
        loss = evaluate()
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        else:
            grads = (None,) * len(leaves)
            notes.append("the loss does not require grad: autograd gives zero (run genesis_grad_patch.doctor on it)")
        grads = [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(leaves, grads, strict=True)]
        loss_value = loss.item()

        sizes = [x.numel() for x in leaves]
        total = sum(sizes)
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=generator)[: min(n_probe, total)].sort().values.tolist()
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)

        probes = []
        for index in flat:
            i = next(k for k in range(len(leaves)) if offsets[k] <= index < offsets[k + 1])
            j = index - offsets[i]
            (fd,) = central_differences(lambda: evaluate().item(), leaves[i], (j,), eps)
            ag = grads[i].reshape(-1)[j].item()
            abs_err = abs(ag - fd)
            rel_err = abs_err / max(abs(fd), abs(ag), atol) if math.isfinite(abs_err) else math.inf
            probes.append(ProbeResult(i, j, ag, fd, abs_err, rel_err, abs_err <= atol + rtol * abs(fd)))
    finally:
        for x, flag in restore_flags:
            x.requires_grad_(flag)
        if scene is not None:
            scene.reset()

    worst = max((p.rel_error for p in probes), default=0.0)
    return GradcheckResult(all(p.passed for p in probes), worst, probes, loss_value, eps, rtol, atol, notes)
