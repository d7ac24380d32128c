"""
``genesis-grad``: the applications built on ``genesis_grad_patch``, and their command line.

- ``steering``: an MLP steering controller trained end to end through the Genesis car physics;
- ``sysid``: system identification of a robot's parameters from a recorded trajectory;
- ``cli``: the ``genesis-grad`` command (``train | eval | demo | sysid | doctor | gradcheck``).

This package is separate from the plugin so that importing it (and ``genesis-grad --help``) neither imports Genesis
nor installs the patches: the modules that run physics import ``genesis_grad_patch`` themselves, when a command
needs them.
"""
