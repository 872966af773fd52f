#!/bin/bash
# Pixel-MIM pretraining recipe check: held-out train_detect against the image-blind prediction.
. /work/venv/bin/activate; cd /work/main
for lr in "$@"; do
  python examples/pretrain.py --objective pixel --dataroot /work/S/nuscenes --version v1.0-trainval --train-split train_track \
    --val-split train_detect --eval-steps 500 1000 --eval-samples 64 --model-config geomim-small --seed 0 \
    --max-steps 1500 --learning-rate $lr --warmup-steps 500 --batch-size 2 --num-workers 2 --sweeps 0 --full-jpeg-decode \
    --checkpointing-steps 500 --resume-from-checkpoint latest --logging-steps 25 --output-dir /work/diag/pixel_lr/lr$lr \
    > /work/diag/pixel_lr/lr$lr.log 2>&1
done
#!/bin/bash
# The study's pretraining recipe (lr 1e-3, 50 warmup steps) on the same held-out split, after the lr 2e-4 run.
while pgrep -f "pixel_lr/run.sh" > /dev/null; do sleep 20; done
. /work/venv/bin/activate; cd /work/main
python examples/pretrain.py --objective pixel --dataroot /work/S/nuscenes --version v1.0-trainval --train-split train_track \
  --val-split train_detect --eval-steps 500 1000 --eval-samples 64 --model-config geomim-small --seed 0 \
  --max-steps 1500 --learning-rate 1e-3 --warmup-steps 50 --batch-size 2 --num-workers 2 --sweeps 0 --full-jpeg-decode \
  --checkpointing-steps 500 --resume-from-checkpoint latest --logging-steps 25 --output-dir /work/diag/pixel_lr/study_recipe \
  > /work/diag/pixel_lr/study_recipe.log 2>&1
