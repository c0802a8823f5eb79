#!/usr/bin/env bash
# Verify the CUDA path on a bare GPU machine (PyTorch >= 2.11, no network) in under 8 minutes; print ONE table.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # on the GPU machine; default OUT_DIR: gpu_check/<UTC time>
#   bash scripts/gpu_check.sh --cpu [OUT_DIR]    # dry run of every stage here on CPU, tiny shapes (~1 min on 2 cores)
#
# Prepare once, where a package index is reachable (pytorch-fid is pure Python; the GPU machine lacks it):
#   python -m pip download pytorch-fid==0.3.0 --no-deps -d .gpu_wheels        # gitignored; carry it with the tree
# The script puts that wheel on PYTHONPATH (unzipped into a temp dir, no pip, no network) when pytorch_fid is not
# importable. The real FID weights (~91 MB) cannot travel: a randomly initialised pytorch-fid InceptionV3 is written
# on the spot and fid.weights_path points at it, which exercises the FID code path on the device, not the number.
#
# Environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_BUDGET (seconds for all stages, default 460:
# each stage's timeout is cut to what is left, so the whole run stays under 8 minutes); GPU_CHECK_ONLY (comma list of
# stages to run, e.g. env,train; default all); GPU_CHECK_KEEP=1 keeps the scratch dir (weights, demo data).
#
# Stages, in order (each logged to OUT_DIR/logs/<stage>.log; a failing stage does not stop the others):
#   env       torch/CUDA/cuDNN versions, GPU; where pytorch-fid came from
#   lazy_fid  smyrf, biggan.config, models, runtime, the training loop import with pytorch_fid blocked
#   fid       the random Inception weights file; pytorch-fid's InceptionV3 loaded from it, features on the device
#   smyrf     benchmarks/smyrf_cuda_check.py: every kernel vs CPU fp32 (values, gradients); bf16 worst per-row error
#             at logits ~3/14/30 against fp32 (target <= 1 % at 30); syncs inside SMYRF; fwd+bwd time and peak at
#             G-128@128 batch 32 and G-256@256 batch 8 vs every dense SDPA backend (flash, efficient, cudnn, math;
#             4-D, q/k padded), targets <= 1.0x / <= 0.5x of the best
#   step      benchmarks/trainer_step.py on configs/celebahq128_smyrf.yaml, batch 32, the trainer's real hot step:
#             img/s fp32 vs bf16, real input pipeline vs pre-staged, data.prefetch=2, channels_last; host syncs per
#             step after warm-up (set_sync_debug_mode, target 0); GPU busy share of a step (profiler, target >= 90 %)
#   train     configs/demo.yaml on the device in bf16 with FID on: 100 steps to a checkpoint, then a second invocation
#             resumes it to 200 (FID at both)
#   compile   the step stage's bf16 case with runtime.compile=true (last: compilation is the least predictable cost)
#   ddp       the demo through torchrun on 2 GPUs (skipped on a 1-GPU machine)
# Status per row: ok | FAILED | missed (a target not met: reported, not a failure) | skipped (with why) | TIMEOUT.
# Exit status 0 unless something FAILED or timed out.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
out="${1:-gpu_check/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out/logs" && out="$(cd "$out" && pwd)"
# Bulky scratch outside OUT_DIR (it may be a folder that is sent back): the random Inception file is as large as the
# real one (91 MB), demo faces are re-rendered in seconds, the unzipped wheel. Removed at exit unless GPU_CHECK_KEEP.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
[ -n "${GPU_CHECK_KEEP:-}" ] || trap 'rm -rf "$scratch"' EXIT
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
budget="${GPU_CHECK_BUDGET:-460}"
only=",${GPU_CHECK_ONLY:-all},"
rows="$out/rows.tsv" table="$out/table.tsv"
: > "$table"
failed=0 stage_ran=0
t0=$(date +%s)
helper=("$PYTHON" "$root/scripts/gpu_check_rows.py")

if [ "$cpu" = 1 ]; then
  device=cpu
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # a shared small CPU: one thread per process runs fastest
else
  device=cuda
