"""The plugin's machinery: private, no API. The public surface is `genesis_grad_patch` itself (see its docstring)."""
