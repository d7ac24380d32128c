#!/usr/bin/env bash
# Build a git work tree of the installed Genesis with the upstream patches applied, or export its commits as patches.
#
#   scripts/make_upstream_tree.sh [--pristine] [DEST]   copy the installed genesis/ into DEST (default
#                                                        build/upstream-genesis), commit it pristine (tag 'pristine'),
#                                                        then `git am` patches/*.patch on top (unless --pristine)
#   scripts/make_upstream_tree.sh --export [DEST]        rewrite patches/*.patch from the commits pristine..HEAD of DEST
#
# The tree holds `genesis/` at its root, like a Genesis checkout, so the patches apply to either (paths genesis/... and
# tests/...). `genesis/assets` (200 MB of meshes no patch touches) is a symlink to the installed copy. Put DEST first on
# PYTHONPATH to import the patched Genesis. The same DEST path keeps Quadrants' kernel cache warm across runs: its keys
# include the source file path.
#
# Environment: PYTHON (default: .venv/bin/python of this repo), the interpreter whose site-packages hold Genesis;
# PATCH_DIR (default: patches/ of this repo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATCH_DIR="${PATCH_DIR:-$ROOT/patches}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
EXPECTED_VERSION="1.4.5"

mode=apply
case "${1:-}" in
--pristine) mode=pristine; shift ;;
--export) mode=export; shift ;;
-h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
esac
DEST="${1:-$ROOT/build/upstream-genesis}"

# Fixed identities and dates: the same sources give the same commits, hence byte-identical exported patches.
export GIT_AUTHOR_NAME="genesis-grad-patch contributors" GIT_AUTHOR_EMAIL="genesis-grad-patch@users.noreply.github.com"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
export GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"
git_() { git -C "$DEST" -c core.autocrlf=false -c commit.gpgsign=false -c advice.detachedHead=false "$@"; }

if [ "$mode" = export ]; then
    if ! git_ rev-parse -q --verify pristine >/dev/null 2>&1; then
        echo "error: $DEST is not a tree made by this script (no 'pristine' tag)." >&2
        exit 1
    fi
    if [ -n "$(git_ status --porcelain --untracked-files=no)" ]; then
        echo "error: $DEST has uncommitted changes; commit them first (one commit per patch)." >&2
        exit 1
    fi
    rm -f "$PATCH_DIR"/[0-9][0-9][0-9][0-9]-*.patch
    git_ format-patch --quiet --keep-subject --zero-commit --no-signature -o "$PATCH_DIR" pristine..HEAD
    echo "exported $(git_ rev-list --count pristine..HEAD) patch(es) to $PATCH_DIR:"
    ls -1 "$PATCH_DIR"/[0-9][0-9][0-9][0-9]-*.patch
    exit 0
fi

# Where the interpreter imports Genesis from, without importing it (an import takes seconds and initializes nothing we
# need). PYTHONPATH is cleared so that a patched tree already on it is not taken for the installed copy.
read -r SRC VERSION < <(
    PYTHONPATH= "$PYTHON" - <<'EOF'
import importlib.metadata, importlib.util
spec = importlib.util.find_spec("genesis")
print(spec.submodule_search_locations[0], importlib.metadata.version("genesis-world"))
EOF
)
if [ "$VERSION" != "$EXPECTED_VERSION" ]; then
    echo "warning: installed genesis-world is $VERSION, the patches were written against $EXPECTED_VERSION." >&2
fi

rm -rf "$DEST"
mkdir -p "$DEST/genesis"
# Everything but the assets and the byte code, then the assets as a link.
(cd "$SRC" && tar --exclude=./assets --exclude=__pycache__ --exclude='*.pyc' -cf - .) | tar -C "$DEST/genesis" -xf -
ln -s "$SRC/assets" "$DEST/genesis/assets"

git_ init --quiet --initial-branch=main
cat >"$DEST/.git/info/exclude" <<'EOF'
__pycache__/
*.pyc
.pytest_cache/
/genesis/assets
# stand-ins for Genesis's own test helpers, copied by check_upstream_patch.sh --patch-tests
/tests/__init__.py
/tests/conftest.py
/tests/utils/
/tests/grad/__init__.py
EOF
git_ add --all
GIT_AUTHOR_DATE="$GIT_COMMITTER_DATE" git_ commit --quiet -m "genesis-world $VERSION, pristine (installed wheel, without genesis/assets)"
git_ tag pristine

if [ "$mode" = pristine ]; then
    echo "pristine Genesis $VERSION at $DEST"
    exit 0
fi

shopt -s nullglob
patches=("$PATCH_DIR"/[0-9][0-9][0-9][0-9]-*.patch)
if [ ${#patches[@]} -eq 0 ]; then
    echo "error: no patches in $PATCH_DIR." >&2
    exit 1
fi
for patch in "${patches[@]}"; do
    # --committer-date-is-author-date keeps the commit ids, hence an export, independent of the time of the run.
    if ! git_ am --quiet --keep-non-patch --committer-date-is-author-date "$patch" >/dev/null 2>"$DEST/.git/am-error.log"; then
        echo "error: $(basename "$patch") does not apply to the installed Genesis $VERSION ($SRC)." >&2
        sed 's/^/  /' "$DEST/.git/am-error.log" >&2
        echo "Genesis probably changed the code this patch edits: rebase the patches (see CONTRIBUTING.md," \
            "'The upstream patch'), or pin genesis-world==$EXPECTED_VERSION." >&2
        git_ am --abort >/dev/null 2>&1 || true
        exit 1
    fi
done
echo "patched Genesis $VERSION at $DEST: ${#patches[@]} patch(es) applied"
