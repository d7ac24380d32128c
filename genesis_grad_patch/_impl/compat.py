"""`gs.from_torch` for code written against Genesis 0.x, where it existed and detached by default."""

import genesis as gs
import torch

from . import breaks, input_checks, patching


def from_torch(
    tensor: torch.Tensor,
    dtype: torch.dtype | None = None,
    requires_grad: bool = False,
    detach: bool = False,
    scene=None,
) -> torch.Tensor:
    """
    Convert a torch tensor for use as a Genesis input, keeping its autograd graph (compat shim for Genesis 0.x code).

    Genesis 1.x takes plain torch tensors everywhere and removed `gs.from_torch`; in 0.x it defaulted to
    `detach=True`, which silently cut the gradient of every control input built from a policy. This version keeps
    the graph unless `detach=True` is asked for explicitly.

    Parameters
    ----------
    tensor : torch.Tensor
        The tensor to convert.
    dtype : torch.dtype, optional
        Target dtype. Defaults to `gs.tc_float` for floating-point tensors and to the tensor's dtype otherwise. The cast
        is differentiable.
    requires_grad : bool, optional
        Whether the result must track gradients. A tensor that does not track them yet becomes a new leaf that does.
        False leaves the tracking of the input as it is. Defaults to False.
    detach : bool, optional
        Whether to cut the result from the autograd graph of the input. Defaults to False.
    scene : optional
        Accepted for compatibility with Genesis 0.x and ignored: 1.x tensors carry no scene.

    Returns
    -------
    tensor : torch.Tensor
        The tensor on `gs.device` with the requested dtype.
    """
    if not isinstance(tensor, torch.Tensor):
        gs.raise_exception(f"'gs.from_torch' expects a torch.Tensor, got {type(tensor).__name__}.")
    if dtype is None:
        dtype = gs.tc_float if tensor.is_floating_point() else tensor.dtype
    out = tensor.to(device=gs.device, dtype=dtype)
    if detach:
        out = out.detach()
        if breaks.checking and tensor.requires_grad:
            input_checks.note_from_torch(tensor, out)
    if requires_grad and not out.requires_grad:
        out = out.detach().requires_grad_(True)
    return out


def install() -> None:
    patching.patch(gs, "from_torch", from_torch)
