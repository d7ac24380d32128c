"""
The doctor's report: what `genesis_grad_patch.doctor` found about a loss, as data (`to_dict`) and as text (`str`).

The attribution (walking the loss's graph, matching it with strict mode's records) is in `doctor.py`; this module only
holds the report types, the reasons a parameter gets no gradient, and their rendering.
"""

import enum
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._impl.breaks import BreakKind


class Reason(str, enum.Enum):
    """Why a parameter gets no gradient, nearest first. The ones a strict-mode break explains share its kind's name."""

    REQUIRES_GRAD_FALSE = "requires_grad_false"
    SCENE_NOT_DIFFERENTIABLE = BreakKind.SCENE_NOT_DIFFERENTIABLE.value
    CUT_AT_DETACH = BreakKind.CUT_AT_DETACH.value
    NON_DIFFERENTIABLE_GETTER = BreakKind.NON_DIFFERENTIABLE_GETTER.value
    DROPPED_INPUT = BreakKind.DROPPED_INPUT.value
    AFTER_LAST_READ = "after_last_read"
    NOT_IN_GRAPH = "not_in_graph"

    def __str__(self) -> str:
        return self.value


REQUIRES_GRAD_FALSE = Reason.REQUIRES_GRAD_FALSE
SCENE_NOT_DIFFERENTIABLE = Reason.SCENE_NOT_DIFFERENTIABLE
CUT_AT_DETACH = Reason.CUT_AT_DETACH
NON_DIFFERENTIABLE_GETTER = Reason.NON_DIFFERENTIABLE_GETTER
DROPPED_INPUT = Reason.DROPPED_INPUT
AFTER_LAST_READ = Reason.AFTER_LAST_READ
NOT_IN_GRAPH = Reason.NOT_IN_GRAPH

REASON_TITLES = {
    REQUIRES_GRAD_FALSE: "requires_grad=False",
    SCENE_NOT_DIFFERENTIABLE: "scene not differentiable",
    CUT_AT_DETACH: "cut at a conversion/detach",
    NON_DIFFERENTIABLE_GETTER: "read from a non-differentiable getter",
    DROPPED_INPUT: "input of a non-differentiable setter",
    AFTER_LAST_READ: "acts after the last state read",
    NOT_IN_GRAPH: "not part of the graph at all",
}


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class InputInfo:
    """Tracked inputs the rollout took at a range of steps from the same call."""

    steps: list[int]
    call: str
    location: str | None
    reaches_loss: bool
    params: list[str]
    depends_on_state: bool


@dataclass
class ReadInfo:
    """State reads of the loss graph at a range of steps, with the getters that served them (when recorded)."""

    steps: list[int]
    getters: list[str]


@dataclass
class BreakInfo:
    """A gradient break strict mode recorded during the rollout, at one line (grouped over the steps it repeated at)."""

    kind: str
    call: str
    location: str
    source: str
    steps: list[int]
    count: int
    cause: str
    fix: str


@dataclass
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    gets_gradient: bool
    steps: list[int] = field(default_factory=list)
    reason_kind: str | None = None
    reason: str | None = None


@dataclass
class SceneInfo:
    requires_grad: bool
    steps: int
    epoch: int
    tracked_input_steps: list[int]
    reached_by_loss: bool


@dataclass
class DoctorReport:
    """What `doctor` found. `str(report)` is a readable report, `report.to_dict()` the same as plain data."""

    loss: dict[str, Any]
    plugin_installed: bool
    strict_mode: str
    scenes: list[SceneInfo]
    steps: list[int]
    reads: list[ReadInfo]
    inputs: list[InputInfo]
    params: list[ParamInfo]
    breaks: list[BreakInfo]
    findings: list[str]

    @property
    def healthy(self) -> bool:
        """Every parameter gets a gradient and no break was recorded during the rollout."""
        return all(p.gets_gradient for p in self.params) and not self.breaks

    @property
    def starved(self) -> list[ParamInfo]:
        """The parameters that get no gradient."""
        return [p for p in self.params if not p.gets_gradient]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        return data

    def __str__(self) -> str:
        return _format(self)


