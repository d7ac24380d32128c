"""Stand-in for Genesis's tests/grad/utils.py: the same two helpers, with the same arguments, written for this check."""

from typing import NamedTuple

import genesis as gs
import numpy as np
import torch
from genesis.utils.misc import tensor_to_array

from ..utils.assertions import assert_allclose


class DiffScenePair(NamedTuple):
    scene_ana: "gs.Scene"
    entity_ana: object
    scene_fd: "gs.Scene"
    entity_fd: object


def make_diff_scene_pair(
    mjcf,
    *,
    n_envs=0,
    substeps=1,
    dt=0.01,
    gravity=(0.0, 0.0, -9.81),
    enable_joint_limit=False,
    disable_constraint=True,
    modes=(True, False),
    show_viewer=False,
    camera_pos=(1.2, -1.2, 0.8),
    camera_lookat=(0.0, 0.0, 0.2),
):
    """A scene requiring gradients (backpropagated) and one that does not (finite differences), built alike."""
    built = {}
    for requires_grad in modes:
        scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=dt, substeps=substeps, gravity=gravity, requires_grad=requires_grad),
            rigid_options=gs.options.RigidOptions(
                enable_collision=False, enable_joint_limit=enable_joint_limit, disable_constraint=disable_constraint
            ),
            viewer_options=gs.options.ViewerOptions(camera_pos=camera_pos, camera_lookat=camera_lookat),
            show_viewer=show_viewer and requires_grad,
        )
        entity = scene.add_entity(gs.morphs.MJCF(file=mjcf))
        scene.build(n_envs=n_envs)
        built[requires_grad] = (scene, entity)
    ana, fd = built.get(True, (None, None)), built.get(False, (None, None))
    return DiffScenePair(ana[0], ana[1], fd[0], fd[1])


def _run(scene, entity, inputs, apply_fn, n_steps, setup_fn, step_fn):
    scene.reset()
    if setup_fn is not None:
        setup_fn(scene, entity)
    for i_step in range(n_steps):
        if i_step < len(inputs):
            apply_fn(entity, inputs[i_step])
        if step_fn is not None:
            step_fn(entity, i_step)
        scene.step()


def assert_grad_matches_fd(
    pair, inputs, apply_fn, loss_fn, *, rtol, atol, eps, n_steps=None, setup_fn=None, step_fn=None
):
    """
    Input i is given by 'apply_fn(entity, x)' before step i; its gradient by backpropagation in 'pair.scene_ana' must
    match finite differences of the loss in 'pair.scene_fd' (central differences at 'eps' and 'eps / 2', combined to
    cancel their second-order error).
    """
    values = [np.asarray(x, dtype=np.float64) for x in inputs]
    n_steps = len(values) if n_steps is None else n_steps

    tracked = [torch.tensor(x, dtype=gs.tc_float, device=gs.device, requires_grad=True) for x in values]
    _run(pair.scene_ana, pair.entity_ana, tracked, apply_fn, n_steps, setup_fn, step_fn)
    loss = loss_fn(pair.scene_ana, pair.entity_ana)
    assert loss.requires_grad, "the loss does not depend on the tracked inputs"
    loss.backward()

    def loss_at(i_input, i_entry, delta):
        shifted = [x.copy() for x in values]
        shifted[i_input].reshape(-1)[i_entry] += delta
        _run(pair.scene_fd, pair.entity_fd, shifted, apply_fn, n_steps, setup_fn, step_fn)
        return float(loss_fn(pair.scene_fd, pair.entity_fd))

    for i_input, x in enumerate(tracked):
        assert x.grad is not None, f"input {i_input} got no gradient"
        fd_grad = np.empty(values[i_input].size)
        for i_entry in range(fd_grad.size):
            d_full, d_half = (
                (loss_at(i_input, i_entry, h) - loss_at(i_input, i_entry, -h)) / (2.0 * h) for h in (eps, 0.5 * eps)
            )
            fd_grad[i_entry] = d_half + (d_half - d_full) / 3.0
        assert_allclose(tensor_to_array(x.grad).reshape(-1), fd_grad, rtol=rtol, atol=atol, err_msg=f"input {i_input}")
