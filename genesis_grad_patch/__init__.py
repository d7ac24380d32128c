"""
genesis-grad-patch: differentiable PD control targets and state getters for Genesis rigid-body scenes.

Importing the package installs the patches, so that in a scene built with `SimOptions(requires_grad=True)`:

- `control_dofs_position`, `control_dofs_velocity` and `control_dofs_position_velocity` accept targets that track
  gradients, on entities and on the rigid solver, and `loss.backward()` delivers d loss / d target;
- `get_qpos`, `get_dofs_position`, `get_dofs_velocity`, `get_links_pos`, `get_links_quat` (solver and entity) and
  `get_pos`, `get_quat`, `get_vel`, `get_ang` (entity) return tensors of the autograd graph under grad mode;
- every control call clears its gradient fields when its step is reversed (fixes stale `control_dofs_force` grads);
- the reverse pass replays each step with the controls and model parameters it ran with (decimated, held, overridden
  targets, mode switches, gains changed mid-rollout), see `replay`;
- misuse of the tape (duplicated indices, failed calls and reverse passes, in-place inputs, double backward, no_grad
  steps) gets a clear error and leaves nothing behind, see `tape_guards`;
- `gs.from_torch` exists again for Genesis 0.x code, keeping the graph by default.

`install()` and `uninstall()` apply and revert the patches; `uninstall()` restores every original attribute. Setting
`GENESIS_GRAD_PATCH_DISABLE=1` makes the import a no-op (used to test the upstream patch, which makes the plugin moot).
"""

import os

from . import patching
from .doctor import doctor
from .gradcheck import gradcheck
from .strict import get_mode, set_mode
from .version import SUPPORTED_GENESIS_VERSION, UnsupportedGenesisVersion, check_genesis_version

__version__ = "0.1.0"
__all__ = [
    "SUPPORTED_GENESIS_VERSION",
    "UnsupportedGenesisVersion",
    "doctor",
    "get_mode",
    "gradcheck",
    "install",
    "is_disabled",
    "is_installed",
    "set_mode",
    "uninstall",
]

DISABLE_ENV_VAR = "GENESIS_GRAD_PATCH_DISABLE"


def is_disabled() -> bool:
    """Whether the environment disables the plugin (`GENESIS_GRAD_PATCH_DISABLE=1`)."""
    return os.environ.get(DISABLE_ENV_VAR) == "1"


def install() -> None:
    """Apply the patches to Genesis (idempotent). Raises `UnsupportedGenesisVersion` on any Genesis but 1.4.5."""
    if patching.is_patched():
        return
    check_genesis_version()
    from . import compat, control, detach_watch, getters, params, replay, strict, tape_guards

    control.install()
    params.install()
    replay.install()
    tape_guards.install()
    getters.install()
    compat.install()
    strict.install()
    params.install_refusals()  # outside strict mode's wrappers, which would detach the input first
    detach_watch.install()


def uninstall() -> None:
    """Revert every patch: Genesis behaves exactly as stock again (idempotent)."""
    if not patching.is_patched():
        return
    from . import getters, replay

    getters.uninstall()
    replay.clear()
    patching.revert_all()


def is_installed() -> bool:
    """Whether the patches are currently applied."""
    return patching.is_patched()


if is_disabled():
    import warnings

    warnings.warn(
        f"genesis_grad_patch is disabled by {DISABLE_ENV_VAR}=1: Genesis runs unpatched.", RuntimeWarning, stacklevel=2
    )
else:
    install()
