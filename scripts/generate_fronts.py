"""
Write `genesis_grad_patch/_impl/generated_fronts.py`: the fronts of the replaced Genesis methods (see
`genesis_grad_patch/signatures.py`), rendered from the installed Genesis's signatures.

Run after changing a front's body or the set of replaced methods, or for another Genesis release:

    python scripts/generate_fronts.py

The suite checks that the module is up to date (`tests/test_signatures.py`).
"""

import os
import sys
import warnings
from pathlib import Path

# The package installs itself at import, which needs the module being written.
os.environ["GENESIS_GRAD_PATCH_DISABLE"] = "1"
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import genesis_grad_patch
    from genesis_grad_patch._impl import signatures

if __name__ == "__main__":
    target = Path(genesis_grad_patch.__file__).parent / "_impl" / "generated_fronts.py"
    target.write_text(signatures.generate_module())
    print(f"wrote {target}", file=sys.stderr)
