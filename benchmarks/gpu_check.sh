#!/usr/bin/env bash
# The prepared GPU check (issue 25), under 8 minutes on one H200:
#   1. training images/s, bf16 ViT-B/16 at 224 px, batch 64: ElaLoRA, our LoRA, PEFT LoRA, PEFT AdaLoRA
#   2. inference images/s of the same model, adapters merged and unmerged
#   3. one `elalora-vit train` run end to end on generated data (1,000 train / 2,000 test images,
#      384x288 JPEG, random-init ViT-B/16, 5 epochs, precision auto), twice: the first builds the
#      image cache, the second reads it; the wall times, and the share of each run's training
#      steps spent getting batches (`data_wait_share` in result.json, host time)
#   4. evaluation images/s from the cache against the lazy decoding path
#   5. the same run with --compile (torch.compile), at most 150 s
# Everything it prints goes to $OUT/gpu_check.log too, with JSON files and the train logs
# beside it (7 files); generated data, the image cache and run folders go to $WORK.
# A step that fails is reported and the next one runs.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/gpu_check.sh      # a CPU smoke run of the same steps (tiny sizes)
#
# It needs the project's dependencies, not the project installed: the checkout is put on
# PYTHONPATH and the CLI runs as `python -m elalora_vit.cli` (a lent GPU machine has torch,
# timm, peft and the rest but no package registry). PYTHON picks the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$PY - <<'PY'
import torch, timm, peft, accelerate
import elalora_vit
print("torch", torch.__version__, "timm", timm.__version__, "peft", peft.__version__, "accelerate",
      accelerate.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY

if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; MODEL=vit_tiny_patch16_224:32:8; TRAIN=48; TEST=64; EPOCHS=1; IMG=32
  printf 'model:\n  kwargs: {img_size: 32, patch_size: 8, depth: 2}\ndata:\n  image_size: 32\n' > "$WORK/tiny.yaml"
  KW="--config $WORK/tiny.yaml --model vit_tiny_patch16_224 --set optim.batch_size=16"
  PREC=fp32; INNER=1
else
  DEV=cuda; MODEL=vit_base_patch16_224:224:64; TRAIN=1000; TEST=2000; EPOCHS=5; IMG=224; KW=""
  PREC=bf16; INNER=10
fi
failed() { echo "!! step $1 FAILED (exit $2); going on"; }

echo "== 1. training step, $MODEL, $PREC"
$PY benchmarks/step_time.py --device $DEV --precision $PREC --models $MODEL --rounds 6 --inner $INNER \
    --variants elalora lora peft-lora peft-adalora --json "$OUT/step_time.json" || failed 1 $?

echo "== 2. inference, $MODEL"
$PY benchmarks/inference.py --device $DEV --models $MODEL --rounds 8 --inner $INNER --json "$OUT/inference.json" \
    || failed 2 $?

echo "== 3. train end to end on generated data, twice (cache build, then cache hit)"
DATA="$WORK/vtab-1k"
$PY - "$DATA" "$TRAIN" "$TEST" <<'PY' || failed 3 $?
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from data_pipeline import TASK, synthetic_images
from elalora_vit.data.folder import write_task_dir
root, train, test = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sources = {"train800": synthetic_images(train * 4 // 5, (384, 288), 0), "val200": synthetic_images(train // 5, (384, 288), 1),
           "test": synthetic_images(test, (384, 288), 2)}
write_task_dir(root / TASK, sources, image_suffix=".jpg", save_options={"format": "JPEG", "quality": 90}, progress=False)
print("wrote", root / TASK)
PY
train_run() {  # name, seconds allowed, extra flags
  local name=$1 limit=$2; shift 2
  local start end code=0
  start=$(date +%s.%N)
  timeout "$limit" $PY -m elalora_vit.cli train --task dtd --data-dir "$DATA" --no-pretrained --epochs $EPOCHS \
      --no-progress --output "$WORK/run-$name" --set data.cache_dir="$WORK/cache" $KW "$@" \
      > "$OUT/train-$name.log" 2>&1 || code=$?
  end=$(date +%s.%N)
  if [ "$code" != 0 ]; then failed "3/5 ($name run)" "$code"; tail -5 "$OUT/train-$name.log"; return 0; fi
  $PY - "$name" "$start" "$end" "$WORK/run-$name/result.json" <<'PY'
import json, sys
name, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
result = json.load(open(path))
print(f"  {name} run: {end - start:.1f} s wall ({result.get('wall_time_s')} s inside train), "
      f"top-1 {result['accuracy']:.2f}, precision {result.get('protocol', {}).get('precision')}, "
      f"{result.get('steps')} steps, skipped steps {result.get('skipped_steps')}, rounds {result.get('rounds')}")
share = result.get("data_wait_share")
print(f"  {name} run: waiting on data {'?' if share is None else f'{100 * share:.1f}%'} of the training steps' time")
PY
}
train_run first 240
train_run second 240
du -sh "$WORK/cache" || true

echo "== 4. evaluation from the cache against lazy decoding (CPU side of the loader)"
$PY benchmarks/image_cache.py --test $((TEST < 400 ? TEST : 400)) --image-size $IMG --json "$OUT/image_cache.json" \
    || failed 4 $?

echo "== 5. the second run again with --compile (at most 150 s)"
train_run compiled 150 --compile
echo "done: $OUT"
