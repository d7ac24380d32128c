"""
Gradient doctor: explain which parameters a loss reaches through a Genesis rollout, and why the others get nothing.

`doctor(loss, model)` walks the autograd graph behind `loss`. The nodes Genesis adds are recognizable: one
`StepNodeBackward` per `scene.step()` (its context holds the step index, the rollout and the ids of the inputs taped for
that step) and one `ReadNodeBackward` per state read. The walk gives the steps and reads the loss passes through and the
control inputs that reach it; the rollout's own token (`sim._grad_token`) gives every input the rollout took, reached by
the loss or not. Strict mode (breaks.py) adds where each input was given, which getters each read served, and the breaks
it detected, which name the nearest reason for each parameter that gets no gradient.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import genesis as gs
import torch

from ._impl import accuracy, breaks, patching
from ._impl.breaks import BreakKind
from .doctor_report import (
    AFTER_LAST_READ,
    CUT_AT_DETACH,
    DROPPED_INPUT,
    NON_DIFFERENTIABLE_GETTER,
    NOT_IN_GRAPH,
    REASON_TITLES,
    REQUIRES_GRAD_FALSE,
    SCENE_NOT_DIFFERENTIABLE,
    BreakInfo,
    DoctorReport,
    InputInfo,
    ParamInfo,
    ReadInfo,
    SceneInfo,
    _steps_text,
)

STEP_NODE = "StepNodeBackward"
READ_NODE = "ReadNodeBackward"

# The strict-mode break kinds each reason covers, in order of precedence.
_EVENT_REASONS = (
    (BreakKind.SCENE_NOT_DIFFERENTIABLE, SCENE_NOT_DIFFERENTIABLE),
    (BreakKind.CUT_AT_DETACH, CUT_AT_DETACH),
    (BreakKind.CUT_AT_CONVERSION, CUT_AT_DETACH),
    (BreakKind.DROPPED_INPUT, DROPPED_INPUT),
)
_READ_BREAKS = (BreakKind.READ_UNDER_NO_GRAD, BreakKind.NON_DIFFERENTIABLE_GETTER)


# ------------------------------------------------------------------------------------------------------------------
# Graph walks
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Walk:
    nodes: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    reads: list = field(default_factory=list)
    leaves: dict[int, torch.Tensor] = field(default_factory=dict)


def _walk(roots: Iterable, stop_at_sim: bool = False) -> _Walk:
    """Every node upstream of `roots`; with `stop_at_sim`, the walk does not enter the simulation (steps, reads)."""
    walk, seen, stack = _Walk(), set(), [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        walk.nodes.append(node)  # keeps every node alive, so ids stay unique during the walk
        name = type(node).__name__
        if name == STEP_NODE:
            walk.steps.append(node)
            if stop_at_sim:
                continue
        elif name == READ_NODE:
            walk.reads.append(node)
            if stop_at_sim:
                continue
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            walk.leaves[id(variable)] = variable
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return walk


def _read_step(node) -> int:
    """The step whose state a read node holds: the step node of its token, or 0 before the first step."""
    upstream = node.next_functions[0][0] if node.next_functions else None
    return upstream.step if type(upstream).__name__ == STEP_NODE else 0


def _sources_leaves(sources: Iterable) -> set[int]:
    """The leaf tensors (by id) the sources of a break come from."""
    leaves: set[int] = set()
    nodes = []
    for source in sources:
        if isinstance(source, torch.Tensor):
            leaves.add(id(source))
        else:
            nodes.append(source)
    if nodes:
        leaves |= set(_walk(nodes, stop_at_sim=True).leaves)
    return leaves


# ------------------------------------------------------------------------------------------------------------------
# Scenes and their rollouts
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Rollout:
    sim: Any
    epoch: int
    step_nodes: list  # of the whole rollout, when its token is still the current one
    leaves: set[int]  # leaves reached by the rollout's tracked inputs
    tape_calls: dict[int, str]  # id(tensor) -> "Entity.method(arg)", from the entities' tapes
    reached: bool  # whether the loss passes through one of its steps or reads


def _tape_calls(sim) -> dict[int, str]:
    """Which call taped each tracked tensor, from the entities' tapes (works on stock Genesis too)."""
    calls: dict[int, str] = {}
    for entity in sim.entities:
        buffers = list(getattr(entity, "_tgt_buffer", ()))
        for ckpt in getattr(entity, "_ckpt", {}).values():
            buffers += ckpt.get("_tgt_buffer", ())
        for taped in buffers:
            for key, kwargs in taped.items():
                for arg, value in kwargs.items():
                    if isinstance(value, torch.Tensor) and value.requires_grad:
                        calls[id(value)] = f"{type(entity).__name__}.{key[0]}({arg})"
    return calls


