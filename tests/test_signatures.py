"""
The fronts with the stock method's own signature (`genesis_grad_patch._impl.signatures`): same parameters, every argument
passed on as given, the value test skipping index arguments, frames counted as the plugin's.

Plain Python functions stand for Genesis's methods: no scene is built.
"""

import functools
import inspect
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis_grad_patch._impl import breaks, signatures

pytestmark = pytest.mark.plugin_only

_SHARED_DEFAULT = []


def _stock(self, value, dofs_idx=None, envs_idx=_SHARED_DEFAULT, /, *args, flag=False, scale=1.0, **kwargs):
    return {"self": self, "value": value, "dofs_idx": dofs_idx, "envs_idx": envs_idx, "args": args, "flag": flag}, {
        "scale": scale,
        **kwargs,
    }


def _method(self, value, dofs_idx=None, envs_idx=None, *, relative=False):
    return value, dofs_idx, envs_idx, relative


def _compiled(stock, body: str, namespace: dict):
    """A front of a plain function: the rendered source compiled here (Genesis's come from the generated module)."""
    source, defaults = signatures.render(stock, body)
    scope = {**signatures._NAMESPACE, **namespace, **defaults}
    exec(compile(source, signatures.__file__, "exec"), scope)
    return functools.wraps(stock)(scope[stock.__name__])


def _forward(stock):
    return _compiled(stock, "    return _gp_stock({self}, {call})\n", {"_gp_stock": stock})


def _params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn, follow_wrapped=False).parameters.values()]


@pytest.mark.parametrize("stock", [_stock, _method])
def test_front_has_the_stock_signature(stock):
    front = _forward(stock)
    assert _params(front) == _params(stock)
    assert front.__name__ == stock.__name__ and front.__doc__ == stock.__doc__ and front.__wrapped__ is stock
    # Defaults are the stock's own objects, not copies.
    assert inspect.signature(front, follow_wrapped=False).parameters["envs_idx"].default is (
        inspect.signature(stock).parameters["envs_idx"].default
    )


@settings(max_examples=30, deadline=None)
@given(
    n_positional=st.integers(1, 5),
    flag=st.none() | st.booleans(),
    scale=st.none() | st.floats(allow_nan=False),
    extra=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(), max_size=2),
)
def test_front_passes_every_argument_on(n_positional, flag, scale, extra):
    """However the call is made (positional, defaults, keyword-only, extra positional and keyword arguments), the stock
    function gets exactly the arguments it would get if called directly."""
    front = _forward(_stock)
    args = ("self", "value", [0, 1], [2], "x", "y")[: n_positional + 1]
    kwargs = dict(extra)
    if flag is not None:
        kwargs["flag"] = flag
    if scale is not None:
        kwargs["scale"] = scale
    assert front(*args, **kwargs) == _stock(*args, **kwargs)


def test_front_raises_as_a_python_function_does():
    front = _forward(_method)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'value'"):
        front("self")
    with pytest.raises(TypeError, match="unexpected keyword argument 'typo'"):
        front("self", 1.0, typo=1)


def _value_tests(stock):
    body = "    return {untracked}, {untracked_tensors}\n"
    return _compiled(stock, body, {})


def _with_packed(self, value, dofs_idx=None, *args, **kwargs):
    pass


def test_value_test_skips_index_arguments_and_sees_lists_and_packed_arguments():
    tracked = torch.ones(2, requires_grad=True)
    plain = torch.ones(2)
    test = _value_tests(_method)
    assert test("self", plain, [0, 1]) == (True, True)
    assert test("self", 0.5, relative=True) == (True, True)
    assert test("self", tracked) == (False, False)
    assert test("self", torch.nn.Parameter(torch.ones(2))) == (False, False)  # a tensor subclass
    assert test("self", value=tracked) == (False, False)
    # A list of tracked tensors is caught by the value test, not by the test of tensors themselves.
    assert test("self", [tracked, plain]) == (False, True)
    # Index arguments (integers by contract) are not looked at.
    assert test("self", plain, dofs_idx=tracked) == (True, True)
    packed = _value_tests(_with_packed)
    assert packed("self", plain, [0], plain, key=plain) == (True, True)
    assert packed("self", plain, [0], tracked) == (False, False)
    assert packed("self", plain, [0], key=tracked) == (False, False)


def test_front_frames_are_the_plugins():
    """A walk out to the user's frame (how strict mode points at the user's line) steps over the front."""

    def stock(self, value):
        return breaks.user_frame(sys._getframe(1))

    front = _forward(stock)
    assert front("self", 1.0) is sys._getframe(0)


def test_genesis_fronts_run_from_the_generated_module():
    """The fronts of Genesis's methods are the generated module's functions: a reader, a debugger and a traceback see
    real lines of a real file, in the plugin's directory."""
    from genesis.engine.entities.rigid_entity.rigid_entity import RigidEntity
    from genesis.engine.solvers.rigid.rigid_solver import RigidSolver

    from genesis_grad_patch._impl import generated_fronts

    for method in (RigidEntity.control_dofs_position, RigidSolver.get_qpos, RigidSolver.set_dofs_kp):
        assert method.__code__.co_filename == generated_fronts.__file__, method


def test_generated_fronts_are_up_to_date():
    """`_impl/generated_fronts.py` is what `scripts/generate_fronts.py` writes from the installed Genesis and the plugin's
    front bodies (a stale module also fails the install, naming the front)."""
    from pathlib import Path

    import genesis_grad_patch as ggp
    from genesis_grad_patch._impl import generated_fronts

    ggp.uninstall()
    try:
        text = signatures.generate_module()
    finally:
        ggp.install()
    assert text == Path(generated_fronts.__file__).read_text(), "run `python scripts/generate_fronts.py`"


def test_reserved_names_are_refused():
    def stock(self, _gp_value):
        pass

    with pytest.raises(RuntimeError, match="Cannot copy the signature"):
        _forward(stock)
