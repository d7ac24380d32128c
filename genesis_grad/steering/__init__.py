"""
End-to-end differentiable steering: an MLP steering controller trained by back-propagation through the Genesis car
physics (wheel-ground contact included), with the PD steering targets and state getters made differentiable by
``genesis_grad_patch``.

Modules, one per concern:

- ``paths``: reference paths (generators, seeded random references and tracks, CSV reader) and ``TorchReference``,
  their batched torch form (nearest point, interpolation along the path);
- ``recipe``: the default training set and budget of ``genesis-grad train``;
- ``error_state``: ``compute_error_state_torch`` (e_lat, e_head, e_speed) against the nearest reference point;
- ``sim``: the car scene (batched), resets to sampled states, stepping, differentiable pose reading;
- ``policy``: the MLP;
- ``train``: gradient training through the physics (truncated windows, discounting, clipping);
- ``baselines``: Stanley (with curvature feed-forward) and pure pursuit, and the grid search of their gains;
- ``ppo``: the PPO baseline (``rsl-rl-lib``) through an environment wrapper around the batched sim;
- ``es``: evolution-strategies training of the same MLP (zeroth-order baseline);
- ``evaluate``: closed-loop metrics and plots.

The names below are re-exported lazily, so that importing the package neither imports Genesis nor initializes it.
"""

from importlib import import_module

_EXPORTS = {
    "ReferencePath": "paths",
    "load_reference_csv": "paths",
    "save_reference_csv": "paths",
    "make_path": "paths",
    "training_paths": "paths",
    "held_out_path": "paths",
    "random_reference": "paths",
    "random_track": "paths",
    "training_set": "recipe",
    "random_references": "paths",
    "compute_error_state_torch": "error_state",
    "nearest_reference_index": "error_state",
    "TorchReference": "paths",
    "SteeringSim": "sim",
    "ensure_genesis_init": "sim",
    "SteeringMLP": "policy",
    "load_policy": "policy",
    "TrainConfig": "train",
    "train_gradient": "train",
    "StanleyController": "baselines",
    "StanleyGains": "baselines",
    "tune_stanley": "baselines",
    "PurePursuitController": "baselines",
    "PurePursuitGains": "baselines",
    "tune_pure_pursuit": "baselines",
    "SteeringVecEnv": "ppo",
    "train_ppo": "ppo",
    "train_es": "es",
    "ESConfig": "es",
    "TrainingHistory": "train",
    "GradientHistory": "train",
    "run_paths": "evaluate",
    "evaluate_policy": "evaluate",
    "PathMetrics": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
