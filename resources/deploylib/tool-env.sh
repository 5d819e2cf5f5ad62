#!/usr/bin/env bash
# The tool on a Jenkins agent that has only Python 3.11+ (the shared library's Tool stage
# writes this file and its two lock files into the workspace, then runs it):
#
#   tool-env.sh TOOL LOCK BUILD_LOCK      prints the virtualenv's bin directory
#
# TOOL is what to install: a pip requirement (deploylib==0.2.0; with --hash=sha256:… its
# wheel's bytes are pinned too), or the path of a wheel or of the tool's source tree.
# Its dependencies come from LOCK, every file checked against its sha256 (what builds a
# dependency published only as source from BUILD_LOCK, first), so nothing unpinned is
# installed beside it.
#
# The virtualenv is made afresh for each build, in the workspace (.deploylib/venv): a
# virtualenv kept between builds is code any other job on the agent (the same user) can
# change, and nothing installed can be checked against the lock afterwards — only the
# files pip installs from are (pip's cache of wheels is checked again, every file by its
# sha256, at each install). An agent that runs nothing else may keep them instead:
#
#   DEPLOY_TOOL_CACHE  keep one virtualenv per TOOL and locks here, made once and reused
#                      (a single-tenant agent's choice, and the test suite's)
#   DEPLOY_TOOL_BIN    a bin directory that has the tool already: used as it is
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: tool-env.sh TOOL LOCK BUILD_LOCK" >&2
  exit 2
fi
tool=$1 lock=$2 build=$3
if [ -n "${DEPLOY_TOOL_BIN:-}" ]; then
  if [ ! -x "$DEPLOY_TOOL_BIN/invoke" ]; then
    echo "tool-env: DEPLOY_TOOL_BIN=$DEPLOY_TOOL_BIN has no invoke; unset it to set the tool up" >&2
    exit 1
  fi
  echo "$DEPLOY_TOOL_BIN"
  exit 0
fi
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "tool-env: needs Python 3.11 or newer as $python (set PYTHON to another)" >&2
  exit 1
fi
for file in "$lock" "$build"; do
  [ -f "$file" ] || { echo "tool-env: $file is missing" >&2; exit 1; }
done
# A local wheel or tree is keyed by its content, wherever it lies: the same path rebuilt
# is another tool, the same wheel built again elsewhere the same one.
if [ -d "$tool" ]; then
  key=$( (cd "$tool" && find . -type f ! -path '*/.git/*' ! -path '*/.venv/*' \
          ! -path '*/.deploylib/*' -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -c1-16)
elif [ -e "$tool" ]; then
  key=$( (basename "$tool"; sha256sum < "$tool") | sha256sum | cut -c1-16)
else
  key=$(printf '%s\n' "$tool" | sha256sum | cut -c1-16)
fi
if [ -n "${DEPLOY_TOOL_CACHE:-}" ]; then
  cache=$DEPLOY_TOOL_CACHE
  venv="$cache/venv-$( (echo "$key"; cat "$build" "$lock") | sha256sum | cut -c1-16)"
else  # this build's own, made afresh
  cache=.deploylib
  venv="$PWD/.deploylib/venv"
fi
mkdir -p "$cache"
# One build at a time per cache (two jobs starting at once share it); a venv is ready
# once its stamp is written, last: one a build died in is made again.
exec 9>"$cache/.lock"
flock 9
[ -n "${DEPLOY_TOOL_CACHE:-}" ] || rm -rf "$venv"
if [ ! -e "$venv/.ready" ]; then
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >&2; then
    rm -rf "$venv"
    echo "tool-env: $python cannot make a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  fi
  # Hashed, and no build isolation (it would fetch setuptools unpinned): what builds a
  # dependency published only as source is installed first, from its own lock.
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  if ! "${pip[@]}" --require-hashes -r "$build" >&2 \
      || ! "${pip[@]}" --require-hashes --no-build-isolation -r "$lock" >&2; then
    rm -rf "$venv"
    echo "tool-env: installing $lock failed (above); a file whose sha256 is not in it is refused" >&2
    exit 1
  fi
  # The tool itself, alone: its dependencies are the lock's, nothing else.
  if [ -e "$tool" ]; then
    installed=("${pip[@]}" --no-deps --no-build-isolation "$tool")
  else
    spec="$venv/tool.txt"
    printf '%s\n' "$tool" > "$spec"
    hashed=()
    case "$tool" in *--hash=*) hashed=(--require-hashes) ;; esac
    installed=("${pip[@]}" --no-deps --no-build-isolation "${hashed[@]}" -r "$spec")
  fi
  if ! PYTHONWARNINGS=ignore "${installed[@]}" >&2; then
    rm -rf "$venv"
    echo "tool-env: installing the tool ($tool) failed (above)" >&2
    exit 1
  fi
  touch "$venv/.ready"
fi
echo "$venv/bin"