fi

# pytorch-fid: the installed one, else the carried wheel unzipped into scratch/site (pure Python: no pip needed); the
# env stage says which, or that it is missing.
if ! "$PYTHON" -c "import pytorch_fid" 2>/dev/null; then
  wheel="$(ls "$root"/.gpu_wheels/pytorch_fid-*.whl 2>/dev/null | tail -n 1)"
  if [ -n "$wheel" ] && "$PYTHON" -m zipfile -e "$wheel" "$scratch/site" >/dev/null 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$scratch/site"
  fi
fi

wanted() { [ "$only" = ",all," ] || [[ "$only" == *",$1,"* ]]; }

# stage NAME TIMEOUT -- COMMAND...: run COMMAND under min(TIMEOUT, budget left), log it, time it. COMMAND (or the
# summary that follows it) appends rows to $rows; they become the stage's sub-rows in the table.
stage() {
  local name="$1" limit="$2"; shift 3
  local log="$out/logs/$name.log" start rc left status
  stage_ran=0
  wanted "$name" || return 0
  left=$((budget - ($(date +%s) - t0)))
  [ "$left" -lt "$limit" ] && limit="$left"
  : > "$rows"
  if [ "$limit" -lt 10 ]; then
    printf '%s\tskipped\t0\tout of time budget (%ss in all; GPU_CHECK_BUDGET)\n' "$name" "$budget" >> "$table"
    return 0
  fi
  stage_ran=1
  echo "== $name (limit ${limit}s): $*" | tee "$log"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  stage_rc=$rc stage_seconds=$(($(date +%s) - start)) stage_name=$name
  tail -n +2 "$log" | tail -n 6 | sed 's/^/   | /'
}

# finish [SUMMARY COMMAND...]: run the summary (rows from the stage's outputs), then put the stage in the table.
finish() {
  [ "$stage_ran" = 1 ] || return 0
  local rc="$stage_rc" srows status
  if [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ "$#" -gt 0 ]; then
    "$@" >>"$out/logs/$stage_name.log" 2>&1
    local src=$?
    [ "$rc" -eq 0 ] && rc=$src
  fi
  case "$rc" in
    0) status=ok ;;
    77) status=skipped ;;
    124|137) status="TIMEOUT"; failed=1 ;;
    *) status="FAILED($rc)"; failed=1 ;;
  esac
  srows=$(wc -l < "$rows")
  if [ "$srows" -eq 1 ]; then  # one row: on the stage's own line
    awk -F'\t' -v OFS='\t' -v n="$stage_name" -v st="$status" -v s="$stage_seconds" \
      '{print n, ($2 == "" ? st : $2), s, $1 ": " $3}' "$rows" >> "$table"
  else
    local note=""
    [ "$srows" -eq 0 ] && note="$(tail -n 1 "$out/logs/$stage_name.log" | cut -c1-150)"
    printf '%s\t%s\t%s\t%s\n' "$stage_name" "$status" "$stage_seconds" "$note" >> "$table"
    awk -F'\t' -v OFS='\t' '{print "  " $1, $2, "", $3}' "$rows" >> "$table"
  fi
}

# -- env, lazy_fid, fid ------------------------------------------------------------------------------------------------
stage env 30 -- "${helper[@]}" --rows "$rows" env --device "$device"
finish
stage lazy_fid 30 -- "${helper[@]}" --rows "$rows" lazy-fid
finish
weights="$scratch/random_inception.pth"
stage fid 60 -- "${helper[@]}" --rows "$rows" fid-weights "$weights" --device "$device"
finish

# -- smyrf: kernels, bf16 accuracy, syncs, attention time --------------------------------------------------------------
smyrf_args=(--out "$out/smyrf.json")
[ "$cpu" = 1 ] && smyrf_args+=(--device cpu --quick)
stage smyrf 150 -- "$PYTHON" benchmarks/smyrf_cuda_check.py "${smyrf_args[@]}"
finish "${helper[@]}" --rows "$rows" smyrf "$out/smyrf.json"

