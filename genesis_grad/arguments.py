"""
What every ``genesis-grad`` subcommand shares: the parser class, the ``Subcommand`` record each application module
lists its commands with (``COMMANDS``), and the argparse types of common flags.

argparse calls the types on each flag's string (and on string defaults): a bad value ends, before anything is built, in
"genesis-grad SUBCOMMAND: error: argument --flag: MESSAGE" and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Subcommand:
    """A ``genesis-grad`` subcommand: its name, help line, argument setup and handler (returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # The page of ``genesis-grad NAME --help``; by default the help line as a sentence.
    description: str | None = None


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line: the message, then where the usage is.

    argparse prints the whole usage block before the message; for a subcommand with many flags that buries the one
    line that matters. Subparsers inherit the class (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Seeds go to torch.manual_seed and torch.Generator.manual_seed; 32 bits is the range every common RNG accepts.
SEED_LIMIT = 2**32


def parse_number(text: str, kind: type[int] | type[float]) -> int | float:
    """An int or a finite float from a flag's text, or the argparse error saying why not."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = parse_number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = parse_number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text!r}")
    return value


def random_seed(text: str) -> int:
    """argparse type: a random seed, an integer in [0, 2**32)."""
    value = parse_number(text, int)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_LIMIT - 1}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = parse_number(text, float)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = parse_number(text, float)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text!r}")
    return value


def existing_file(text: str) -> str:
    """argparse type: the path of an existing regular file (its content is checked by whoever reads it)."""
    path = Path(text)
    if not text or not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a regular file: {text!r}")
    return text


def output_dir(text: str) -> Path:
    """argparse type: an output directory, created later; refused when empty, when it names an existing file, or when
    it could not be created (a file on the way, a folder not writable): at parse time, not after the scene is built."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a directory name")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"exists and is not a directory: {text!r}")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot be written: {str(ancestor)!r} is not writable")
    return path


def tensorboard_dir(text: str) -> Path:
    """argparse type: an output directory for TensorBoard event files; refused at once when TensorBoard is missing."""
    path = output_dir(text)
    # find_spec locates the package without importing it (importing TensorBoard takes seconds).
    if importlib.util.find_spec("tensorboard") is None:
        raise argparse.ArgumentTypeError("needs the tensorboard package: pip install tensorboard")
    return path


def identifier(text: str) -> str:
    """argparse type: a Python identifier (a function name)."""
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"not a Python function name: {text!r}")
    return text
