#!/usr/bin/env bash
# Run the project's regression suite against Genesis with the upstream patches applied, instead of the plugin.
#
#   scripts/check_upstream_patch.sh [--patch-tests] [PYTEST_ARGS...]
#
# 1. Copies the installed Genesis into a git tree and applies patches/*.patch in order (scripts/make_upstream_tree.sh);
#    a patch that no longer applies stops the check with its name, git's reason, and exit status 1.
# 2. Runs `python -m pytest -q tests PYTEST_ARGS...` from the repository root with the patched tree first on PYTHONPATH
#    and GENESIS_GRAD_PATCH_DISABLE=1, so that `import genesis_grad_patch` patches nothing: every pattern of the suite
#    must then hold with the patched Genesis alone. Tests marked `plugin_only` are skipped in that mode (tests/conftest.py).
# 3. With --patch-tests, also runs the tests the patches add (tests/... in the tree), with minimal stand-ins for
#    Genesis's own tests/conftest.py and tests/utils (scripts/upstream_test_shim), which the wheel does not ship.
#
# Environment: PYTHON (default: .venv/bin/python), UPSTREAM_TREE (default: build/upstream-genesis; keep it stable, the
# Quadrants kernel cache is keyed by source path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
TREE="${UPSTREAM_TREE:-$ROOT/build/upstream-genesis}"

patch_tests=0
if [ "${1:-}" = "--patch-tests" ]; then
    patch_tests=1
    shift
fi

# Two checks sharing a tree would rebuild it under each other's feet: the second one waits for the first.
mkdir -p "$(dirname "$TREE")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TREE.lock"
    if ! flock -n 9; then
        echo "check-upstream: waiting for another check using $TREE ..." >&2
        flock 9
    fi
fi

if ! "$ROOT/scripts/make_upstream_tree.sh" "$TREE"; then
    echo "check-upstream: FAILED, the patches do not apply (see above)." >&2
    exit 1
fi

export GENESIS_GRAD_PATCH_DISABLE=1
export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"

# The suite must run against the patched copy, with the plugin inert: check both before spending time on it.
"$PYTHON" -W ignore - "$TREE" <<'EOF'
import os
import sys

import genesis
import genesis_grad_patch

tree = os.path.realpath(sys.argv[1])
if not os.path.realpath(genesis.__file__).startswith(tree + os.sep):
    sys.exit(f"check-upstream: imported Genesis from {genesis.__file__}, not from the patched tree {tree}.")
if genesis_grad_patch.is_installed():
    sys.exit("check-upstream: the plugin patched Genesis although GENESIS_GRAD_PATCH_DISABLE=1.")
print(f"check-upstream: Genesis from {os.path.dirname(genesis.__file__)}, plugin disabled")
EOF

status=0
(cd "$ROOT" && "$PYTHON" -m pytest -q tests "$@") || status=$?

if [ "$patch_tests" = 1 ]; then
    mapfile -t added_tests < <(git -C "$TREE" diff --name-only --diff-filter=AM pristine HEAD -- ':(glob)tests/**/test_*.py')
    if [ ${#added_tests[@]} -gt 0 ]; then
        cp -r "$ROOT/scripts/upstream_test_shim/tests/." "$TREE/tests/"
        rm -f "$TREE/tests/README.md"
        (cd "$TREE" && "$PYTHON" -m pytest -q -p no:cacheprovider "${added_tests[@]}") || status=$?
    fi
fi

if [ "$status" -ne 0 ]; then
    echo "check-upstream: FAILED against the patched Genesis ($TREE)." >&2
else
    echo "check-upstream: passed against the patched Genesis ($TREE)."
fi
exit "$status"