# -- step: the trainer's hot step at 128 -------------------------------------------------------------------------------
if [ "$cpu" = 1 ]; then  # the demo model at 32 px, batch 4: the same code paths, seconds on a CPU
  step_args=(--config configs/demo.yaml --device cpu --batch 4 --warmup 1 --steps 2 --sync-steps 1 --profile-steps 1
    --images 16)
else
  step_args=(--config configs/celebahq128_smyrf.yaml --device cuda --batch 32 --warmup 3 --steps 10 --sync-steps 3
    --profile-steps 3 --images 256)
fi
step_args+=(--data-dir "$scratch/datasets" --work "$scratch")
stage step 150 -- "$PYTHON" benchmarks/trainer_step.py "${step_args[@]}" --cases fp32 bf16 bf16+staged \
  bf16+prefetch bf16+channels_last --out "$out/step.json"
finish "${helper[@]}" --rows "$rows" steps "$out/step.json"

# -- train: 200 demo steps with FID, a checkpoint and a resume ---------------------------------------------------------
if [ "$cpu" = 1 ]; then
  half=3 fid_args=(fid.num_samples=8 fid.batch_size=8 fid.ref_features=16 data.synthetic_num_images=24 log.num_samples=4
    train.batch_size=4 log.attention_probe=false runtime.precision=fp32)
else
  half=100 fid_args=(runtime.precision=bf16)
fi
train_args=(--config configs/demo.yaml name=gpu_check "out_dir=$out/runs" "data.path=$scratch/datasets"
  "runtime.kind=$device" "fid.weights_path=$weights" "fid.every=$half" "train.ckpt_every=$half" "log.every=$half"
  "log.sample_every=$half" log.progress_bar=false "${fid_args[@]}")
{  # first invocation stops at the checkpoint; the same command with more steps must resume from it
  printf 'args=('; printf '%q ' "${train_args[@]}"; printf ')\n'
  printf 'cd %q\n' "$root"
  printf '%q train.py "${args[@]}" train.total_steps=%s > %q 2>&1 || exit $?\n' "$PYTHON" "$half" \
    "$out/logs/train_first.log"
  printf '%q train.py "${args[@]}" train.total_steps=%s > %q 2>&1\n' "$PYTHON" "$((2 * half))" \
    "$out/logs/train_second.log"
} > "$out/train_twice.sh"
stage train 150 -- bash "$out/train_twice.sh"
finish "${helper[@]}" --rows "$rows" train "$out/runs/gpu_check" --total $((2 * half)) \
  --logs "$out/logs/train_first.log" "$out/logs/train_second.log"

# -- compile: last, the least predictable cost -------------------------------------------------------------------------
compile_args=()  # the dry run traces with aot_eager: Inductor's first CPU compile of the demo takes ~280 s here
[ "$cpu" = 1 ] && compile_args=(--set runtime.compile_backend=aot_eager)
stage compile 180 -- "$PYTHON" benchmarks/trainer_step.py "${step_args[@]}" "${compile_args[@]}" --cases bf16+compile \
  --out "$out/compile.json"
finish "${helper[@]}" --rows "$rows" steps "$out/compile.json" "$out/step.json"

# -- ddp ---------------------------------------------------------------------------------------------------------------
ngpu=0
[ "$cpu" = 0 ] && ngpu="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [ "$ngpu" -ge 2 ]; then
  stage ddp 120 -- "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 train.py "${train_args[@]}" \
    name=gpu_check_ddp train.total_steps=50 runtime.sync_bn=true
  finish
elif wanted ddp; then
  printf 'ddp\tskipped\t0\t%s\n' "needs 2 GPUs, this machine has $ngpu" >> "$table"
fi

echo
echo "GPU check ($([ "$cpu" = 1 ] && echo "CPU dry run" || echo CUDA), $(($(date +%s) - t0)) s in all; logs in $out)"
"${helper[@]}" --rows /dev/null table "$table"
exit "$failed"
