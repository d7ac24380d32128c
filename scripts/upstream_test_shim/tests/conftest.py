"""Minimal stand-in for Genesis's tests/conftest.py: one Genesis session per test, on CPU, at the marked precision."""

import pytest


def pytest_configure(config):
    for marker in ("required", "slow", "precision(precision)", "debug(debug)"):
        config.addinivalue_line("markers", marker)


@pytest.fixture(scope="session")
def backend():
    import genesis as gs

    return gs.cpu


@pytest.fixture
def precision(request, backend):
    mark = request.node.get_closest_marker("precision")
    return mark.args[0] if mark is not None else "64"


@pytest.fixture(scope="session")
def show_viewer():
    return False


@pytest.fixture(autouse=True)
def initialize_genesis(backend, precision):
    import genesis as gs

    gs.init(backend=backend, precision=precision, logging_level="warning", seed=0)
    yield
    gs.destroy()
