"""
Errors about the files a user hands to the steering tools (reference CSVs, policy checkpoints).

Each message is one line naming the file and, where it applies, the row and the reason, so that the CLI can print it
as is (``genesis-grad: error: ...``) instead of a traceback. Both are ``ValueError`` subclasses: callers that caught
``ValueError`` before keep working.
"""

from __future__ import annotations


class InputFileError(ValueError):
    """A user-supplied file that cannot be used; ``str(error)`` is a single line meant for the user."""


class ReferenceFileError(InputFileError):
    """A reference-path CSV that cannot be read or describes no drivable path."""


class CheckpointError(InputFileError):
    """A policy checkpoint that is unreadable, unsafe to load, not a steering policy, or holds non-finite weights."""
