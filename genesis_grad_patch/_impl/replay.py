"""
Replay fidelity: the reverse pass rebuilds every step with the controls and model parameters that step ran with.

In a differentiable scene Genesis checkpoints each step, but a checkpoint holds only `qpos`, `dofs_vel` and
`dofs_acc`. To reverse a step it restores that state and replays the calls taped at that step alone. Everything else a
step reads that user calls can change between steps keeps its backward-time value: the control fields
(`ctrl_force/pos/vel/mode`), which a call leaves in place for every later step, and the model parameters (gains,
damping, masses, gravity, ...). A step without a call of its own (a decimated policy, a held target) was therefore
replayed with the targets, mode and gains of the last call of the rollout, silently.

This module records, per rollout, every change of such data at the step it took effect, and writes the right values
back before each replayed step:

- the control fields and gravity (a few small arrays) are copied after every step, on the device, into one flat
  tensor per step: nothing is read back to the host, so a step adds no synchronization on a GPU;
- the other model parameters (every array Genesis classifies as `DataKind.INFO`) are compared only after Genesis
  notified a model change (`StateChange.MODEL`, which every `@mutates`-tagged setter sends), and an array is copied
  only when it changed: a rollout whose parameters stay the same pays for none of them.

The gradient fields are never touched, so the gradient a held target accumulates over the steps it drove reaches the
call that wrote it. After the reverse pass the solver holds the data of the earliest reversed step, as its state does;
`scene.reset()` puts back the model parameters of the end of the rollout, which stock Genesis keeps across a reset.
"""

import bisect

import genesis as gs
import torch

from . import params, patching, records, tape_guards
from .genesis_api import ArrayItem, DataKind, RigidSolver, StateChange, Subscriber, data_to_array

# Arrays compared after every step: the control fields (written by every control call, taped or not) and gravity
# (written by `set_gravity`, which sends no mutation notification).
WATCHED = (
    "dyn_state.dofs.ctrl_force",
    "dyn_state.dofs.ctrl_pos",
    "dyn_state.dofs.ctrl_vel",
    "dyn_state.dofs.ctrl_mode",
    "rigid_info.gravity",
)


def _read(array) -> torch.Tensor:
    return data_to_array(array, to_torch=True, copy=True)


def _write(array, value: torch.Tensor) -> None:
    if gs.use_zerocopy:
        data_to_array(array, to_torch=True, copy=False).copy_(value)
    else:
        array.from_numpy(value.cpu().numpy())


class ReplayRecord:
    """
    The controls and model parameters of one rigid solver, as each step of the current rollout ran with them.

    `snapshots[first substep]` holds the control fields and gravity after that step, in one flat tensor (one copy on
    the device per step, read by nobody on the host). `versions[name]` lists `(first substep, value)` for every model
    array that changed during the rollout, the value before the first change included; `applied[name]` is the version
    the array holds now (by identity), so that replaying a window of steps without a model change writes nothing.
    """

    def __init__(self, solver: RigidSolver):
        self._sim = solver.sim
        items = {
            item.name: item.array
            for item in solver.data
            if isinstance(item, ArrayItem)
            and (item.kind == DataKind.INFO or item.name in WATCHED)
            and not item.name.endswith(".grad")
            and "adjoint_cache" not in item.name
        }
        self.watched = {name: items.pop(name) for name in WATCHED if name in items}
        self.model = items
        # Zero-copy views, made once.
        self.views = (
            {name: records.view(solver, name, lambda _, array=array: array) for name, array in self.watched.items()}
            if gs.use_zerocopy
            else {}
        )
        # Lazy subscription: model changes accumulate until the next step looks at them.
        self.subscriber = Subscriber(to=frozenset({StateChange.MODEL}))
        solver.subscribe(self.subscriber)
        self.current = {name: _read(array) for name, array in self.model.items()}
        self.epoch = None
        self.snapshots: dict[int, torch.Tensor] = {}
        self.versions: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self.applied: dict[str, torch.Tensor] = {}
        self.end_values: dict[str, torch.Tensor] = {}
        self.rewinding = False

    def _watched_values(self) -> list[torch.Tensor]:
        if self.views:
            return list(self.views.values())
        return [_read(array) for array in self.watched.values()]

    def _snapshot(self) -> torch.Tensor:
        """The control fields and gravity as they are now, in one flat tensor of the float dtype (the control mode, a
        small integer, is exact in it)."""
        return torch.cat([value.reshape(-1).to(gs.tc_float) for value in self._watched_values()])

    def _write_snapshot(self, snapshot: torch.Tensor) -> None:
        offset = 0
        for name, value in zip(self.watched, self._watched_values(), strict=True):
            part = snapshot[offset : offset + value.numel()].view(value.shape)
            offset += value.numel()
            if self.views:
                value.copy_(part)
            else:
                _write(self.watched[name], part.to(value.dtype))

    def _record(self, name: str, array, first_substep: int) -> None:
        """Compare one model array with its last recorded value and record a new version if it changed."""
        value = data_to_array(array, to_torch=True, copy=False) if gs.use_zerocopy else _read(array)
        previous = self.current[name]
        if torch.equal(value, previous):
            return
        value = value.clone()
        versions = self.versions.setdefault(name, [(0, previous)])
        if self.rewinding:
            # Changed after the last step of the rollout (by a call that no step followed): every replayed step ran
            # with the recorded value, and the value of the end goes back at reset like any rewound one.
            self.end_values.setdefault(name, value)
            self.applied.pop(name, None)
            return
        versions.append((first_substep, value))
        self.current[name] = self.applied[name] = value

    def _scan_model(self, first_substep: int) -> None:
        # Only after Genesis notified a model change (a setter call, not a per-step event): the comparisons read the
        # device once per array then.
        if self.subscriber.pending:
            self.subscriber.clear()
            for name, array in self.model.items():
                self._record(name, array, first_substep)

    def after_step(self, first_substep: int) -> None:
        """Record the data the step that starts at global substep `first_substep` ran with (it just ran)."""
        epoch = self._sim._grad_epoch
        if epoch != self.epoch:
            self.epoch = epoch
            self.snapshots.clear()
            self.versions.clear()
            self.applied.clear()
            self.end_values.clear()
        self.rewinding = False
        # Every step, whether a call changed the controls or not: telling would read the device (a synchronization per
        # step on a GPU), a copy of a few small arrays does not.
        self.snapshots[first_substep] = self._snapshot()
        self._scan_model(first_substep)

    def before_replay(self, first_substep: int) -> None:
        """Write back the data the step starting at global substep `first_substep` ran with, before it is replayed."""
        if self.epoch != self._sim._grad_epoch:
            return
        if not self.rewinding:
            # First replay of this backward pass: the values of the end of the rollout (gravity goes back at reset),
            # and model changes made since the last step, are rewound as well.
            self.rewinding = True
            self.end_values["controls"] = self._snapshot()
            self._scan_model(first_substep)
        snapshot = self.snapshots.get(first_substep)
        if snapshot is not None:
            self._write_snapshot(snapshot)
        for name, versions in self.versions.items():
            # Versions are in step order: the last one starting at or before this step (a reverse pass visits every
            # step, so a linear scan from the end would cost the square of the horizon).
            value = versions[bisect.bisect_right(versions, first_substep, key=_start) - 1][1]
            if self.applied.get(name) is value:
                continue
            array = self.model[name]
            if name not in self.end_values:
                self.end_values[name] = _read(array)
            _write(array, value)
            self.applied[name] = value

    def restart(self) -> None:
        """
        Forget the rollout at `scene.reset()`, first putting back the model parameters and the gravity it ended with if
        the reverse pass rewound them (the reset itself restarts the controls).
        """
        if self.rewinding:
            controls = self.end_values.pop("controls", None)
            if controls is not None and "rigid_info.gravity" in self.watched:
                # Gravity is the last of the watched arrays.
                gravity = self._watched_values()[-1]
                end = controls[controls.numel() - gravity.numel() :].view(gravity.shape)
                if self.views:
                    gravity.copy_(end)
                else:
                    _write(self.watched["rigid_info.gravity"], end.to(gravity.dtype))
            for name, value in self.end_values.items():
                _write(self.model[name], value)
                self.current[name] = value
        self.rewinding = False
        self.snapshots.clear()
        self.end_values.clear()
        self.versions.clear()
        self.applied.clear()
        self.epoch = None


