#!/usr/bin/env bash
# `make deps-latest`: run `make test-fast` on the newest versions pyproject.toml allows, in a throwaway copy of the
# checkout with its own venv, and print which packages differ from the committed uv.lock. Exit status: test-fast's.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mira-deps-latest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
copy="$work/mira-dagster"
# the tracked files and the untracked ones git does not ignore, as they are in the working tree
mkdir -p "$copy"
(cd "$root" && git ls-files -z --cached --others --exclude-standard) | (cd "$root" && xargs -0 cp -p --parents -t "$copy")
(cd "$copy" && "$UV" lock --upgrade --quiet) || { echo "deps-latest: uv lock --upgrade failed" >&2; exit 1; }
echo "== packages whose newest allowed version differs from uv.lock"
python3 "$root/scripts/lock_diff.py" "$root/uv.lock" "$copy/uv.lock"
echo "== make test-fast on those versions (in $copy)"
make -C "$copy" test-fast UV_VENV="$(dirname "$(dirname "$UV")")"
status=$?
echo "== deps-latest: make test-fast exited $status on the newest allowed versions"
exit $status
