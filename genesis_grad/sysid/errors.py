"""
Errors about what a user hands to the system-identification tools (trajectory CSVs, parameter files and selections).

Each message is one line naming the file (or flag value) and, where it applies, the row, the column and the reason, so
that the CLI prints it as is. They derive from the steering tools' ``InputFileError`` (a ``ValueError``), which
``genesis-grad`` already turns into one line on stderr and exit status 2.
"""

from __future__ import annotations

from genesis_grad.steering.errors import InputFileError


class TrajectoryFileError(InputFileError):
    """A trajectory CSV that cannot be read, is malformed, or does not fit the robot."""


class ParameterError(InputFileError):
    """A parameter file, parameter value or parameter selection (``KINDS@DOFS``) that cannot be used."""


class NotIdentifiable(InputFileError):
    """A trajectory along which some selected parameters do not change the simulated motion at all."""
