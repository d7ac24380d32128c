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
the names the body uses start with `_gp_`, which no Genesis parameter does. The generated code is a real module,
`_impl/generated_fronts.py`, one factory per front, written by `scripts/generate_fronts.py` for the supported Genesis
release, so that a reader, a debugger and a static tool see the code that runs. `front` takes the factory from there
and checks that it was generated from the same source (a test checks that the module is up to date).
"""

import hashlib
import inspect
import re
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


def render(stock: Callable, body: str) -> tuple[str, dict]:
    """
    The source of a function with `stock`'s signature running `body`, and the defaults it refers to (`_gp_default_i`).

    `body` is the function's code, indented by four spaces, where `{self}` stands for the first parameter, `{call}` for
    the other arguments passed on by name or position (`stock`'s own order), `{untracked}` / `{untracked_tensors}` for
    an expression true when no value argument (index arguments skipped) tracks gradients, in lists too or as a tensor
    itself.
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
    return f"def {stock.__name__}({', '.join(signature)}):\n{code}", defaults


def factory_name(stock: Callable, kind: str) -> str:
    """The name of the factory of `stock`'s front of kind `kind` in the generated module."""
    return f"{stock.__qualname__.replace('.', '__')}__{kind}"


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def render_factory(stock: Callable, kind: str, source: str, scope: dict) -> str:
    """The generated module's factory of the front `source` (rendered by `render`): it binds the names the front uses
    (those of `scope` it mentions) from the namespace it is given, and returns the front."""
    names = sorted({name for name in re.findall(r"\b_gp_\w+", source) if name in scope})
    bindings = "".join(f"    {name} = _gp_names[{name!r}]\n" for name in names)
    inner = "".join(f"    {line}" if line.strip() else line for line in source.splitlines(keepends=True))
    return (
        f"def {factory_name(stock, kind)}(_gp_names):\n"
        f'    """{stock.__qualname__}, {kind} front (source {_digest(source)})."""\n'
        f"{bindings}\n{inner}\n    return {stock.__name__}\n"
    )


# While `generate_module` runs: the factories rendered by the install, in order (see `front`).
collected: list[str] | None = None

_HEADER = '''"""
Generated by `python scripts/generate_fronts.py` from the signatures of Genesis {version}: do not edit.

One factory per front (`genesis_grad_patch/_impl/signatures.py`): given the names its front uses, it returns the front, a
function with the stock method's own signature that decides the common cases and calls on otherwise.
"""
'''


def generate_module() -> str:
    """The text of `_impl/generated_fronts.py`: the factories of every front the install makes, core and strict. Installs
    the plugin and uninstalls it again: call it with the plugin uninstalled."""
    global collected
    import genesis_grad_patch

    from ..version import SUPPORTED_GENESIS_VERSION

    if genesis_grad_patch.is_installed():
        raise RuntimeError("generate_module() installs the plugin itself: uninstall it first.")
    collected = []
    try:
        genesis_grad_patch.install(strict=True)
        factories = list(collected)
    finally:
        genesis_grad_patch.uninstall()
        collected = None
    return _HEADER.format(version=SUPPORTED_GENESIS_VERSION) + "".join(f"\n\n{f}" for f in factories)


def front(stock: Callable, kind: str, body: str, namespace: dict) -> Callable:
    """
    The front of `stock` of kind `kind` (its body `body`, see `render`), from the generated module. `namespace` holds
    the objects the body uses (`_gp_` names). A function the front calls finds the front's caller two frames up.

    Raises if the module was generated from another body or another signature: run `python scripts/generate_fronts.py`.
    """
    from . import generated_fronts

    source, defaults = render(stock, body)
    scope = {**_NAMESPACE, **namespace, **defaults}
    if collected is not None:
        factory_source = render_factory(stock, kind, source, scope)
        collected.append(factory_source)
        compiled: dict = {}
        exec(compile(factory_source, "<generating fronts>", "exec"), compiled)  # noqa: S102 (the generator's run only)
        factory = compiled[factory_name(stock, kind)]
    else:
        factory = getattr(generated_fronts, factory_name(stock, kind), None)
        if factory is None or f"(source {_digest(source)})" not in (factory.__doc__ or ""):
            raise RuntimeError(
                f"The generated front of {stock.__qualname__} ({kind}) is missing or stale: regenerate "
                "genesis_grad_patch/_impl/generated_fronts.py with `python scripts/generate_fronts.py`."
            )
    return wraps(stock)(factory(scope))
