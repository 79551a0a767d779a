#!/usr/bin/env bash
# GPU smoke test: on a real NVIDIA host with registry access, bring up a small vLLM model and
# a llama.cpp CUDA model on chosen GPUs, run doctor, plan, up and verify, print what each
# said, and take the stack down again. Nothing in CI runs this (CI has no GPU): it is for the
# first team with a GPU host, or a future GPU test machine. See docs/CI.md, "On a real GPU".
#
#   scripts/gpu-smoke.sh                              # local engine, both models on GPU 0
#   VLLM_GPU=0 LLAMA_GPU=1 scripts/gpu-smoke.sh       # one GPU each (they start together)
#   HOST=ssh://ci@gpu-1 scripts/gpu-smoke.sh          # a remote engine
#
# Knobs (environment): VLLM_MODEL (an hf: repo, default Qwen/Qwen2.5-0.5B-Instruct; the host
# downloads it, so it needs Hugging Face access, and HF_TOKEN for gated repos), LLAMA_SOURCE
# (a GGUF file on the host: volume:NAME/FILE or host:/PATH; default the demo model's volume,
# which `llmstack init` fills), KEEP=1 leaves the stack running, LLMSTACK (the command).
set -euo pipefail

LLMSTACK=${LLMSTACK:-llmstack}
VLLM_GPU=${VLLM_GPU:-0}
LLAMA_GPU=${LLAMA_GPU:-0}
VLLM_MODEL=${VLLM_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
LLAMA_SOURCE=${LLAMA_SOURCE:-volume:llmstack-models/SmolLM2-135M-Instruct.Q4_1.gguf}
HOST_ARGS=()
[[ -n ${HOST:-} ]] && HOST_ARGS=(--host "$HOST")

work=$(mktemp -d "${TMPDIR:-/tmp}/llmstack-gpu-smoke.XXXXXX")
echo "== gpu-smoke in $work (vLLM on GPU $VLLM_GPU, llama.cpp CUDA on GPU $LLAMA_GPU)"
"$LLMSTACK" init "$work" >/dev/null

share=false
vllm_share=0.85
if [[ $VLLM_GPU == "$LLAMA_GPU" ]]; then
  # One GPU for both: vLLM takes its share first, llama.cpp starts once vLLM is ready.
  share=true
  vllm_share=0.5
fi
cat >"$work/stack.yaml" <<YAML
version: 1
project: gpu-smoke
listeners:
  local: {port: 4000, bind: 127.0.0.1}
images: registry
models:
  - name: vllm-small
    backend: vllm
    source: hf:$VLLM_MODEL
    gpus: [$VLLM_GPU]
    gpu_share: $share
    gpu_memory_utilization: $vllm_share
    context: 4096
  - name: llama-cuda
    backend: llamacpp
    source: $LLAMA_SOURCE
    gpus: [$LLAMA_GPU]
    gpu_share: $share
    context: 4096
YAML

status=0
step() {
  local name=$1
  shift
  echo
  echo "== $name: $LLMSTACK $*"
  if "$LLMSTACK" "$@"; then
    echo "== $name: ok"
  else
    local rc=$?
    echo "== $name: FAILED (exit $rc)"
    status=1
    return $rc
  fi
}

cleanup() {
  if [[ ${KEEP:-0} != 1 ]]; then
    echo
    echo "== down"
    "$LLMSTACK" down -C "$work" --volumes "${HOST_ARGS[@]}" || true
  else
    echo "== KEEP=1: the stack runs; take it down with: $LLMSTACK down -C $work --volumes"
  fi
}
trap cleanup EXIT

cd "$work"
step doctor doctor "${HOST_ARGS[@]}" || true   # its findings are printed either way
step plan plan "${HOST_ARGS[@]}" || true
step up up "${HOST_ARGS[@]}" || exit 1
step status status "${HOST_ARGS[@]}" || true
step verify verify "${HOST_ARGS[@]}" || true
if [[ -z ${HOST:-} ]]; then
  echo
  echo "== what the GPUs hold (nvidia-smi on this host)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
  echo
  echo "== container health (the llama.cpp image's own HEALTHCHECK must say healthy)"
  docker ps --filter label=llmstack.project=gpu-smoke --format '{{.Names}}\t{{.Status}}' || true
fi
echo
if [[ $status == 0 ]]; then echo "== gpu-smoke: PASSED"; else echo "== gpu-smoke: FAILED"; fi
exit $status
