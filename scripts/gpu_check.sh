#!/usr/bin/env bash
# Verify the GPU path on any CUDA machine in a few minutes, and print one summary table.
#
#   scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check/<date>; PYTHON=... picks the interpreter
#
# Stages (each logged to OUT_DIR/logs/<stage>.log; a failing stage does not stop the others):
#   env         torch/CUDA versions, GPU name, bf16 support
#   smyrf_cuda  SMYRF on CUDA against CPU (fp32 values + gradients of q, k, v) and, with one cluster, against dense
#               attention in bf16; bf16 forward + backward at 4 rounds
#   smyrf_tests tests/test_smyrf.py (the library's own suite) on this machine
#   runtime     tests/test_runtime.py (CUDA auto-detection, autocast, peak memory)
#   attn_bench  benchmarks/attention.py --quick on CUDA in bf16 (G128@128, G256@256 shapes)
#   step_128    benchmarks/train_step.py at 128 in bf16: dense@64, dense@128, smyrf@128 (4 x 2048/512)
#   step_256    benchmarks/train_step.py at 256 in bf16: dense@128, smyrf@256 (4 x 2048/512)
#   train       python train.py on the demo config for 200 steps, runtime.kind=cuda, bf16
#   train_ddp   the same through torchrun on 2 GPUs with cross-replica BN (skipped on a 1-GPU machine)
# Exit status: 0 when every stage that ran passed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-gpu_check/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
batch="${BATCH:-8}"  # per-GPU batch of the step benchmarks
summary="$out/summary.tsv"
: > "$summary"
failed=0

# stage NAME NOTE_COMMAND -- COMMAND...: run COMMAND, log it, time it; NOTE_COMMAND prints a one-line note from the log.
stage() {
  local name="$1" note_cmd="$2"; shift 3
  local log="$out/logs/$name.log" start end rc note
  echo "== $name: $*" | tee "$log"
  start=$(date +%s)
  "$@" >>"$log" 2>&1
  rc=$?
  end=$(date +%s)
  note="$(bash -c "$note_cmd" < "$log" 2>/dev/null | tr '\n' ' ' | cut -c1-110)"
  if [ "$rc" -eq 0 ]; then status=ok; elif [ "$rc" -eq 77 ]; then status=skipped; else status="FAILED($rc)"; failed=1; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((end - start))" "$note" >> "$summary"
  tail -n +2 "$log" | tail -n 25
}

stage env "tail -n 1" -- "$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "CUDA is not available to torch"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} cuda {torch.version.cuda} | {torch.cuda.device_count()} x {p.name} "
      f"{p.total_memory / 2**30:.0f} GiB | bf16 {torch.cuda.is_bf16_supported()}")
EOF
[ "$(tail -n 1 "$summary" | cut -f2)" = ok ] || { column -t -s $'\t' "$summary"; exit 1; }

cat > "$out/smyrf_cuda.py" <<'EOF'
import torch
from smyrf import dense_attention, smyrf_attention


def run(device, dtype, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 4096, 12, generator=g), torch.randn(2, 1024, 12, generator=g)  # (B, Nq, d), (B, Nk, d)
    v = torch.randn(2, 1024, 48, generator=g)  # (B, Nk, dv)
    q, k, v = (t.to(device, dtype).requires_grad_() for t in (q, k, v))
    out = smyrf_attention(q, k, v, scale=1.0, generator=torch.Generator().manual_seed(seed), **kw)  # (B, Nq, dv)
    out.float().square().sum().backward()
    return [t.detach().float().cpu() for t in (out, q.grad, k.grad, v.grad)]


kw = dict(n_hashes=4, q_cluster_size=512, k_cluster_size=128)
cpu, gpu = run("cpu", torch.float32, 0, **kw), run("cuda", torch.float32, 0, **kw)
diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(gpu, cpu))
assert diff < 1e-3, f"fp32 CUDA vs CPU relative difference {diff:.2e}"
one = dict(n_hashes=1, q_cluster_size=4096, k_cluster_size=1024)  # one cluster: SMYRF is dense attention
g = torch.Generator().manual_seed(1)
q, k, v = (torch.randn(2, n, c, generator=g).cuda() for n, c in ((4096, 12), (1024, 12), (1024, 48)))
exact = dense_attention(q, k, v, scale=1.0)  # (B, Nq, dv)
approx = smyrf_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=1.0, **one).float()
err = float((approx - exact).abs().max() / exact.abs().max())
assert err < 3e-2, f"bf16 one-cluster SMYRF vs fp32 dense relative error {err:.2e}"
run("cuda", torch.bfloat16, 2, **kw)  # bf16 forward + backward at 4 rounds runs
print(f"smyrf on cuda: fp32 vs cpu rel diff {diff:.1e}; bf16 one-cluster vs dense rel err {err:.1e}")
EOF
stage smyrf_cuda "tail -n 1" -- "$PYTHON" "$out/smyrf_cuda.py"
stage smyrf_tests "grep -E 'passed|failed' | tail -n 1" -- "$PYTHON" -m pytest tests/test_smyrf.py -q -p no:cacheprovider

stage runtime "grep -E 'passed|failed' | tail -n 1" -- "$PYTHON" -m pytest tests/test_runtime.py -q -p no:cacheprovider

stage attn_bench "grep -iE 'smyrf' | head -n 2" -- "$PYTHON" benchmarks/attention.py --quick --device cuda --dtype bf16 \
  --out "$out/attention.json"

step_note="grep -E '^(dense|smyrf)' | awk '{print \$1\": \"\$2\" s, \"\$6\" GiB\"}'"  # case, median s, peak GiB
stage step_128 "$step_note" -- "$PYTHON" benchmarks/train_step.py --device cuda --precision bf16 --batch "$batch" \
  --steps 5 --rounds 1 --warmup 2 --config configs/celebahq128_smyrf.yaml --cases dense@64 dense@128 smyrf@128 \
  --out "$out/train_step_128.json"
stage step_256 "$step_note" -- "$PYTHON" benchmarks/train_step.py --device cuda --precision bf16 --batch "$batch" \
  --steps 5 --rounds 1 --warmup 2 --config configs/celebahq256_smyrf.yaml --ch 0 --cases dense@128 smyrf@256 \
  --out "$out/train_step_256.json"

train_args=(--config configs/demo.yaml name=gpu_check "out_dir=$out/runs" runtime.kind=cuda runtime.precision=bf16
  train.total_steps=200 fid.every=0 log.every=50)
stage train "grep -iE 'step' | tail -n 1" -- "$PYTHON" train.py "${train_args[@]}"

ngpu="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [ "$ngpu" -ge 2 ]; then
  stage train_ddp "grep -iE 'step' | tail -n 1" -- "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 \
    train.py "${train_args[@]}" name=gpu_check_ddp runtime.sync_bn=true
else
  printf 'train_ddp\tskipped\t0\tone GPU only\n' >> "$summary"
fi

echo
echo "GPU check summary ($out)"
{ printf 'stage\tstatus\tseconds\tnote\n'; cat "$summary"; } | column -t -s $'\t'
exit "$failed"
