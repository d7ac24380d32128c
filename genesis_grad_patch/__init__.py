"""
genesis-grad-patch: differentiable PD control targets, state getters and model parameters for Genesis rigid-body scenes.

Importing the package installs the patches, so that in a scene built with `SimOptions(requires_grad=True)`,
`loss.backward()` reaches every tensor given to a differentiable input or parameter, through every differentiable read.
Which methods those are, entity and solver level, is the catalog's (`genesis_grad_patch.catalog`, printed by
`python -m genesis_grad_patch.catalog`); every other input or read that would lose a gradient is reported by strict
mode (`set_mode`), and `doctor` explains a loss that gets no gradient. The reverse pass replays each step with the
controls and model parameters it ran with (decimated, held, overridden targets, gains changed mid-rollout), and misuse
of the tape gets a clear error.

Public surface: `install` / `uninstall` / `patched` (scoped, reversible patching, groups "core" and "strict"),
`set_mode` / `get_mode`, `doctor`, `gradcheck`, and the types users filter on or read (`GradientBreakWarning`,
`GradientBreakError`, `BreakKind`, `BreakEvent`, `DoctorReport`, `GradcheckResult`, `UnsupportedGenesisVersion`).
The public modules are this package, `strict` (strict mode's services and types), `doctor` / `doctor_report`,
`gradcheck`, `catalog` (what is differentiable) and `version`; the machinery, one module per concern, is the private
`_impl` subpackage (see CONTRIBUTING.md).

Setting `GENESIS_GRAD_PATCH_DISABLE=1` makes the import a no-op (used to test the upstream patch, which makes the
plugin moot).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ._impl import patching
from ._impl.breaks import BreakEvent, BreakKind, GradientBreakError, GradientBreakWarning, get_mode, set_mode
from .doctor import DoctorReport, doctor
from .gradcheck import GradcheckResult, gradcheck
from .version import SUPPORTED_GENESIS_VERSION, UnsupportedGenesisVersion, check_genesis_version

__version__ = "0.1.0"
__all__ = [
    "SUPPORTED_GENESIS_VERSION",
    "BreakEvent",
    "BreakKind",
    "DoctorReport",
    "GradcheckResult",
    "GradientBreakError",
    "GradientBreakWarning",
    "UnsupportedGenesisVersion",
    "doctor",
    "get_mode",
    "gradcheck",
    "install",
    "is_disabled",
    "is_installed",
    "patched",
    "set_mode",
    "uninstall",
]

DISABLE_ENV_VAR = "GENESIS_GRAD_PATCH_DISABLE"
GROUPS = ("core", "strict")


def is_disabled() -> bool:
    """Whether the environment disables the plugin (`GENESIS_GRAD_PATCH_DISABLE=1`)."""
    return os.environ.get(DISABLE_ENV_VAR) == "1"


def install(strict: bool = True) -> None:
    """
    Apply the patches to Genesis (idempotent). Raises `UnsupportedGenesisVersion` on any Genesis but 1.4.5.

    Parameters
    ----------
    strict : bool, optional
        Also install strict mode (the reports of gradient breaks, the record of detaches, the backward-misuse errors).
        Without it the gradients are the same; misuse is not reported. Defaults to True.
    """
    from ._impl import breaks

    if not patching.is_patched("core"):
        check_genesis_version()
        from ._impl import (
            backward_checks,
            compat,
            contact_friction,
            control,
            curved_contacts,
            getters,
            params,
            replacements,
            replay,
            reverse_pass,
            tape_guards,
            torch_compile,
        )

        replacements.install()
        control.install()
        params.install()
        contact_friction.install()
        curved_contacts.install()
        replay.install()
        reverse_pass.install()
        tape_guards.install()
        getters.install()
        compat.install()
        backward_checks.install()
        torch_compile.install()
    if strict and not patching.is_patched("strict"):
        from ._impl import accuracy, backward_checks, detach_watch, replacements

        replacements.install(strict=True)
        accuracy.install()
        backward_checks.install(strict=True)
        detach_watch.install()
        breaks.set_enabled(True)
    elif not strict:
        _uninstall_strict()


def _uninstall_strict() -> None:
    from ._impl import breaks, detach_watch, input_checks

    patching.revert(("strict",))
    breaks.set_enabled(False)
    breaks.clear()
    detach_watch.clear()
    input_checks.clear()


def uninstall(groups: tuple[str, ...] = GROUPS) -> None:
    """
    Revert the patches of the given groups (all by default): Genesis behaves exactly as stock again (idempotent).

    `uninstall(("strict",))` takes strict mode out alone, leaving the gradients in place. Everything the plugin
    remembered (records of the scenes, breaks, detaches, caches) is forgotten with the patches.
    """
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"Unknown patch groups {sorted(unknown)}: expected some of {GROUPS}.")
    if "strict" in groups:
        _uninstall_strict()
    if "core" in groups and patching.is_patched("core"):
        from ._impl import curved_contacts, detach_watch, records, torch_compile

        curved_contacts.restore()
        torch_compile.uninstall()
        records.clear()
        detach_watch.forget_scenes()
        patching.revert()
        _uninstall_strict()


def is_installed() -> bool:
    """Whether the patches are currently applied."""
    return patching.is_patched("core")


@contextmanager
def patched(strict: bool = True) -> Iterator[None]:
    """
    Apply the patches for the duration of a block, then restore what was there before (scoped patching).

    ``with genesis_grad_patch.patched(): ...`` installs the plugin if it is not (with or without strict mode) and, on
    exit, puts Genesis back exactly as it found it: stock if the plugin was not installed, patched if it was.
    """
    was_core, was_strict = patching.is_patched("core"), patching.is_patched("strict")
    install(strict=strict)
    try:
        yield
    finally:
        if not was_core:
            uninstall()
        elif was_strict and not patching.is_patched("strict"):
            install(strict=True)
        elif not was_strict and patching.is_patched("strict"):
            uninstall(("strict",))


if is_disabled():
    import warnings

    warnings.warn(
        f"genesis_grad_patch is disabled by {DISABLE_ENV_VAR}=1: Genesis runs unpatched.", RuntimeWarning, stacklevel=2
    )
else:
    install()
