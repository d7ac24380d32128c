"""
The contract for scenes: every gradient is exact (central differences), or the user is told.

Hypothesis draws (fixed budget, derandomized) a free body of every primitive (box, sphere, capsule, cylinder,
ellipsoid, a convex mesh from Genesis's own assets) resting, tilted onto an edge or lying on a plane, or a box or a
cylinder on a box, pushed by a tracked force and torque for a few steps, then checks the gradient of its pose against
finite differences. An example passes when the gradient is exact (1e-5 relative at the closest of four step sizes,
1e-3 to 1e-6: a contact made or broken within 1e-5 of the input bends the loss there, and only the smallest step then
sees the derivative) or when the backward pass issued a `GradientBreakWarning` (an approximate contact or an
unconverged solve).

A second generator draws articulated chains (hinge and slide joints, limits pressed by gravity and by targets beyond
them, friction loss, damping, armature, a connect equality closing the loop), 1 or 2 envs, 1 or 2 substeps, tracked
position targets under a random schedule (set, held, skipped) and an optionally tracked kp, with the same contract.

`GENESIS_GRAD_PATCH_ZOO_LOG=FILE` appends each example's outcome to FILE instead of asserting (to count the silently
wrong scenes of a build).
"""

import os
import warnings

import genesis as gs
import pytest
import torch
from helpers import central_fd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genesis_grad_patch import strict

pytestmark = pytest.mark.plugin_only

LOG = os.environ.get("GENESIS_GRAD_PATCH_ZOO_LOG")
ELLIPSOID = """<mujoco><worldbody><body><freejoint/><geom type="ellipsoid" size="0.12 0.09 0.06"/></body></worldbody>
</mujoco>"""
CAPSULE = """<mujoco><worldbody><body><freejoint/><geom type="capsule" size="0.06 0.1"/></body></worldbody></mujoco>"""
SHAPES = ("box", "sphere", "capsule", "cylinder", "mesh", "ellipsoid", "box_on_box", "cylinder_on_box")


def _morph(name: str, tmp_path):
    if name in ("ellipsoid", "capsule"):
        path = tmp_path / f"{name}.xml"
        path.write_text(ELLIPSOID if name == "ellipsoid" else CAPSULE)
        return gs.morphs.MJCF(file=str(path))
    if name.startswith("box"):
        return gs.morphs.Box(size=(0.2, 0.16, 0.12))
    if name.startswith("cylinder"):
        return gs.morphs.Cylinder(radius=0.08, height=0.12)
    if name == "sphere":
        return gs.morphs.Sphere(radius=0.08)
    return gs.morphs.Mesh(file="meshes/sphere.obj", scale=0.08)  # Genesis's own asset, convexified


def _depth_below_center(name: str, rotation: torch.Tensor) -> float:
    """How far the shape reaches below its centre in the world, at this orientation."""
    up = rotation[2]  # the world z axis in the body frame, as a row of R
    if name.startswith("box"):
        return float((up.abs() * torch.tensor([0.1, 0.08, 0.06], dtype=up.dtype)).sum())
    if name == "capsule":
        return float(0.1 * up[2].abs() + 0.06)
    if name.startswith("cylinder"):
        return float(0.06 * up[2].abs() + 0.08 * (1.0 - up[2] ** 2).clamp(min=0.0).sqrt())
    if name == "ellipsoid":
        return float(((up * torch.tensor([0.12, 0.09, 0.06], dtype=up.dtype)) ** 2).sum().sqrt())
    return 0.08  # sphere and sphere mesh


