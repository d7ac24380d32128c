"""
Helpers of the suite: assets, scenes, the stock-Genesis switch and the finite-difference checks.

Imported by the test modules (`from helpers import ...`); `conftest.py` holds only pytest's hooks. Finite differences
come from the library's own implementation (`genesis_grad_patch.gradcheck.central_differences`).
"""

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import genesis as gs
import pytest
import torch

import genesis_grad_patch as ggp
from genesis_grad_patch.gradcheck import central_differences

ASSETS = Path(__file__).parent / "assets"
PLANAR_CAR = str(ASSETS / "planar_car.xml")
DIAG_ARM = str(ASSETS / "diag_arm.xml")
# The plugin is disabled when the suite runs against the upstream patch (scripts/check_upstream_patch.sh).
UPSTREAM_MODE = os.environ.get(ggp.DISABLE_ENV_VAR) == "1"


@contextlib.contextmanager
def stock_genesis():
    """Run a block on stock Genesis (plugin uninstalled), then put the plugin back."""
    if UPSTREAM_MODE:
        pytest.fail("stock_genesis() has no meaning against the upstream patch: guard the call with UPSTREAM_MODE")
    ggp.uninstall()
    try:
        yield
    finally:
        ggp.install()


def reported(match: str | None = None):
    """`pytest.warns(GradientBreakWarning)` for a call the test makes on purpose; nothing against the upstream patch,
    which has no strict mode."""
    if UPSTREAM_MODE:
        return contextlib.nullcontext()
    return pytest.warns(ggp.GradientBreakWarning, match=match)


def central_fd(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, coords: Sequence[int] | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Central finite differences of the scalar `f` at `x` along the given flat coordinates (all by default)."""
    x = x.detach().clone()
    coords = range(x.numel()) if coords is None else coords
    return torch.tensor(central_differences(lambda: f(x).item(), x, coords, eps), dtype=torch.float64)


def assert_grad_close(autograd: torch.Tensor, fd: torch.Tensor, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Compare gradients with a relative tolerance on the largest entry, so that near-zero entries do not dominate."""
    autograd, fd = autograd.detach().reshape(-1), fd.detach().reshape(-1).to(autograd.dtype)
    scale = max(fd.abs().max().item(), atol)
    err = (autograd - fd).abs().max().item() / scale
    assert err <= rtol, f"autograd {autograd.tolist()} != finite differences {fd.tolist()} (rel. err {err:.2e})"


def make_scene(*entities, n_envs: int = 0, dt: float = 0.01, substeps: int = 1, requires_grad: bool = True):
    """Build a scene with the given morphs (no gravity: smooth, contact-free dynamics). Returns (scene, entities)."""
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=dt, substeps=substeps, requires_grad=requires_grad, gravity=(0, 0, 0)),
        show_viewer=False,
    )
    added = [scene.add_entity(morph) for morph in entities]
    scene.build(n_envs=n_envs)
    return scene, added


def build_diag_arm(requires_grad: bool = True, n_envs: int = 0):
    """The two-joint arm of most tests (strict mode, doctor, schedules, misuse, parameters), without gravity."""
    scene, (arm,) = make_scene(gs.morphs.MJCF(file=DIAG_ARM), requires_grad=requires_grad, n_envs=n_envs)
    return scene, arm


def run_cli(argv: list[str]) -> int | str | None:
    """`genesis-grad` on `argv`, with argparse's `SystemExit` turned into its exit status."""
    from genesis_grad.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_stderr_line(capsys) -> str:
    """The single line the command printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
