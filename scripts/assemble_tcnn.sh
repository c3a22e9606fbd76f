#!/usr/bin/env bash
# Assemble the tiny-cuda-nn source tree that scripts/build_tcnn.sh builds: NVlabs/tiny-cuda-nn at the commit of
# ../shared/design/platform-notes.md §8 with its two submodules (cutlass, fmt) at the commits that commit pins, as
# files only (no git history) and only the paths the PyTorch bindings compile (~17 MB instead of ~600 MB of clones).
#
# Usage: scripts/assemble_tcnn.sh DEST
#   DEST must not exist or be empty. Needs git and tar, and network access to GitHub, unless TCNN_REPO,
#   CUTLASS_REPO and FMT_REPO name local clones or mirrors of the three repositories (bare or not).
# The tree is third-party code (BSD-3-Clause, BSD-3-Clause, MIT; licences are kept): keep it out of git
# (a git-ignored folder, e.g. docker/tcnn/src for docker/Dockerfile.distill), never commit it.
set -euo pipefail

TCNN_COMMIT=6ee3546bda615f51abe684ce9edefeb414689135
CUTLASS_COMMIT=82f5075946e2569589439d500733b700a3141374
FMT_COMMIT=fa2eb2d2e3ec5c21629f8ccd88ae05ec40b963fa
TCNN_REPO=${TCNN_REPO:-https://github.com/NVlabs/tiny-cuda-nn}
CUTLASS_REPO=${CUTLASS_REPO:-https://github.com/NVIDIA/cutlass}
FMT_REPO=${FMT_REPO:-https://github.com/fmtlib/fmt}

die() { echo "assemble_tcnn.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: scripts/assemble_tcnn.sh DEST"
DEST=$1
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then die "$DEST exists and is not empty"; fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# git_dir REPO COMMIT NAME: a git directory holding COMMIT. A local repository is read in place; a URL is fetched
# into a scratch bare repository, by commit (one shallow fetch; GitHub serves commits by id), else in full.
git_dir() {
    local repo=$1 commit=$2 name=$3 dir
    if [ -d "$repo" ]; then
        dir=$(git -C "$repo" rev-parse --absolute-git-dir) || die "$repo is not a git repository"
    else
        dir=$WORK/$name.git
        git init -q --bare "$dir"
        git --git-dir "$dir" fetch -q --depth 1 "$repo" "$commit" 2>/dev/null \
            || git --git-dir "$dir" fetch -q "$repo" '+refs/heads/*:refs/heads/*' \
            || die "cannot fetch $repo"
    fi
    git --git-dir "$dir" cat-file -e "$commit^{commit}" 2>/dev/null || die "$repo has no commit $commit"
    echo "$dir"
}

# export_paths GIT_DIR COMMIT TARGET PATH...: the files under PATH... at COMMIT, written below TARGET.
export_paths() {
    local dir=$1 commit=$2 target=$3
    shift 3
    mkdir -p "$target"
    # A partial mirror may lack large blobs outside PATH...; git archive then warns but writes what was asked for,
    # so its warnings are kept aside and shown only if a file below PATH... is missing.
    git --git-dir "$dir" archive --format=tar "$commit" -- "$@" 2>"$WORK/archive.log" | tar -x -C "$target"
    git --git-dir "$dir" ls-tree -r --name-only "$commit" -- "$@" | while IFS= read -r path; do
        [ -f "$target/$path" ] || { cat "$WORK/archive.log" >&2; die "$path of $commit was not exported"; }
    done
}

tcnn=$(git_dir "$TCNN_REPO" "$TCNN_COMMIT" tiny-cuda-nn)
# The submodule pins above must be the ones tiny-cuda-nn records at TCNN_COMMIT.
for sub in cutlass:$CUTLASS_COMMIT fmt:$FMT_COMMIT; do
    recorded=$(git --git-dir "$tcnn" ls-tree "$TCNN_COMMIT" "dependencies/${sub%%:*}" | awk '$2 == "commit" {print $3}')
    [ "$recorded" = "${sub#*:}" ] || die "tiny-cuda-nn@$TCNN_COMMIT pins dependencies/${sub%%:*} at '$recorded', not ${sub#*:}"
done
export_paths "$tcnn" "$TCNN_COMMIT" "$DEST" CMakeLists.txt LICENSE.txt README.md bindings/torch include src \
    dependencies/json dependencies/pcg32 dependencies/pybind11_json
cutlass=$(git_dir "$CUTLASS_REPO" "$CUTLASS_COMMIT" cutlass)
export_paths "$cutlass" "$CUTLASS_COMMIT" "$DEST/dependencies/cutlass" LICENSE.txt include tools/util/include
fmt=$(git_dir "$FMT_REPO" "$FMT_COMMIT" fmt)
export_paths "$fmt" "$FMT_COMMIT" "$DEST/dependencies/fmt" LICENSE.rst include src

cat > "$DEST/SOURCES.txt" <<SOURCES
Assembled by scripts/assemble_tcnn.sh (fourd); build with scripts/build_tcnn.sh.
NVlabs/tiny-cuda-nn $TCNN_COMMIT: CMakeLists.txt LICENSE.txt README.md bindings/torch include src dependencies/{json,pcg32,pybind11_json}
NVIDIA/cutlass $CUTLASS_COMMIT -> dependencies/cutlass: LICENSE.txt include tools/util/include
fmtlib/fmt $FMT_COMMIT -> dependencies/fmt: LICENSE.rst include src
SOURCES
echo "assembled tiny-cuda-nn@${TCNN_COMMIT:0:7} in $DEST ($(du -sh "$DEST" | cut -f1))"