def _error_or_reports(loss, x0: torch.Tensor, steps: tuple[float, ...]) -> tuple[float, list[str]]:
    """The relative error of the gradient of `loss` at `x0` against central differences (the closest of the step
    sizes: contact solves leave ~1e-10 of noise in the loss), and the gradient breaks its backward pass reported."""
    x = x0.clone().requires_grad_()
    value = loss(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value.backward()
    reported = [str(w.message) for w in caught if issubclass(w.category, strict.GradientBreakWarning)]
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    errors = []
    for eps in steps:
        fd = central_fd(loss, x0, eps=eps)
        errors.append(((grad - fd).abs().max() / max(fd.abs().max().item(), 1e-9)).item())
    return min(errors), reported


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One scene per shape, built on first use."""
    tmp_path = tmp_path_factory.mktemp("zoo")
    built = {}

    def get(name: str):
        if name not in built:
            scene = gs.Scene(
                sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True),
                rigid_options=gs.options.RigidOptions(tolerance=1e-12, iterations=200),
                show_viewer=False,
            )
            scene.add_entity(gs.morphs.Plane())
            if name.endswith("_on_box"):
                scene.add_entity(gs.morphs.Box(size=(0.6, 0.6, 0.2), pos=(0.0, 0.0, 0.1), fixed=True))
            body = scene.add_entity(_morph(name, tmp_path))
            scene.build()
            built[name] = (scene, body)
        return built[name]

    return get


def _quat(roll: float, yaw: float) -> torch.Tensor:
    half_r, half_y = torch.tensor(roll / 2), torch.tensor(yaw / 2)
    q_roll = torch.stack([half_r.cos(), half_r.sin(), torch.tensor(0.0), torch.tensor(0.0)])
    q_yaw = torch.stack([half_y.cos(), torch.tensor(0.0), torch.tensor(0.0), half_y.sin()])
    return gs.utils.geom.transform_quat_by_quat(q_roll.double(), q_yaw.double())


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    name=st.sampled_from(SHAPES),
    pose=st.sampled_from(["resting", "tilted", "lying"]),
    yaw=st.floats(-3.0, 3.0),
    push=st.lists(st.floats(0.2, 2.0), min_size=2, max_size=2),
    twist=st.lists(st.floats(0.005, 0.05), min_size=3, max_size=3),
    signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=5, max_size=5),
    steps=st.integers(3, 10),
)
def test_every_gradient_is_exact_or_reported(zoo, name, pose, yaw, push, twist, signs, steps):
    scene, body = zoo(name)
    roll = {"resting": 0.0, "tilted": 0.3, "lying": 1.5707963267948966}[pose]
    quat = _quat(roll, yaw)
    # Sunk by 1 mm into its support: in contact from the first step (a tilted body then settles onto its face).
    support = 0.2 if name.endswith("_on_box") else 0.0
    height = support + _depth_below_center(name, gs.utils.geom.quat_to_R(quat)) - 1e-3
    pos = torch.tensor([0.0, 0.0, height], dtype=torch.float64)

    def loss(f: torch.Tensor) -> torch.Tensor:
        scene.reset()
        body.set_pos(pos)
        body.set_quat(quat)
        for _ in range(steps):
            body.control_dofs_force(f, dofs_idx_local=list(range(6)))
            scene.step()
        weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        return (body.get_pos() * weights).sum() + (body.get_quat() * torch.tensor([0.5, 0.3, 0.7, 0.2])).sum()

    # Loads away from zero: a body at rest under no tangential load at all sits where the friction rows are degenerate
    # (see test_body_at_rest_under_no_load).
    f0 = torch.tensor([*push, 0.0, *twist], dtype=torch.float64) * torch.tensor([*signs[:2], 1.0, *signs[2:]])
    error, reported = _error_or_reports(loss, f0, (1e-3, 1e-4, 1e-5, 1e-6))
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"{name} {pose} steps={steps} error={error:.2e} reported={bool(reported)}\n")
        return
    assert error <= 1e-5 or reported, f"{name} {pose}: relative error {error:.2e}, nothing reported"


@pytest.mark.xfail(strict=True, reason="Genesis's constraint adjoint at a degenerate friction state: not yet reported")
def test_body_at_rest_under_no_load(zoo):
    """A box at rest, square on the plane, pushed by a zero force: the loss is differentiable there (one-sided
    differences agree to 1e-7), but every friction row carries exactly zero force, which the constraint adjoint reads
    as inactive: 0.81 relative error, nothing said. Any load breaks the tie (the zoo above)."""
    scene, body = zoo("box")
    pos = torch.tensor([0.0, 0.0, 0.059], dtype=torch.float64)

    def loss(f: torch.Tensor) -> torch.Tensor:
        scene.reset()
        body.set_pos(pos)
        for _ in range(3):
            body.control_dofs_force(f, dofs_idx_local=list(range(6)))
            scene.step()
        return (body.get_pos() * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum()

    f = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(f).backward()
    reported = [w for w in caught if issubclass(w.category, strict.GradientBreakWarning)]
    fd = central_fd(loss, torch.zeros(6, dtype=torch.float64), eps=1e-4)
    error = ((f.grad - fd).abs().max() / fd.abs().max()).item()
    assert error <= 1e-5 or reported, f"relative error {error:.2e}, nothing reported"


# Articulated chains: a fixed base, three links (the second joint a hinge or a slide), optional joint limits that the
# targets reach beyond, friction loss, damping, armature, and an optional connect equality pinning the tip to the
# world (a closed loop). Built once per variant.
CHAIN = """<mujoco><option gravity="0 0 -9.81"/><worldbody>
<body name="l1" pos="0 0 1"><joint name="j1" type="hinge" axis="0 1 0" {limit1} {dof}/>
<geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" mass="1"/>
<body name="l2" pos="0.3 0 0"><joint name="j2" type="{kind2}" axis="{axis2}" {limit2} {dof}/>
<geom type="box" size="0.12 0.03 0.03" pos="0.12 0 0" mass="0.8"/>
<body name="l3" pos="0.25 0 0"><joint name="j3" type="hinge" axis="0 1 0" {dof}/>
<geom type="sphere" size="0.04" pos="0.1 0 0" mass="0.5"/><site name="tip" pos="0.2 0 0"/></body></body></body>
</worldbody>{equality}</mujoco>"""
CONNECT = '<equality><connect body1="l3" body2="world" anchor="0.2 0 0"/></equality>'


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("chains")
    built = {}

    def get(slide: bool, limits: bool, lossy: bool, connect: bool, n_envs: int, substeps: int):
        key = (slide, limits, lossy, connect, n_envs, substeps)
        if key not in built:
            dof = 'damping="0.3" armature="0.02"' + (' frictionloss="0.2"' if lossy else "")
            xml = CHAIN.format(
                limit1='limited="true" range="-0.35 0.35"' if limits else "",
                kind2="slide" if slide else "hinge",
                axis2="1 0 0" if slide else "0 1 0",
                limit2=('limited="true" range="-0.04 0.04"' if slide else 'limited="true" range="-0.3 0.3"')
                if limits
                else "",
                dof=dof,
                equality=CONNECT if connect else "",
            )
            path = tmp_path / ("chain_" + "_".join(str(int(k)) for k in key) + ".xml")
            path.write_text(xml)
            scene = gs.Scene(
                sim_options=gs.options.SimOptions(dt=0.01, substeps=substeps, requires_grad=True),
                rigid_options=gs.options.RigidOptions(tolerance=1e-12, iterations=200, enable_self_collision=False),
                show_viewer=False,
            )
            arm = scene.add_entity(gs.morphs.MJCF(file=str(path)))
            scene.build(n_envs=n_envs)
            arm.set_dofs_kp(torch.tensor([40.0, 60.0, 20.0], dtype=torch.float64))
            arm.set_dofs_kv(torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64))
            built[key] = (scene, arm)
        return built[key]

    return get


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    slide=st.booleans(),
    limits=st.booleans(),
    lossy=st.booleans(),
    connect=st.booleans(),
    n_envs=st.sampled_from([0, 2]),
    substeps=st.sampled_from([1, 2]),
    schedule=st.lists(st.sampled_from(["set", "hold", "skip"]), min_size=4, max_size=8),
    reach=st.floats(0.2, 0.8),
    track_kp=st.booleans(),
)
def test_every_chain_gradient_is_exact_or_reported(
    chains, slide, limits, lossy, connect, n_envs, substeps, schedule, reach, track_kp
):
    """Position targets (beyond the limits when `reach` is large) at the steps `schedule` marks "set", the last target
    held on "hold", and no control call on "skip"; optionally a tracked kp; loss on the joint positions and the tip."""
    scene, arm = chains(slide, limits, lossy, connect, n_envs, substeps)
    batch = (n_envs,) if n_envs else ()
    base = torch.tensor([reach, 0.05 if slide else -reach, 0.5 * reach], dtype=torch.float64)
    x0 = torch.cat([base.expand(*batch, 3).reshape(-1), torch.tensor([40.0], dtype=torch.float64)])

    # Started 1 cm (or 1 cm of travel) inside the limits, which gravity and the targets then press against.
    q_start = torch.tensor([0.34, 0.03 if slide else -0.29, 0.1], dtype=torch.float64).expand(*batch, 3)

    def loss(x: torch.Tensor) -> torch.Tensor:
        scene.reset()
        arm.set_qpos(q_start)
        target = x[:-1].reshape(*batch, 3)
        if track_kp:
            arm.set_dofs_kp(torch.stack([x[-1], x[-1] * 1.5, x[-1] * 0.5]))
        held = None
        for k, what in enumerate(schedule):
            if what == "set":
                held = target * (1.0 + 0.1 * k)
            if held is not None and what != "skip":
                arm.control_dofs_position(held)
            scene.step()
        tip = arm.get_links_pos()[..., -1, :]
        return (arm.get_qpos() * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum() + (tip**2).sum()

    error, reported = _error_or_reports(loss, x0, (1e-4, 1e-5, 1e-6))
    arm.set_dofs_kp(torch.tensor([40.0, 60.0, 20.0], dtype=torch.float64))
    case = f"slide={slide} limits={limits} lossy={lossy} connect={connect} envs={n_envs} substeps={substeps} {schedule}"
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"chain {case} error={error:.2e} reported={bool(reported)}\n")
        return
    assert error <= 1e-5 or reported, f"{case}: relative error {error:.2e}, nothing reported"