def _live_sims() -> list:
    sims = []
    for scene_ref in list(getattr(gs, "_scene_registry", ())):
        scene = scene_ref()
        sim = getattr(scene, "_sim", None) if scene is not None else None
        if sim is not None and getattr(scene, "is_built", False):
            sims.append(sim)
    return sims


def _rollouts(loss_walk: _Walk) -> list[_Rollout]:
    sims: dict[int, tuple[Any, int | None]] = {}
    for node in loss_walk.steps:
        sim = node.sim()
        if sim is not None:
            sims[id(sim)] = (sim, node.epoch)
    for sim in _live_sims():
        sims.setdefault(id(sim), (sim, None))
    rollouts = []
    for sim, epoch in sims.values():
        reached = epoch is not None
        epoch = sim._grad_epoch if epoch is None else epoch
        step_nodes, leaves = [], set()
        token = sim._grad_token
        if sim.requires_grad and token is not None and epoch == sim._grad_epoch and token.grad_fn is not None:
            rollout_walk = _walk([token.grad_fn])
            step_nodes = [n for n in rollout_walk.steps if len(n.next_functions) > 1]
            leaves = set(_walk([fn for n in step_nodes for fn, _ in n.next_functions[1:]]).leaves)
        rollouts.append(_Rollout(sim, epoch, step_nodes, leaves, _tape_calls(sim), reached))
    return rollouts


# ------------------------------------------------------------------------------------------------------------------
# Doctor
# ------------------------------------------------------------------------------------------------------------------


def _named_params(params_or_module, loss_walk: _Walk) -> list[tuple[str, torch.Tensor]]:
    if params_or_module is None:
        return [(f"leaf[{i}]", t) for i, t in enumerate(loss_walk.leaves.values()) if t.requires_grad]
    if isinstance(params_or_module, torch.nn.Module):
        return list(params_or_module.named_parameters())
    if isinstance(params_or_module, torch.Tensor):
        return [("param", params_or_module)]
    if isinstance(params_or_module, Mapping):
        return [(str(k), v) for k, v in params_or_module.items()]
    return [(f"params[{i}]", p) for i, p in enumerate(params_or_module)]


def _group(items: list[tuple[int, tuple]]) -> list[tuple[list[int], tuple]]:
    """Group (step, key) pairs by key, ordered by their first step."""
    groups: dict[tuple, list[int]] = {}
    for step, key in items:
        groups.setdefault(key, []).append(step)
    return sorted(((sorted(set(steps)), key) for key, steps in groups.items()), key=lambda group: group[0])


