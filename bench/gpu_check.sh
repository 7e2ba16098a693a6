#!/usr/bin/env bash
# Every GPU check of issue 15 in ONE device call (about 7 minutes on an H200), after bench/gpu_kit.sh:
#   run(command="bash bench/gpu_check.sh", carry=[".gpukit"], timeout_s=590)
# Each step has its own time limit and the script goes on when one fails; every log lands in $OUT
# (summary.txt first). Steps:
#   1. environment (GPU, driver, torch, flash attention)
#   2. bf16 + SDPA pre-training step of EAT-base at batch 12 / 48 / 96 (the largest that fits): per-stage
#      breakdown, whole-step clips/s and model-FLOP utilisation (bench_pretrain_step.py); at batch 48 also
#      the top 40 operators of a step (torch.profiler, in the step's log)
#   3. the same with model.torch_compile=true at batch 48
#   4. side by side with the official code (.gpukit/EAT): plugin bf16 vs official fp16, as its recipes run
#      it (bench_official.py, 2 pairs, batch 12)
#   5. the whole fairseq-hydra-train loop (config/pretraining/base.yaml, fp16 as the recipe, 8 DataLoader
#      workers, generated clips) against the bare step at the same batch
# GPU_CHECK_DRY=1 runs the same steps on the CPU at the tiny preset with the local .venv (a rehearsal).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    PY=.venv/bin/python DEVICE=cpu PRESET=tiny BATCHES="2 4" BIG=4 DTYPE=bf16 LOOP_UPDATES=20 T=1
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpukit/whl/*.whl \
        || { echo "wheel install failed" | tee "$OUT/summary.txt"; exit 1; }
    export PYTHONPATH=/tmp/site
    PY=python3 DEVICE=cuda PRESET=base BATCHES="12 48 96" BIG=48 DTYPE=bf16 LOOP_UPDATES=120 T=1
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, keep the lines that matter
    local name=$1 limit=$2; shift 2
    say "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -E "whole step|  step |clips/s|pretrain \(|TFLOP|Error|error:|Traceback|out of memory|ratio" "$OUT/$name.log" \
        | grep -v -e "^WARNING" -e "'_name': None" | tail -12 | tee -a "$OUT/summary.txt"
    say "   rc $rc, $((SECONDS - start)) s"
}

say "== environment"
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchaudio, fairseq; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__,
'fairseq', fairseq.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(),
'flash sdp', torch.backends.cuda.flash_sdp_enabled())"; } 2>&1 | tee -a "$OUT/summary.txt"

for batch in $BATCHES; do
    step "step_${DTYPE}_b$batch" 120 $PY bench/bench_pretrain_step.py --preset $PRESET --device $DEVICE \
        --dtype $DTYPE --batch "$batch" --steps 3 --plain-steps 5 $([ "$batch" = "$BIG" ] && echo --profile 40)
done
step "step_${DTYPE}_b${BIG}_compile" 200 $PY bench/bench_pretrain_step.py --preset $PRESET --device $DEVICE \
    --dtype $DTYPE --batch $BIG --steps 3 --plain-steps 5 --compile

if [ -d .gpukit/EAT ]; then
    step official 240 $PY bench/bench_official.py --official .gpukit/EAT --preset $PRESET --device $DEVICE \
        --dtype $DTYPE --official-dtype fp16 --workloads pretrain --pairs 2 --steps 5 --warmup 2 \
        --batch 12 --optimizer own --json "$OUT/official.json"
else
    say "== official: skipped (no .gpukit/EAT: bash bench/gpu_kit.sh /path/to/EAT)"
fi

# the whole loop: generated 2-s clips (padded to the recipe's 10 s), fp16 as the recipe, no checkpoints
DATA=/tmp/gpu_check_data
rm -rf "$DATA" /tmp/gpu_check_run
$PY scripts/make_demo_data.py --layout folders --out "$DATA/sounds" --clips-per-class-per-fold 8 > "$OUT/data.log" 2>&1
$PY scripts/prepare_custom.py --folders "$DATA/sounds" --out "$DATA/prepared" >> "$OUT/data.log" 2>&1
if [ "$DEVICE" = cuda ]; then LOOP_CFG="base" LOOP_EXTRA="common.fp16=true"; LOOP_BATCH=12
else LOOP_CFG="tiny" LOOP_EXTRA="common.cpu=true"; LOOP_BATCH=2; fi
step loop 240 $PY -m fairseq_cli.hydra_train --config-dir config/pretraining --config-name $LOOP_CFG \
    common.user_dir="$PWD/eat_plugin" task.data="$DATA/prepared" checkpoint.save_dir=/tmp/gpu_check_run \
    hydra.run.dir=/tmp/gpu_check_run checkpoint.no_save=true dataset.disable_validation=true \
    optimization.max_update=$LOOP_UPDATES common.log_interval=20 common.tensorboard_logdir=null \
    dataset.batch_size=$LOOP_BATCH dataset.num_workers=$([ "$DEVICE" = cuda ] && echo 8 || echo 0) \
    distributed_training.distributed_world_size=1 distributed_training.ddp_backend=legacy_ddp $LOOP_EXTRA
$PY - "$OUT/loop.log" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(line[line.index("{"):]) for line in open(sys.argv[1]) if "[train_inner]" in line and "{" in line]
for r in rows[-3:]:  # each row: the last log_interval updates; the first ones include the warm-up
    print(f"   loop: up to update {r['num_updates']}: {float(r['ups']):.2f} updates/s x {r['bsz']} clips = "
          f"{float(r['ups']) * float(r['bsz']):.1f} clips/s (wall {r['wall']} s)")
PYEOF
step "bare_fp16_b$LOOP_BATCH" 120 $PY bench/bench_pretrain_step.py --preset $PRESET --device $DEVICE \
    --dtype fp16 --batch $LOOP_BATCH --steps 3 --plain-steps 10 --optimizer fairseq
say "== done in $SECONDS s"
