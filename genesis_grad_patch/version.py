"""Guard the one Genesis release the patches were written and tested against."""

import importlib.metadata
import os

SUPPORTED_GENESIS_VERSION = "1.4.5"
FORCE_ENV_VAR = "GENESIS_GRAD_PATCH_FORCE"


class UnsupportedGenesisVersion(ImportError):
    """Raised when the installed Genesis is not the release the patches target."""


def genesis_version() -> str:
    """Return the installed version of the `genesis-world` distribution."""
    return importlib.metadata.version("genesis-world")


def check_genesis_version() -> None:
    """
    Raise `UnsupportedGenesisVersion` unless genesis-world 1.4.5 is installed.

    The patches replace private Genesis methods whose bodies change between releases, so any other version could
    compute silently wrong gradients. Setting the environment variable `GENESIS_GRAD_PATCH_FORCE=1` skips the check at
    the user's own risk.
    """
    installed = genesis_version()
    if installed == SUPPORTED_GENESIS_VERSION or os.environ.get(FORCE_ENV_VAR) == "1":
        return
    raise UnsupportedGenesisVersion(
        f"genesis-grad-patch supports genesis-world=={SUPPORTED_GENESIS_VERSION} only, but {installed} is installed. "
        f"Install it with `pip install genesis-world=={SUPPORTED_GENESIS_VERSION}`, or set {FORCE_ENV_VAR}=1 to patch "
        "this version anyway (gradients are then unverified)."
    )
