"""
Misuse of backward answered with a clearer error than Genesis's, raised where it can be explained: backward after
`scene.reset()`, backward twice on one rollout, backward after `scene.destroy()`.
"""

import sys
from collections.abc import Callable
from functools import wraps
from types import FrameType

from . import accuracy, breaks, detach_watch, patching, records
from .breaks import GradientBreakError, Location, user_frame
from .genesis_api import Simulator


def _backward_error(frame: FrameType | None, cause: str, fix: str) -> GradientBreakError:
    location = Location.of(user_frame(frame))
    code = f" `{location.source}`" if location.source else ""
    return GradientBreakError(f"Gradient break at {location}{code}: {cause} {fix}")


def _reverse_step(inner: Callable) -> Callable:
    @wraps(inner)
    def reverse_step(self: "Simulator", step: int, epoch: int):
        if not breaks.checking:
            return inner(self, step, epoch)
        frame = sys._getframe(1)
        record = records.of_sim(self)
        scene = self._scene
        if scene is None or getattr(scene, "_sim", None) is not self:
            # Stock Genesis runs the reverse pass anyway when something else keeps the simulator alive (an entity).
            raise _backward_error(
                frame,
                "backward was called on a rollout of a scene destroyed since (`scene.destroy()`): its simulation and "
                "tape are gone, so the gradient cannot be computed.",
                "Call `loss.backward()` before destroying the scene.",
            )
        if epoch != self._grad_epoch:
            reset_at = record.reset_at
            where = f" at {reset_at}" if reset_at is not None else ""
            raise _backward_error(
                frame,
                f"backward was called on a rollout of a scene that has been reset since (`scene.reset()`{where}): the "
                "reset discarded the rollout's tape.",
                "Call `loss.backward()` before `scene.reset()`.",
            )
        last = record.backward_at
        if not self._is_backward_ready or self.cur_step_global < step:
            where = f" (first backward at {last[1]})" if last is not None and last[0] == epoch else ""
            raise _backward_error(
                frame,
                f"backward was called twice on the same rollout{where}: the first backward pass rewound the "
                f"simulation and consumed the tape of the steps it went through, `retain_graph=True` does not keep it.",
                "Differentiate each rollout once: sum the losses first (`(loss_a + loss_b).backward()`) or use "
                "`torch.autograd.grad(loss, inputs)` once, or call `scene.reset()` and roll out again before the next "
                "backward.",
            )
        if last is None or last[0] != epoch:
            # Where the first backward of this rollout was called (read by the message above), once per rollout rather
            # than once per reversed step: finding the user's line walks the stack.
            record.backward_at = (epoch, Location.of(user_frame(frame)))
            # What makes this rollout's gradient approximate, said before the reverse pass uses it.
            accuracy.report(self, frame)
        return inner(self, step, epoch)

    return reverse_step


def reset_grad(self: "Simulator") -> None:
    """`Simulator.reset_grad` (at `scene.reset()`): the new rollout starts with a fresh record."""
    patching.original(Simulator, "reset_grad")(self)
    record = records.peek_sim(self)
    if record is not None:
        record.no_grad_steps.clear()
    if self._requires_grad:
        detach_watch.watch(self)
        if breaks.checking:
            records.of_sim(self).reset_at = Location.of(user_frame(sys._getframe(1)))


def install(strict: bool = False) -> None:
    if strict:
        patching.patch(Simulator, "reverse_step", _reverse_step(Simulator.reverse_step), group="strict")
    else:
        patching.patch(Simulator, "reset_grad", reset_grad)
