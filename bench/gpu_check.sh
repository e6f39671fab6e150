#!/usr/bin/env bash
# gptmed GPU check: the gpu-marked tests and the GPU benchmarks, in < 5 minutes (one short GPU loan).
#
#   bash bench/gpu_check.sh            # results in $OUT (or ./gpu_check_results), logs on stdout
#   bash bench/gpu_check.sh quality    # only bench/quality.py's GPU mode (issue 19), < 5 minutes
#
# On a CUDA machine, in this order (later steps run only while the 285 s budget allows):
#   1. pytest -m gpu of gptmed-model: the Triton kernel vs math in bf16/fp16/fp32 (causal, key padding,
#      decode, segments: packed rows and flat rows), the model under the forced fused backend, the
#      automatic backend's routing; then gptmed-train's gpu tests
#   2. bench/attention.py --packed: the packed-pair table of issue 17 (today's sdpa + dense mask,
#      FlexAttention document mask, sdpa causal, ours causal, ours with segments, ours on a flat row;
#      wall and GPU ms) with the issue's two goals as ratios
#   3. bench/train.py --device cuda at T 512: gptmed-train vs the HF loop vs the bare compiled step
#   4. bench/attention.py --quick: the causal table (ours vs sdpa flash, D 64/128) and decode
#   5. medium-model bf16 torch.compile training step, our kernel forced, then sdpa
# Without CUDA it runs the CPU path: the kernel parity tests under the Triton interpreter and tiny
# smoke versions of the benchmarks (to prove the script works; those timings mean nothing).
# Needs: python with torch (+CUDA build on the GPU box), triton, pytest. No install step: the
# sources are put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$PWD/packages/gptmed-core/src:$PWD/packages/gptmed-model/src${PYTHONPATH:+:$PYTHONPATH}"
RES="${OUT:-$PWD/gpu_check_results}"
BUDGET=285  # seconds for the whole script
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
budget_step() {  # budget_step NAME MIN_S MAX_S CMD...: runs if MIN_S are left, for at most MAX_S
  local name="$1" need="$2" most="$3"; shift 3
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$need" ]; then
    echo "=== $name skipped: ${left}s left of ${BUDGET}s"
    return
  fi
  step "$name" "$((left < most ? left : most))" "$@"
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
all_src=""
for pkg in packages/*/src; do all_src="$PWD/$pkg:$all_src"; done
if [ "${1:-}" = "quality" ]; then
  # quality per minute on the GPU: gptmed pipeline (default flags, --time-budget 60s) vs the plain HF
  # loop for 60 s, scored on a seeded held-out split (data, tokenizer, export and scoring ~2.5 min);
  # needs onnxruntime, sentencepiece and transformers beside torch
  mode=(--smoke)  # without CUDA: the embedded sample, 15 s a side (proves the script works)
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && mode=(--device cuda --budget 60)
  step quality 290 env PYTHONPATH="$all_src$PYTHONPATH" "$PY" bench/quality.py "${mode[@]}" \
       --threads "$(nproc)" --out "$RES/quality.md"
  echo "results in $RES ($SECONDS s)"
  exit $status
fi
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # the tests compile ~60 kernel variants (and the segment kernels time 3 tile candidates once per
  # shape): in parallel where pytest-xdist is installed
  xdist=(); "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  step gpu_tests 100 "$PY" -m pytest packages/gptmed-model/tests -m gpu -q -p no:cacheprovider "${xdist[@]}"
  # gptmed-train's gpu tests (a checkpoint saved on the GPU loads where there is none; ~20 s)
  step train_gpu_tests 40 env PYTHONPATH="$PWD/packages/gptmed-train/src:$PYTHONPATH" \
       "$PY" -m pytest packages/gptmed-train/tests -m gpu -q -p no:cacheprovider
  budget_step packed_attention 45 90 "$PY" bench/attention.py --packed --json "$RES/packed_attention.json"
  # 3. the trainer: gptmed-train (eager, default flags) vs the plain HF loop vs the bare compiled step,
  #    medium, batch 32, bf16, T 512 (~85 s on an H100 / H200, estimated; data ~25 s unless
  #    $GPTMED_BENCH_CACHE holds it). MedQuAD must be inside the checkout (shared/datasets/medquad/),
  #    ../shared stays behind. The whole table (T 2048, --compile): python bench/train.py --device cuda
  train_paths="$PWD/packages/gptmed-train/src:$PWD/packages/gptmed-tokenizer/src:$PWD/packages/gptmed-data/src"
  budget_step trainer_bench 60 120 env PYTHONPATH="$train_paths:$PYTHONPATH" "$PY" bench/train.py --device cuda \
       --seq-lens 512 --runs eager,hf,bare --time-limit 110 --json "$RES/trainer_bench.json" --out "$RES/trainer_bench.md"
  budget_step attention_bench 40 60 "$PY" bench/attention.py --quick --json "$RES/attention.json"
  for backend in fused sdpa; do  # fused forced: our kernel in every layer
    budget_step "train_medium_$backend" 45 70 "$PY" bench/train_step.py --device cuda --bf16 --compile --no-hf \
         --model-size medium --batch-size 32 --seq-len 512 --steps 10 --dropout 0.0 --attention "$backend" --json
  done
else
  echo "no CUDA: CPU path (interpreter parity tests, smoke benchmarks)"
  step kernel_tests_interpreter 240 env TRITON_INTERPRET=1 "$PY" -m pytest \
       packages/gptmed-model/tests/test_triton_kernel.py packages/gptmed-model/tests/test_triton_segments.py \
       -q -p no:cacheprovider
  step attention_bench 120 "$PY" bench/attention.py --smoke --json "$RES/attention.json"
  step train_tiny_cpu 60 "$PY" bench/train_step.py --no-hf --model-size tiny --batch-size 2 \
       --seq-len 64 --steps 2 --json
  # the trainer benchmark's GPU-mode code at toy size (tiny preset, the embedded sample; ~50 s)
  train_paths="$PWD/packages/gptmed-train/src:$PWD/packages/gptmed-tokenizer/src:$PWD/packages/gptmed-data/src"
  step trainer_bench_smoke 300 env PYTHONPATH="$train_paths:$PYTHONPATH" "$PY" bench/train.py --device cuda \
       --smoke --seq-lens 64 --json "$RES/trainer_bench_smoke.json"
fi
echo "results in $RES ($SECONDS s)"
exit $status
