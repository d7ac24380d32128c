"""
Genesis inside `torch.compile`: Dynamo runs Genesis, Quadrants and the plugin eagerly, and compiles the rest.

Dynamo traces every Python function a compiled function calls. Traced into Genesis, it reaches Quadrants's kernel
launches (pybind11 functions) and calls them with arguments it cannot reconstruct: `torch.compile` around a rollout
ended in "make_launch_context(): incompatible function arguments". Listed among Dynamo's skipped modules, each call
into these packages is a graph break instead: the call runs as written (its autograd nodes, the step nodes of a
differentiable rollout included, join the graph as usual) and the torch code between the calls (a policy, a loss) is
compiled. The gradient is the eager one; the simulation gains no speed from compilation, the policy may.

Dynamo has no public API for a skipped module; `torch._dynamo.trace_rules.add` is the function its own configuration
uses. Importing Dynamo costs ~1 s once per process, at install.
"""

_PACKAGES = ("genesis", "quadrants", "genesis_grad_patch")

# The directories this module added to Dynamo's skip list, removed again by `uninstall`.
_added: list[str] = []


def install() -> None:
    """Make Dynamo run Genesis, Quadrants and the plugin eagerly (a graph break at each call into them)."""
    from torch._dynamo import trace_rules

    before = set(trace_rules.SKIP_DIRS)
    for package in _PACKAGES:
        trace_rules.add(package)
    _added[:] = [path for path in trace_rules.SKIP_DIRS if path not in before]


def uninstall() -> None:
    """Take out what `install` added to Dynamo's skip list."""
    from torch._dynamo import trace_rules

    for path in _added:
        if path in trace_rules.SKIP_DIRS:
            trace_rules.SKIP_DIRS.remove(path)
    _added.clear()
    trace_rules._recompile_re()
