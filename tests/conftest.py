"""pytest's hooks for the suite: one Genesis runtime per process (CPU, float64), plugin-only tests skipped upstream."""

import genesis as gs
import pytest
from helpers import UPSTREAM_MODE


def pytest_configure(config):
    if not gs._initialized:
        gs.init(backend=gs.cpu, precision="64", logging_level="warning", seed=0)


def pytest_collection_modifyitems(config, items):
    if not UPSTREAM_MODE:
        return
    skip = pytest.mark.skip(reason="plugin-only feature: not part of the upstream patch")
    for item in items:
        if "plugin_only" in item.keywords:
            item.add_marker(skip)
