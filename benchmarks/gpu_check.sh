#!/usr/bin/env bash
# The prepared GPU check (issue 25), under 8 minutes on one H200:
#   1. training images/s, bf16 ViT-B/16 at 224 px, batch 64: ElaLoRA, our LoRA, PEFT LoRA, PEFT AdaLoRA
#   2. inference images/s of the same model, adapters merged and unmerged
#   3. one `elalora-vit train` run end to end on generated data (1,000 train / 2,000 test images,
#      384x288 JPEG, random-init ViT-B/16, 5 epochs, precision auto), twice: the first builds the
#      image cache, the second reads it; the wall times and the data-load time of each
#   4. evaluation images/s from the cache against the lazy decoding path
# Everything it prints goes to $OUT/gpu_check.log too (and JSON files beside it).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/gpu_check.sh      # a CPU smoke run of the same steps (tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
python -c "import elalora_vit" 2>/dev/null || pip install -q -e ".[dev]"
python - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY

if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; MODEL=vit_tiny_patch16_224:32:8; TRAIN=48; TEST=64; EPOCHS=1; IMG=32
  printf 'model:\n  kwargs: {img_size: 32, patch_size: 8, depth: 2}\ndata:\n  image_size: 32\n' > "$OUT/tiny.yaml"
  KW="--config $OUT/tiny.yaml --model vit_tiny_patch16_224"
  PREC=fp32
else
  DEV=cuda; MODEL=vit_base_patch16_224:224:64; TRAIN=1000; TEST=2000; EPOCHS=5; IMG=224; KW=""
  PREC=bf16
fi

echo "== 1. training step, $MODEL, $PREC"
python benchmarks/step_time.py --device $DEV --precision $PREC --models $MODEL \
    --variants elalora lora peft-lora peft-adalora --json "$OUT/step_time.json"

echo "== 2. inference, $MODEL"
python benchmarks/inference.py --device $DEV --models $MODEL --json "$OUT/inference.json"

echo "== 3. train end to end on generated data, twice (cache build, then cache hit)"
DATA="$OUT/vtab-1k"
python - "$DATA" "$TRAIN" "$TEST" <<'PY'
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
for attempt in first second; do
  start=$(date +%s.%N)
  elalora-vit train --task dtd --data-dir "$DATA" --no-pretrained --epochs $EPOCHS --no-progress \
      --output "$OUT/run-$attempt" --set data.cache_dir="$OUT/cache" $KW > "$OUT/train-$attempt.log" 2>&1
  end=$(date +%s.%N)
  python - "$attempt" "$start" "$end" "$OUT/run-$attempt/result.json" <<'PY'
import json, sys
attempt, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
result = json.load(open(path))
print(f"  {attempt} run: {end - start:.1f} s wall, top-1 {result['accuracy']:.2f}, "
      f"{result.get('steps')} steps, precision auto -> see train-{attempt}.log")
PY
done
du -sh "$OUT/cache"

echo "== 4. evaluation from the cache against lazy decoding (CPU side of the loader)"
python benchmarks/image_cache.py --test $((TEST < 400 ? TEST : 400)) --image-size $IMG --json "$OUT/image_cache.json"
echo "done: $OUT"