def _steps_text(steps: Iterable[int]) -> str:
    steps = sorted(set(steps))
    if not steps:
        return "none"
    runs, start, prev = [], steps[0], steps[0]
    for s in steps[1:] + [None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(runs)


def _steps_label(steps: list[int]) -> str:
    return f"{'step' if len(set(steps)) == 1 else 'steps'} {_steps_text(steps)}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = indent + "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    out = [line.rstrip(), indent + "  ".join("-" * w for w in widths)]
    out += [(indent + "  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths, strict=True))).rstrip() for row in rows]
    return out


def _short(location: str) -> str:
    """file.py:line from a full path:line."""
    return location.rsplit("/", 1)[-1]


def _format(report: DoctorReport) -> str:
    loss = report.loss
    value = loss["value"]
    value_text = f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)
    lines = [
        "Gradient doctor",
        "===============",
        f"loss: {value_text}  requires_grad={loss['requires_grad']}  grad_fn={loss['grad_fn']}",
        f"plugin: installed  strict mode: {report.strict_mode}"
        if report.plugin_installed
        else "plugin: NOT installed (stock Genesis, no strict mode)",
    ]
    for i, scene in enumerate(report.scenes):
        lines.append(
            f"scene {i}: {'differentiable' if scene.requires_grad else 'NOT differentiable'}, {scene.steps} steps, "
            + (
                f"tracked inputs at steps {_steps_text(scene.tracked_input_steps)}, "
                if scene.tracked_input_steps
                else "no tracked input, "
            )
            + f"{'reached' if scene.reached_by_loss else 'not reached'} by the loss"
        )
    lines += ["", "Graph behind the loss", f"  simulation steps: {_steps_text(report.steps)}"]
    if report.reads:
        lines.append("  state reads:")
        for read in report.reads:
            getters = ", ".join(read.getters) if read.getters else "(getter names not recorded)"
            lines.append(f"    {_steps_label(read.steps)}: {getters}")
    else:
        lines.append("  state reads: none")

    lines += ["", "Control inputs of the rollout"]
    if report.inputs:
        rows = [
            (
                _steps_text(i.steps),
                i.call,
                i.location or "-",
                "yes" if i.reaches_loss else "NO",
                ", ".join(i.params) or "-",
            )
            for i in report.inputs
        ]
        lines += _table(("steps", "call", "at", "reaches loss", "from parameters"), rows)
    else:
        lines.append("  none that tracks gradients")

    lines += ["", "Parameters"]
    if report.params:
        rows = [
            (
                p.name,
                "x".join(map(str, p.shape)) or "scalar",
                f"yes (steps {_steps_text(p.steps)})"
                if p.gets_gradient and p.steps
                else "yes"
                if p.gets_gradient
                else "NO",
                REASON_TITLES.get(p.reason_kind, "") if p.reason_kind else "",
            )
            for p in report.params
        ]
        lines += _table(("parameter", "shape", "gradient", "reason"), rows)
        reasons = dict.fromkeys(p.reason for p in report.params if p.reason)
        for reason in reasons:
            names = ", ".join(p.name for p in report.params if p.reason == reason)
            lines.append(f"  * {names}: {reason}")
    else:
        lines.append("  none given")

    if report.breaks:
        lines += ["", "Breaks recorded during the rollout"]
        rows = [(_steps_text(b.steps), str(b.count), b.kind, b.call, _short(b.location)) for b in report.breaks]
        lines += _table(("steps", "times", "kind", "call", "at"), rows)
        for b in report.breaks:
            code = f" `{b.source}`" if b.source else ""
            lines.append(f"  * {_short(b.location)}{code}: {b.cause} Fix: {b.fix}")

    lines += ["", "Diagnosis"]
    lines += [f"  - {finding}" for finding in report.findings] or ["  - nothing to report"]
    return "\n".join(lines)
