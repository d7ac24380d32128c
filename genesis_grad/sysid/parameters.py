"""
The model parameters system identification estimates, and how they are selected, stored and optimized.

A parameter is one *kind* (``kp``, ``kv``, ``damping``, ``armature``) of one dof. A selection is written
``KINDS@DOFS``: kinds comma-separated (or ``all``), dofs as local indices, ranges ``a-b`` (inclusive) or joint names,
comma-separated (or ``all``); several selections are joined with ``;``. Examples on the Franka Panda (9 dofs):

- ``kp@0-3``: 4 parameters;
- ``kp,kv,damping@0-3``: 12;
- ``all@0-6;kp@7,8``: 30 (every kind on the 7 arm joints, the gains of the two fingers).

The optimizers work on ``z = log(value / nominal)``: every parameter stays positive, starts at 0 (the model's own
value) and is bounded by ``|z| <= log(ratio)``, so that one step size suits gains of 4500 and dampings of 1 alike.
Parameter files are JSON, ``{"kp": {"joint1": 4500.0, ...}, "damping": {...}}``: the format of the ``params`` entry
of a fit report, so that identified parameters can be fed back as ``--params-true`` or as a new model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParameterError

# The plugin's parameter setters that take tensors tracking gradients, by kind: ``entity.set_dofs_<kind>``.
KINDS = ("kp", "kv", "damping", "armature")


@dataclass(frozen=True)
class ParamSpec:
    """
    An ordered list of (kind, local dof index) pairs: the coordinates of the optimized vector.

    Parameters
    ----------
    entries : tuple of (str, int)
        The selected parameters, grouped by kind in ``KINDS`` order, then by dof.
    dof_names : tuple of str
        The names of the robot's dofs (its 1-dof joints), indexed like ``dofs_idx_local``.
    """

    entries: tuple[tuple[str, int], ...]
    dof_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[str]:
        """``kind[joint]`` per coordinate, for tables and reports."""
        return [f"{kind}[{self.dof_names[dof]}]" for kind, dof in self.entries]

    def groups(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per kind present: (positions in the vector, local dof indices), the arguments of one setter call."""
        out: dict[str, tuple[list[int], list[int]]] = {}
        for i, (kind, dof) in enumerate(self.entries):
            pos, dofs = out.setdefault(kind, ([], []))
            pos.append(i)
            dofs.append(dof)
        return out

    def gather(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """The selected entries of full per-dof ``values`` (kind -> array of n_dofs), as a vector."""
        return np.array([values[kind][dof] for kind, dof in self.entries], dtype=np.float64)

    def scatter(self, vector: Sequence[float], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Full per-dof values: ``base`` with the selected entries replaced by ``vector``."""
        out = {kind: np.array(base[kind], dtype=np.float64) for kind in KINDS}
        for (kind, dof), value in zip(self.entries, vector, strict=True):
            out[kind][dof] = float(value)
        return out


def _parse_dofs(text: str, dof_names: Sequence[str], where: str) -> list[int]:
    if text.strip() == "all":
        return list(range(len(dof_names)))
    dofs: list[int] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            raise ParameterError(f"{where}: empty dof entry in {text!r}")
        if item in dof_names:
            dofs.append(dof_names.index(item))
            continue
        lo, sep, hi = item.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(item), int(item))
        except ValueError:
            raise ParameterError(
                f"{where}: {item!r} is neither a dof index, a range a-b nor a joint name ({', '.join(dof_names)})"
            ) from None
        if not 0 <= first <= last < len(dof_names):
            raise ParameterError(f"{where}: dof {item!r} out of range; the robot has dofs 0-{len(dof_names) - 1}")
        dofs.extend(range(first, last + 1))
    return dofs


def check_selection_syntax(text: str) -> str:
    """
    Check the syntax of a ``KINDS@DOFS[;KINDS@DOFS...]`` selection without a robot (the CLI does it at parse time).

    Raises
    ------
    ParameterError
        With a one-line reason: an unknown kind, a missing ``@``, an empty part.
    """
    if not text.strip():
        raise ParameterError("empty parameter selection; expected KINDS@DOFS, e.g. kp,kv@0-3")
    for part in text.split(";"):
        kinds, sep, dofs = part.partition("@")
        if not sep or not kinds.strip() or not dofs.strip():
            raise ParameterError(f"{part.strip()!r} is not KINDS@DOFS (e.g. kp,kv@0-3, all@0-6, damping@joint1)")
        for kind in (k.strip() for k in kinds.split(",")):
            if kind != "all" and kind not in KINDS:
                raise ParameterError(
                    f"unknown parameter kind {kind!r} in {part.strip()!r}; choose from {', '.join(KINDS)}"
                )
    return text


def parse_selection(text: str, dof_names: Sequence[str]) -> ParamSpec:
    """
    The ``ParamSpec`` of a selection such as ``"kp,kv@0-3;armature@joint5"`` on a robot with the given dofs.

    Raises
    ------
    ParameterError
        On a syntax error, an unknown joint, a dof out of range or a parameter selected twice.
    """
    check_selection_syntax(text)
    chosen: list[tuple[str, int]] = []
    for part in text.split(";"):
        kinds_text, _, dofs_text = part.partition("@")
        kinds = [k.strip() for k in kinds_text.split(",")]
        kinds = list(KINDS) if kinds == ["all"] else kinds
        for dof in _parse_dofs(dofs_text, dof_names, f"parameter selection {part.strip()!r}"):
            for kind in kinds:
                if (kind, dof) in chosen:
                    raise ParameterError(f"parameter {kind}[{dof_names[dof]}] selected twice in {text!r}")
                chosen.append((kind, dof))
    chosen.sort(key=lambda e: (KINDS.index(e[0]), e[1]))
    return ParamSpec(tuple(chosen), tuple(dof_names))


# ------------------------------------------------------------------ log-space coordinates


def to_z(values: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """Optimization coordinates of parameter values: ``log(values / nominal)``."""
    return np.log(np.asarray(values, dtype=np.float64) / nominal)


def from_z(z, nominal):
    """Parameter values of optimization coordinates (numpy arrays or torch tensors alike)."""
    if isinstance(z, np.ndarray):
        return nominal * np.exp(z)
    import torch

    return torch.as_tensor(nominal, dtype=z.dtype) * torch.exp(z)


def z_bound(ratio: float) -> float:
    """The bound on ``|z|`` for parameters allowed within ``[nominal / ratio, nominal * ratio]``."""
    if not ratio > 1.0:
        raise ParameterError(f"the bound ratio must be > 1, got {ratio}")
    return math.log(ratio)


# ------------------------------------------------------------------ parameter files


def params_to_json(values: Mapping[str, np.ndarray], dof_names: Sequence[str], kinds: Sequence[str] = KINDS) -> dict:
    """``{"kp": {"joint1": ...}, ...}`` for the given kinds of full per-dof values."""
    return {kind: {name: float(values[kind][i]) for i, name in enumerate(dof_names)} for kind in kinds}


def load_params(source: str | Path, dof_names: Sequence[str], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """
    Full per-dof parameter values from a JSON file (or a JSON string), missing entries taken from ``base``.

    The JSON maps kinds to ``{joint name: value}`` (or to a list with one value per dof). A fit report (with its
    ``params`` entry) is accepted too.

    Raises
    ------
    ParameterError
        One line: unreadable file, invalid JSON, unknown kind or joint, a value that is not a positive finite number.
    """
    text = str(source)
    where = "--params-true" if text.lstrip().startswith("{") else text
    if text.lstrip().startswith("{"):
        raw = text
    else:
        try:
            raw = Path(text).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(
                f"{where}: cannot read the parameter file: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        # Python's parser recurses once per nesting level: a few thousand levels exhaust the interpreter's stack.
        raise ParameterError(f"{where}: JSON nested too deeply to be a parameter file") from None
    if isinstance(data, dict) and isinstance(data.get("params"), dict) and "identified" in data["params"]:
        data = data["params"]["identified"]
    if not isinstance(data, dict):
        raise ParameterError(f"{where}: expected a JSON object {{kind: {{joint: value}}}}, got {type(data).__name__}")
    out = {kind: np.array(base[kind], dtype=np.float64) for kind in KINDS}
    for kind, entries in data.items():
        if kind not in KINDS:
            raise ParameterError(f"{where}: unknown parameter kind {kind!r}; choose from {', '.join(KINDS)}")
        if isinstance(entries, list):
            if len(entries) != len(dof_names):
                raise ParameterError(f"{where}: {kind} has {len(entries)} values, the robot has {len(dof_names)} dofs")
            entries = dict(zip(dof_names, entries, strict=True))
        if not isinstance(entries, dict):
            raise ParameterError(f"{where}: {kind} must map joint names to values")
        for name, value in entries.items():
            if name not in dof_names:
                raise ParameterError(f"{where}: {kind}: unknown joint {name!r}; the robot has {', '.join(dof_names)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ParameterError(f"{where}: {kind}[{name}] must be a positive finite number, got {value!r}")
            out[kind][dof_names.index(name)] = float(value)
    return out


def perturbed(base: Mapping[str, np.ndarray], spec: ParamSpec, spread: float, seed: int) -> dict[str, np.ndarray]:
    """``base`` with each selected parameter scaled by ``exp(u)``, ``u`` uniform in ``[-spread, spread]`` (a hidden
    ground truth for the generator)."""
    rng = np.random.default_rng(seed)
    factors = np.exp(rng.uniform(-spread, spread, size=len(spec)))
    return spec.scatter(spec.gather(base) * factors, base)
