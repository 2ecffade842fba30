#!/usr/bin/env bash
# LiteLLM's proxy in its own venv (.venv-litellm), so its dependencies never touch llmgate's.
# Exact pin: newer releases need a certifi this index lacks, and 1.107.x was reported compromised.
# Exit 0 when the proxy is installed (or already was); non-zero with a message when it cannot be.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-litellm
PIN='litellm[proxy]==1.106.2'
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/litellm" ] && [ -f "$VENV/.installed-1.106.2" ]; then
  exit 0
fi
echo "creating $VENV with $PIN (a minute or two)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/pip" install -q "$PIN"; then
  echo "could not install $PIN into $VENV: the LiteLLM comparison will be skipped" >&2
  exit 1
fi
touch "$VENV/.installed-1.106.2"