def doctor(loss: torch.Tensor, params_or_module=None) -> DoctorReport:
    """
    Explain the gradient of `loss` through Genesis rollouts.

    Call it after the rollout that computed `loss`, before `scene.reset()` (the reset discards the rollout's tape).
    Calling it before or after `loss.backward()` gives the same report.

    Parameters
    ----------
    loss : torch.Tensor
        The loss (any tensor; usually a scalar).
    params_or_module : torch.nn.Module | Mapping[str, Tensor] | Iterable[Tensor] | Tensor, optional
        The parameters that should get a gradient. Defaults to every leaf tensor the loss reaches.

    Returns
    -------
    report : DoctorReport
        The steps and state reads the loss passes through, the control inputs of the rollout and whether they reach
        the loss, every parameter with its gradient status and the nearest reason it gets none, the breaks strict mode
        recorded, and a diagnosis. `print(report)` shows it as tables, `report.to_dict()` as plain data.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"doctor expects the loss tensor, got {type(loss).__name__}.")
    loss_walk = _walk([loss.grad_fn])
    named = _named_params(params_or_module, loss_walk)
    plugin = patching.is_patched()

    # The rollouts that concern this loss: the loss passes through them, the parameters drive them, or a break
    # recorded during them cut the parameters off. Other live scenes (an evaluation scene, a stale one) stay out.
    param_set = {id(p) for _, p in named}
    candidates = _rollouts(loss_walk)
    rollouts = []
    events: dict[int, breaks.BreakEvent] = {}
    loose: dict[int, breaks.BreakEvent] = {}  # breaks tied to no scene (gs.from_torch), cutting the parameters off
    event_leaves: dict[int, set[int]] = {}
    for rollout in candidates:
        if rollout.epoch == rollout.sim._grad_epoch:
            accuracy.report(rollout.sim, warn=False)
        rollout_events = breaks.events(rollout.sim, rollout.epoch)
        for event in rollout_events:
            if event.seq not in event_leaves:
                event_leaves[event.seq] = _sources_leaves(event.sources)
        cut = [e for e in rollout_events if event_leaves[e.seq] & param_set]
        if rollout.reached or rollout.leaves & param_set or any(e.sim is not None for e in cut):
            rollouts.append(rollout)
            events.update((e.seq, e) for e in rollout_events)
        else:
            loose.update((e.seq, e) for e in cut)
    if not rollouts:
        events = loose
    events = dict(sorted(events.items()))

    # Inputs of the rollouts: who gave them, which parameters feed them directly, whether the loss reaches them.
    loss_step_ids = {id(n) for n in loss_walk.steps}
    inputs_raw: list[tuple[int, tuple]] = []
    param_steps: dict[int, set[int]] = {}  # leaf -> steps whose inputs it feeds directly and that reach the loss
    input_steps: dict[int, set[int]] = {}  # leaf -> steps whose inputs it feeds directly
    for rollout in rollouts:
        step_nodes = rollout.step_nodes or [n for n in loss_walk.steps if n.sim() is rollout.sim]
        records = breaks.input_records(rollout.sim, rollout.epoch)
        for node in sorted(step_nodes, key=lambda n: n.step):
            for (fn, _), tensor_id in zip(node.next_functions[1:], node.inputs_id, strict=False):
                record = records.get(tensor_id)
                call = (
                    f"{record.call}({record.arg})"
                    if record is not None
                    else rollout.tape_calls.get(tensor_id, "tracked input")
                )
                location = record.location.short() if record is not None else None
                upstream = _walk([fn], stop_at_sim=True)
                feeding = [name for name, p in named if id(p) in upstream.leaves]
                reaches = id(node) in loss_step_ids
                for i in upstream.leaves:
                    input_steps.setdefault(i, set()).add(node.step)
                    if reaches:
                        param_steps.setdefault(i, set()).add(node.step)
                key = (call, location, reaches, tuple(feeding), bool(upstream.reads))
                inputs_raw.append((node.step, key))
    inputs = [InputInfo(steps, *key[:3], list(key[3]), key[4]) for steps, key in _group(inputs_raw)]

    # Reads of the loss graph, with the getters strict mode saw serve them.
    reads_raw = []
    for node in loss_walk.reads:
        getters = [f"{name} ({location.short()})" for name, location in breaks.read_getters(node)]
        reads_raw.append((_read_step(node), tuple(dict.fromkeys(getters))))
    reads = [ReadInfo(steps, list(key)) for steps, key in _group(reads_raw)]
    loss_read_steps = sorted({_read_step(n) for n in loss_walk.reads})

    read_events = [e for e in events.values() if e.kind in _READ_BREAKS]

    params = []
    for name, tensor in named:
        info = ParamInfo(name, tuple(tensor.shape), id(tensor) in loss_walk.leaves)
        info.steps = sorted(param_steps.get(id(tensor), ()))
        if not info.gets_gradient:
            info.reason_kind, info.reason = _reason(
                tensor, events, event_leaves, rollouts, candidates, input_steps, loss_read_steps, plugin
            )
            if info.reason_kind == NON_DIFFERENTIABLE_GETTER and read_events:
                where = dict.fromkeys(f"'{e.call.split('.')[-1]}' at {e.location}" for e in read_events)
                info.reason += " Reads outside the graph during the rollout: " + "; ".join(where) + "."
        params.append(info)

    scenes = [
        SceneInfo(
            requires_grad=bool(r.sim.requires_grad),
            steps=int(r.sim.cur_step_global),
            epoch=r.epoch,
            tracked_input_steps=sorted({n.step for n in r.step_nodes}),
            reached_by_loss=r.reached,
        )
        for r in rollouts
    ]
    report = DoctorReport(
        loss=_loss_info(loss),
        plugin_installed=plugin,
        strict_mode=breaks.get_mode(),
        scenes=scenes,
        steps=sorted({n.step for n in loss_walk.steps}),
        reads=reads,
        inputs=inputs,
        params=params,
        breaks=_group_breaks(events.values(), rollouts),
        findings=[],
    )
    report.findings = _findings(report, loss, rollouts, plugin)
    return report


def _group_breaks(events: Iterable[breaks.BreakEvent], rollouts: list[_Rollout]) -> list[BreakInfo]:
    """One entry per (kind, call, line), with the steps it happened at."""
    groups: dict[tuple, BreakInfo] = {}
    for event in events:
        step = event.step
        if step is None:  # tied to no scene: the step the rollout was at
            step = next(
                (s for ref, epoch, s in event.rollouts for r in rollouts if ref() is r.sim and epoch == r.epoch), None
            )
        key = (event.kind, event.call, str(event.location))
        info = groups.get(key)
        if info is None:
            info = groups[key] = BreakInfo(
                event.kind, event.call, str(event.location), event.location.source, [], 0, event.cause, event.fix
            )
        info.count += 1
        if step is not None:
            info.steps.append(step)
    return list(groups.values())


def _loss_info(loss: torch.Tensor) -> dict[str, Any]:
    value = loss.detach()
    return {
        "value": value.item() if value.numel() == 1 else None,
        "shape": tuple(loss.shape),
        "requires_grad": loss.requires_grad,
        "grad_fn": type(loss.grad_fn).__name__ if loss.grad_fn is not None else None,
    }


def _reason(tensor, events, event_leaves, rollouts, live, input_steps, loss_read_steps, plugin) -> tuple[str, str]:
    """The nearest reason a parameter gets no gradient."""
    if not tensor.requires_grad:
        return REQUIRES_GRAD_FALSE, "The tensor has requires_grad=False: autograd does not track it."
    for kind, reason in _EVENT_REASONS:
        for seq, event in events.items():
            if event.kind == kind and id(tensor) in event_leaves[seq]:
                return reason, f"{event.call} at {event.location}: {event.cause} {event.fix}"
    for rollout in rollouts:
        if id(tensor) not in rollout.leaves:
            continue
        steps = sorted(input_steps.get(id(tensor), ())) or sorted(n.step for n in rollout.step_nodes)
        if rollout.reached and loss_read_steps and steps and steps[0] > max(loss_read_steps):
            return AFTER_LAST_READ, (
                f"It enters the simulation at steps {_steps_text(steps)}, after the last state the loss reads "
                f"(step {max(loss_read_steps)}): nothing the loss depends on happens after it."
            )
        if plugin:
            why = (
                "the loss was computed from state that left the graph (`.detach()`, `.item()`, `.tolist()`, "
                "`.numpy()`, or a getter called under `torch.no_grad()`)."
            )
        else:
            why = (
                "Genesis's getters returned tensors with requires_grad=False: genesis-grad-patch is not installed, "
                "and stock Genesis 1.4.5 reads get_qpos, get_dofs_position, get_pos, ... outside the autograd graph. "
                "`import genesis_grad_patch` (or call `genesis_grad_patch.install()`) before the rollout."
            )
        return NON_DIFFERENTIABLE_GETTER, (
            f"It drives the simulation at steps {_steps_text(steps)}, but the loss passes through none of the "
            f"rollout's state reads: {why}"
        )
    if live and not any(r.sim.requires_grad for r in live):
        return SCENE_NOT_DIFFERENTIABLE, (
            "No scene of this process is differentiable: build it with `gs.options.SimOptions(requires_grad=True)`."
        )
    return NOT_IN_GRAPH, "It is used neither by the loss nor by any input of the rollout."


def _findings(report: DoctorReport, loss, rollouts, plugin) -> list[str]:
    findings = []
    if not loss.requires_grad:
        findings.append(
            "The loss does not require grad: it is not part of any autograd graph, so `loss.backward()` raises and "
            "no parameter gets a gradient."
        )
    starved = report.starved
    for kind in dict.fromkeys(p.reason_kind for p in starved):
        names = [p.name for p in starved if p.reason_kind == kind]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        findings.append(f"{len(names)} parameter(s) get no gradient, {REASON_TITLES[kind]}: {shown}.")
    for info in report.breaks:
        if info.kind in _READ_BREAKS and not starved:
            findings.append(
                f"'{info.call.split('.')[-1]}' read outside the graph at {info.location} (steps "
                f"{_steps_text(info.steps)}): the gradient ignores every path through that read."
            )
    for rollout in rollouts:
        if not rollout.sim.requires_grad:
            continue
        if rollout.step_nodes and not rollout.reached:
            findings.append(
                f"The rollout took tracked inputs at steps {_steps_text(n.step for n in rollout.step_nodes)}, but the "
                "loss passes through none of its steps or state reads."
            )
        if not plugin:
            pd = sorted({c.split("(")[0] for c in rollout.tape_calls.values() if "control_dofs_position" in c})
            pd += sorted({c.split("(")[0] for c in rollout.tape_calls.values() if "control_dofs_velocity" in c})
            if pd:
                findings.append(
                    f"Stock Genesis 1.4.5 does not differentiate PD targets ({', '.join(dict.fromkeys(pd))}): its "
                    "backward raises 'Gradients with respect to PD control targets are not supported yet'. "
                    "genesis-grad-patch adds that gradient."
                )
    policy_inputs = [i for i in report.inputs if i.reaches_loss and i.params and len(i.steps) > 1]
    if policy_inputs and report.reads and not any(i.depends_on_state for i in report.inputs if i.reaches_loss):
        findings.append(
            "Open loop: no control input reaching the loss depends on a state read in the graph. If the policy "
            "observes the state (e.g. get_qpos), that observation was cut (no_grad, detach, .tolist()), and the "
            "gradient ignores how each action changes later observations."
        )
    if report.params and not starved and not report.breaks:
        steps = _steps_text(s for p in report.params for s in p.steps)
        findings.append(f"Healthy: every parameter reaches the loss through the control inputs of steps {steps}.")
    return findings


# ------------------------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------------------------
