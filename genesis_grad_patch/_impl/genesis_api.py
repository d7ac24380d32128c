"""
Every private Genesis name the plugin uses, in one audited place.

The plugin depends on Genesis internals that change between releases: the classes whose methods it replaces, private
helpers it calls, and private attributes it reads or writes. Supporting another Genesis release is this file plus
`version.py`: the imports below are the only imports of Genesis internals in the plugin, `PRIVATE_ATTRIBUTES` lists
every private attribute the plugin touches (a test parses the plugin's modules and fails on an attribute missing
here), and `audit(scene)` checks that each exists on a built scene of the installed Genesis.
"""

import genesis.utils.array_class as array_class
import genesis.utils.geom as geom
from genesis.constants import link_ref_frame
from genesis.engine.entities.rigid_entity.rigid_entity import RigidEntity
from genesis.engine.scene import Scene
from genesis.engine.simulator import Simulator
from genesis.engine.solvers.base_solver import StateChange, Subscriber
from genesis.engine.solvers.kinematic_solver import _offset_world_shift as offset_world_shift
from genesis.engine.solvers.kinematic_solver import _select_links_offset as select_links_offset
from genesis.engine.solvers.rigid import rigid_solver
from genesis.engine.solvers.rigid.collider import contact
from genesis.engine.solvers.rigid.collider.collider import Collider
from genesis.engine.solvers.rigid.constraint import backward as constraint_backward
from genesis.engine.solvers.rigid.rigid_solver import RigidSolver
from genesis.grad.bridge import StepNode
from genesis.utils.array_class import ArrayItem, DataKind
from genesis.utils.misc import broadcast_tensor, data_to_array, indices_to_mask, qd_to_torch

# Torch's private view of the torch-function mode stack: strict mode's cut propagation leaves it only from its top.
from torch.overrides import _get_current_function_mode_stack as torch_function_modes

__all__ = [
    "ArrayItem",
    "Collider",
    "DataKind",
    "PRIVATE_ATTRIBUTES",
    "RigidEntity",
    "RigidSolver",
    "Scene",
    "Simulator",
    "StateChange",
    "StepNode",
    "Subscriber",
    "array_class",
    "audit",
    "broadcast_tensor",
    "constraint_backward",
    "contact",
    "data_to_array",
    "geom",
    "indices_to_mask",
    "link_ref_frame",
    "offset_world_shift",
    "qd_to_torch",
    "torch_function_modes",
    "rigid_solver",
    "select_links_offset",
]

# Private attributes the plugin reads or writes, per object, with what they are for.
PRIVATE_ATTRIBUTES: dict[str, dict[str, str]] = {
    "Simulator": {
        "_requires_grad": "whether the scene is differentiable",
        "_grad_epoch": "the rollout a tape or a record belongs to (bumped by reset_grad)",
        "_grad_token": "the autograd token chaining the step nodes",
        "_is_backward_ready": "whether the tape is still there to reverse",
        "_cur_substep_global": "the substep a state read or a taped call belongs to",
        "_substeps": "substeps per step",
        "_steps_local": "the checkpoint window length",
        "_substeps_local": "the substeps of a checkpoint window (its first substep names the checkpoint)",
        "_rigid_only": "whether a reversed step can start from its checkpoint alone",
        "_active_solvers": "the solvers put back in forward mode after a failed reverse pass",
        "_scene": "the scene a simulator belongs to (destroyed scenes)",
    },
    "RigidSolver": {
        "_requires_grad": "whether the scene is differentiable",
        "_sim": "the simulator",
        "_scene": "the scene",
        "_options": "batch_links_info, batch_dofs_info",
        "_enable_collision": "parameters refused where constraints read them",
        "_enable_joint_limit": "parameters refused where constraints read them",
        "_B": "the number of environments of the fields (1 when unbatched)",
        "_ckpt": "the checkpoint of each step, restored by the reverse pass",
        "_rigid_adjoint_cache": "the substep frames a reversed step restores from its checkpoint",
        "_entities": "the entities whose taped calls a reversed step re-applies",
        "_substeps": "substeps per step (the warm start restored for one substep)",
        "_is_forward_pos_updated": "whether a substep recomputes the cartesian state (as a replayed step leaves it)",
        "_is_forward_vel_updated": "whether a substep recomputes the link velocities (as a replayed step leaves it)",
        "_enable_mujoco_compatibility": "which cartesian refresh a substep runs",
        "_update_cartesian_grad": "the cartesian-space reverse of a substep (given the environments as an ndarray)",
        "_is_backward": "forward/backward kernel mode",
        "_errno": "the error flags kernels raise (contacts appended by the plugin)",
        "_func_constraint_force": "the constraint solve of a substep (observed for approximate gradients)",
        "_queried_states": "the states read at a step, handed their gradient by the reverse pass",
        "_subscribers": "state-change notifications (caches dropped)",
        "_sanitize_io_variables": "index and buffer sanitizer of the control writers",
        "_sanitize_ref_frame": "link reference frames of the getters",
        "_links_offset_pos": "authored link origins (relative getters)",
        "_links_offset_quat": "authored link origins (relative getters)",
        "_links_offset_pos_is_identity": "authored link origins (relative getters)",
        "_links_offset_quat_is_identity": "authored link origins (relative getters)",
    },
    "RigidEntity": {
        "_solver": "the rigid solver",
        "_sim": "the simulator",
        "_tgt": "the pending taped calls of the coming step",
        "_tgt_buffer": "the taped calls of each step of the checkpoint window",
        "_ckpt": "the taped calls of each checkpoint (control calls only: the reverse pass skips the replay)",
        "_update_tgt_while_set": "off while Genesis replays its tape",
        "_get_global_idx": "local to global dof indices",
        "_dof_start": "the entity's first dof",
    },
    "Collider": {
        "_n_possible_pairs": "whether a scene has any collision pair (parameters refused with contacts)",
        "_solver": "the rigid solver",
        "_collision_pair_idx": "the geom pairs that may collide (plane-curved pairs detected by the plugin)",
    },
    "Scene": {"_envs_idx": "the indices of all environments (passed to the reverse kernels as a quadrants ndarray)"},
    "genesis": {"_scene_registry": "the live scenes (breaks tied to no scene)"},
}


def audit(scene) -> list[str]:
    """The private attributes of `PRIVATE_ATTRIBUTES` missing from a built scene of the installed Genesis."""
    objects = {"Scene": scene, "Simulator": scene.sim, "RigidSolver": scene.sim.rigid_solver}
    entities = scene.sim.rigid_solver.entities
    if entities:
        objects["RigidEntity"] = entities[0]
    missing = []
    for owner, attributes in PRIVATE_ATTRIBUTES.items():
        obj = objects.get(owner)
        if obj is None:
            continue
        missing += [f"{owner}.{name}" for name in attributes if not hasattr(obj, name)]
    return missing