def _start(version: tuple[int, torch.Tensor]) -> int:
    return version[0]


_tracked_epochs = records.tracked_epochs


def record_of(solver: RigidSolver) -> ReplayRecord:
    """The replay record of a solver (in its `records.SolverRecord`), made on first use."""
    solver_record = records.of_solver(solver)
    if solver_record.replay is None:
        solver_record.replay = ReplayRecord(solver)
    return solver_record.replay


def _peek(solver: RigidSolver) -> ReplayRecord | None:
    solver_record = records.peek_solver(solver)
    return None if solver_record is None else solver_record.replay


def _save_ckpt(stock):
    """`RigidSolver.save_ckpt` (called after every step of a differentiable scene), then the record of the step."""

    def save_ckpt(self: RigidSolver, ckpt_name: str) -> None:
        stock(self, ckpt_name)
        if self._requires_grad:
            # Steps before the first tracked input of a rollout reach no gradient (their reversal only carries the
            # adjoint on to inputs that track nothing): they need no record, and a rollout that tracks nothing pays for
            # none. The first recorded step compares with the values of the last recorded one, so it records whatever
            # changed since.
            sim = self._sim
            if _tracked_epochs.get(id(sim)) == sim._grad_epoch:  # records.has_tracked_inputs, inline (every step)
                record_of(self).after_step(int(ckpt_name))
            if not torch.is_grad_enabled():
                tape_guards.note_no_grad_step(sim)

    return save_ckpt


def load_ckpt(self: RigidSolver, ckpt_name: str) -> None:
    patching.original(RigidSolver, "load_ckpt")(self, ckpt_name)
    restored(self, ckpt_name)


def restored(solver: RigidSolver, ckpt_name: str) -> None:
    """The checkpoint `ckpt_name` of `solver` was just restored: write back the data its step ran with."""
    params.note_reverse(solver)
    record = _peek(solver)
    if record is not None:
        record.before_replay(int(ckpt_name))


def reset_grad(self: RigidSolver) -> None:
    record = _peek(self)
    if record is not None:
        record.restart()
    tape_guards.drop_pending(self, params.clear_grads(self))
    patching.original(RigidSolver, "reset_grad")(self)


def install() -> None:
    # The stock method given at install (a replacement called at every step skips the lookup).
    patching.patch(RigidSolver, "save_ckpt", _save_ckpt(RigidSolver.save_ckpt))
    patching.patch(RigidSolver, "load_ckpt", load_ckpt)
    patching.patch(RigidSolver, "reset_grad", reset_grad)
