#!/usr/bin/env bash
# The one check to run on a GPU machine (about 8 minutes on one H200; ../shared/gpu/README.md
# says how to get the project there):   bash .gpu/run.sh bash bench/gpu_check.sh
#
#   1. every family's default pipeline, six families side by side on the one GPU
#      (bench/pipeline.py --jobs 6): per-stage seconds and metrics;
#   2. the GPU profile (params.gpu.yaml) of detection and stereo, side by side: per-stage seconds
#      and metrics, to compare with step 1's;
#   3. bench/throughput.py on the GPU profile for every family: loader, step and end-to-end
#      images/s, data-wait share and mean GPU utilisation while training.
# nvidia-smi logs utilisation every 0.25 s throughout (gpu.csv). Everything goes to $OUT
# (default: ./gpu-check-out): gpu_check.log, the JSON of each step, gpu.csv, nvidia-smi.txt. On a machine without CUDA (CHECK_CPU=1) it runs tiny versions
# of the same steps on the CPU, so the script itself can be tested anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1   # at most 8 files come back from the GPU machine: 7 here
PY=${PYTHON:-python3}
work=$(mktemp -d)   # pipelines' data, checkpoints and MLflow store: too big to bring back
export PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=sqlite:///$work/mlflow.db
status=0

if [ "${CHECK_CPU:-0}" = 1 ]; then
  # Tiny data and one epoch: checks the script's plumbing, not the numbers.
  tiny=(segmentation.synth.splits.train=64 segmentation.train.epochs=1 detection.synth.splits.train=64
        detection.train.epochs=1 instance_segmentation.synth.splits.train=32 instance_segmentation.train.epochs=1
        pose.synth.splits.train=64 pose.train.epochs=1 stereo.synth.splits.train=32 stereo.train.epochs=1
        selfsup.synth.splits.unlabelled=600 selfsup.train.epochs=1 selfsup.evaluate.transfer_steps=2)
  profile_tiny=(detection.synth.splits.train=320 detection.train.epochs=1 stereo.synth.splits.train=48
                stereo.train.epochs=1)
  steps=(--warmup 1 --steps 2)
else
  tiny=() profile_tiny=() steps=(--warmup 10 --steps 60)
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 250 >"$OUT/gpu.csv" &
  smi=$!
  trap 'kill $smi 2>/dev/null' EXIT
  nvidia-smi >"$OUT/nvidia-smi.txt"
fi

step() { echo; echo "=== $1 ($(date +%T))"; }

step "default pipeline, all six families at once"
start=$SECONDS
sets=(); [ ${#tiny[@]} -gt 0 ] && sets=(--set "${tiny[@]}")
$PY bench/pipeline.py --jobs 6 --workdir "$work/default" --json "$OUT/default.json" "${sets[@]}" || status=1
echo "default pipeline: $((SECONDS - start)) s wall"

step "GPU profile: detection and stereo"
start=$SECONDS
sets=(); [ ${#profile_tiny[@]} -gt 0 ] && sets=(--set "${profile_tiny[@]}")
$PY bench/pipeline.py --jobs 2 --tasks detection stereo --profile params.gpu.yaml --workdir "$work/profile" \
  --json "$OUT/profile.json" "${sets[@]}" || status=1
echo "GPU profile: $((SECONDS - start)) s wall"

quiet() { grep -v "^\(💡\|GPU available\|TPU available\|LOCAL_RANK\|Loading\|\`Trainer\)"; }
step "throughput: detection and stereo with the GPU profile, every family with the defaults"
$PY bench/throughput.py --params "$work/profile/params.yaml" --task detection --task stereo "${steps[@]}" \
  --out "$OUT/throughput-profile.json" 2>&1 | quiet
[ "${PIPESTATUS[0]}" = 0 ] || status=1
$PY bench/throughput.py --params "$work/default/params.yaml" --task all "${steps[@]}" \
  --out "$OUT/throughput-default.json" 2>&1 | quiet
[ "${PIPESTATUS[0]}" = 0 ] || status=1

rm -rf "$work"
echo; echo "gpu_check: exit $status; files in $OUT"
exit $status
