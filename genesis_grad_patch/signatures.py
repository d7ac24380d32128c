"""
Replacements with the exact signature of the Genesis method they replace.

A replacement written `def replacement(self, *args, **kwargs)` packs its arguments into a tuple and a dict at every
call and unpacks them again into the stock method: about 200 ns a layer on the 2-core CPU machines (measured with
`timeit`), against about 25 ns for a function that takes the stock method's own parameters and passes them on. A
policy loop makes several control calls and reads per step, so the packing was most of the plugin's overhead on a
rollout. The common cases (a scene built without `requires_grad`, Genesis's own calls, a rollout that tracks nothing)
are therefore decided in a front with the stock method's signature, and only the other calls go on to the full
replacement (`replacements.py`), with the same arguments.

The front is generated from `inspect.signature(stock)`, as `dataclasses` generates `__init__`: the parameter names are
Genesis's own (checked to be identifiers), the defaults are passed by reference (never written into the source), and
the names the body uses start with `_gp_`, which no Genesis parameter does.
"""

import inspect
import linecache
import os
from collections.abc import Callable
from functools import wraps

import torch

from .input_checks import INDEX_ARGUMENTS, tracked_tensor, tracks

_NAMED = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_NAMESPACE = {"_gp_Tensor": torch.Tensor, "_gp_tracks": tracks, "_gp_tracked_tensor": tracked_tensor}


def _value_test(names: list[str], packed: list[inspect.Parameter], in_lists: bool) -> str:
    """
    A Python expression that is true when none of the value arguments `names` (and the `*args` / `**kwargs` in
    `packed`) tracks gradients: the inline form of `input_checks.tracked_check`, where a plain tensor costs an attribute
    read and anything else a call.
    """
    other = "_gp_tracks" if in_lists else "_gp_tracked_tensor"
    terms = [f"(not {n}.requires_grad if {n}.__class__ is _gp_Tensor else not {other}({n}))" for n in names]
    for p in packed:
        values = f"{p.name}.values()" if p.kind is inspect.Parameter.VAR_KEYWORD else p.name
        terms.append(f"not any(map({other}, {values}))")
    return " and ".join(terms) or "True"


# The fronts' code lives "in" the plugin's directory, so that the walks out to the user's frame (`breaks.user_frame`)
# step over them like over any frame of the plugin; their source is put in `linecache` for tracebacks.
_DIR = os.path.dirname(os.path.abspath(__file__))


def front(stock: Callable, body: str, namespace: dict) -> Callable:
    """
    A function with `stock`'s signature running `body`.

    `body` is the function's code, indented by four spaces, where `{self}` stands for the first parameter, `{call}` for
    the other arguments passed on by name or position (`stock`'s own order), `{untracked}` / `{untracked_tensors}` for
    an expression true when no value argument (index arguments skipped) tracks gradients, in lists too or as a tensor
    itself. `namespace` holds the objects the body uses (`_gp_` names). A function the front calls finds the front's
    caller two frames up.
    """
    params = list(inspect.signature(stock).parameters.values())
    if not params or any(p.name.startswith("_gp_") for p in params):
        raise RuntimeError(f"Cannot copy the signature of {stock.__qualname__}: {[p.name for p in params]}")
    kind = inspect.Parameter
    defaults, signature, call, keyword_only = {}, [params[0].name], [], False
    for i, p in enumerate(params[1:]):
        if p.kind is kind.VAR_POSITIONAL:
            signature.append(f"*{p.name}")
            call.append(f"*{p.name}")
            keyword_only = True
            continue
        if p.kind is kind.VAR_KEYWORD:
            signature.append(f"**{p.name}")
            call.append(f"**{p.name}")
            continue
        if p.kind is kind.KEYWORD_ONLY and not keyword_only:
            signature.append("*")
            keyword_only = True
        if p.default is kind.empty:
            signature.append(p.name)
        else:
            defaults[f"_gp_default_{i}"] = p.default
            signature.append(f"{p.name}=_gp_default_{i}")
        call.append(f"{p.name}={p.name}" if keyword_only else p.name)
    positional_only = [i for i, p in enumerate(params) if p.kind is kind.POSITIONAL_ONLY]
    if positional_only:
        signature.insert(positional_only[-1] + 1, "/")
    values = [p.name for p in params[1:] if p.name not in INDEX_ARGUMENTS and p.kind in _NAMED]
    packed = [p for p in params[1:] if p.kind not in _NAMED]
    code = body.format(
        self=params[0].name,
        call=", ".join(call),
        untracked=_value_test(values, packed, in_lists=True),
        untracked_tensors=_value_test(values, packed, in_lists=False),
    )
    name = stock.__name__
    source = f"def {name}({', '.join(signature)}):\n{code}"
    filename = os.path.join(_DIR, f"<front of {stock.__qualname__}>")
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    scope = {**_NAMESPACE, **namespace, **defaults}
    exec(compile(source, filename, "exec"), scope)  # noqa: S102 (source built above from the stock signature)
    return wraps(stock)(scope[name])
