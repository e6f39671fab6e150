#!/usr/bin/env bash
# gptmed-model GPU check: the gpu-marked parity tests and both GPU benchmarks, in < 5 minutes.
#
#   bash bench/gpu_check.sh            # results in $OUT (or ./gpu_check_results), logs on stdout
#
# On a CUDA machine: (1) pytest -m gpu of gptmed-model (Triton kernel vs math in bf16/fp16/fp32, model under the
# fused backend), (2) bench/attention.py (Triton vs SDPA flash, fwd and fwd+bwd, bf16, D=64/128,
# T=512..8192, plus decode), (3) medium-model bf16 torch.compile training step (fused, then sdpa).
# Without CUDA it runs the CPU path: the kernel parity tests under the Triton interpreter and
# tiny smoke versions of both benchmarks (to prove the script works; those timings mean nothing).
# Needs: python with torch (+CUDA build on the GPU box), triton, pytest. No install step: the
# sources are put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$PWD/packages/gptmed-core/src:$PWD/packages/gptmed-model/src${PYTHONPATH:+:$PYTHONPATH}"
RES="${OUT:-$PWD/gpu_check_results}"
mkdir -p "$RES"
status=0
step() {  # step NAME TIMEOUT_S CMD...
  local name="$1" limit="$2"; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$RES/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || status=1
}
"$PY" - <<'PY' | tee "$RES/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
PY
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # each step has its own limit; the sdpa comparison runs only if it can end by 285 s
  # the tests compile ~40 kernel variants: in parallel where pytest-xdist is installed (90 s -> ~30 s)
  xdist=(); "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  step gpu_tests 120 "$PY" -m pytest packages/gptmed-model/tests -m gpu -q -p no:cacheprovider "${xdist[@]}"
  # gptmed-train's gpu tests (a checkpoint saved on the GPU loads where there is none; ~20 s)
  step train_gpu_tests 60 env PYTHONPATH="$PWD/packages/gptmed-train/src:$PYTHONPATH" \
       "$PY" -m pytest packages/gptmed-train/tests -m gpu -q -p no:cacheprovider
  step attention_bench 80 "$PY" bench/attention.py --json "$RES/attention.json"
  step train_medium_fused 80 "$PY" bench/train_step.py --device cuda --bf16 --compile --no-hf \
       --model-size medium --batch-size 32 --seq-len 512 --steps 10 --dropout 0.0 --attention fused --json
  left=$((285 - SECONDS))
  if [ "$left" -gt 45 ]; then
    step train_medium_sdpa "$left" "$PY" bench/train_step.py --device cuda --bf16 --compile --no-hf \
         --model-size medium --batch-size 32 --seq-len 512 --steps 10 --dropout 0.0 --attention sdpa --json
  else
    echo "=== train_medium_sdpa skipped: ${left}s left"
  fi
else
  echo "no CUDA: CPU path (interpreter parity tests, smoke benchmarks)"
  step kernel_tests_interpreter 120 env TRITON_INTERPRET=1 "$PY" -m pytest \
       packages/gptmed-model/tests/test_triton_kernel.py -q -p no:cacheprovider
  step attention_bench 60 "$PY" bench/attention.py --json "$RES/attention.json"
  step train_tiny_cpu 60 "$PY" bench/train_step.py --no-hf --model-size tiny --batch-size 2 \
       --seq-len 64 --steps 2 --json
fi

# ==== trainer benchmark: bench/train.py --device cuda (issue 17; this block is bench/train.py's) =========
# gptmed-train (default flags, then --compile) vs a plain HF GPT2LMHeadModel loop vs the bare compiled
# step of bench/train_step.py; all of MedQuAD, medium, batch 32, bf16, T 512 and 2048; each run skips 10
# steps, times 20. Estimate on one H100 / H200 (not yet measured there): data ~25 s (SentencePiece
# training + two tokenizations; 0 s when $GPTMED_BENCH_CACHE already holds them), then per T 512:
# gptmed-train eager ~20 s, HF loop ~20 s, bare compiled step ~45 s, gptmed-train --compile ~75 s, and
# ~1.3x that at T 2048: ~6.5 minutes for all of it, more than this script's 5. So it gets what is left
# of GPU_CHECK_BUDGET_S (default 295 s from the script's start), runs eager / HF / bare at 512, then at
# 2048, the --compile runs last, and names each run that did not fit. All of it: run
# `GPU_CHECK_BUDGET_S=720 bash bench/gpu_check.sh`, or `python bench/train.py --device cuda` alone.
# MedQuAD must be inside the checkout (shared/datasets/medquad/train.qa.txt.gz): ../shared stays behind.
train_paths="$PWD/packages/gptmed-train/src:$PWD/packages/gptmed-tokenizer/src:$PWD/packages/gptmed-data/src"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  left=$((${GPU_CHECK_BUDGET_S:-295} - SECONDS))
  if [ "$left" -gt 60 ]; then
    step trainer_bench "$left" env PYTHONPATH="$train_paths:$PYTHONPATH" "$PY" bench/train.py --device cuda \
         --time-limit $((left - 10)) --json "$RES/trainer_bench.json" --out "$RES/trainer_bench.md"
  else
    echo "=== trainer_bench skipped: ${left}s left of GPU_CHECK_BUDGET_S (run: python bench/train.py --device cuda)"
  fi
else
  # the GPU mode's code at toy size on the CPU (tiny preset, embedded sample): ~50 s on 2 idle cores,
  # two processes that each import torch and, with torch.optim, torch._dynamo (~18 s each there)
  step trainer_bench_smoke 300 env PYTHONPATH="$train_paths:$PYTHONPATH" "$PY" bench/train.py --device cuda \
       --smoke --seq-lens 64 --json "$RES/trainer_bench_smoke.json"
fi
# ==== end of the trainer benchmark block ================================================================

echo "results in $RES"
exit $status
