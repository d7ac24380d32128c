"""
System identification of robot model parameters (kp, kv, damping, armature per joint) from a recorded trajectory,
by gradients through the Genesis rollout (the plugin's differentiable parameter setters) or gradient-free baselines on
the same simulator and loss (``genesis-grad sysid``).

Modules, one per concern:

- ``trajectory``: the trajectory CSV format (reader with one-line errors, writer) and the multi-sine excitation;
- ``parameters``: parameter selections (``KINDS@DOFS``), log-space coordinates and bounds, parameter files;
- ``sim``: the robot scene, multiple shooting windows (one per environment), rollouts, the recorder;
- ``generate``: ground-truth trajectories for ``sysid generate``;
- ``problem``: the loss (mean squared joint-position error) and its gradient, step counts;
- ``optimize``: Levenberg-Marquardt (exact gradient, sketched ``J^T J``), Adam, L-BFGS (torch.optim), CMA-ES (cma),
  Nelder-Mead (scipy) on that loss;
- ``uncertainty``: error bars and sensitivities from the Gauss-Newton ``J^T J``;
- ``report``: the JSON report, the parameter table and the fit plot;
- ``cli``: the ``genesis-grad sysid generate | fit`` subcommands.

Importing the package imports neither Genesis nor torch.
"""

from .errors import ParameterError, TrajectoryFileError
from .parameters import KINDS, ParamSpec, parse_selection
from .trajectory import Trajectory, load_trajectory_csv, save_trajectory_csv

__all__ = [
    "KINDS",
    "ParamSpec",
    "ParameterError",
    "Trajectory",
    "TrajectoryFileError",
    "load_trajectory_csv",
    "parse_selection",
    "save_trajectory_csv",
]
