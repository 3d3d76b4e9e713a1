#!/usr/bin/env bash
# The committed proxy study on Fashion-MNIST, offline, on a 2-core CPU (see README.md beside this file).
# Usage: bash docs/proxy_study/run_study.sh [RUN_DIR]   (default runs/study-fmnist; rerun to resume)
# Each stage is logged with its wall time; every process uses one thread (the machine's cores were shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/study-fmnist}
mkdir -p "$RUN"
export OMP_NUM_THREADS=1
stage() {   # stage NAME COMMAND...: run, print the wall time
    local name=$1; shift
    local t0=$(date +%s)
    echo "== $name: $*"
    "$@"
    echo "== $name done in $(( $(date +%s) - t0 )) s"
}
t_start=$(date +%s)
[ -f "$RUN/supernet/checkpoint_epoch_1.pth.tar" ] || stage supernet \
    python3 train_supernet/train.py --dataset fashion-mnist --init_channels 8 --layers 5 --epochs 1 \
    --train_subset 16000 --valid_subset 1000 --learning_rate 0.05 --no-augment --valid_paths 5 --seed 0 \
    --save "$RUN/supernet" $( [ -f "$RUN/supernet/last.pth.tar" ] && echo --resume "$RUN/supernet" )
stage ground_truth \
    python3 -m torch.distributed.run --standalone --nproc_per_node=2 proxy_study/ground_truth.py \
    --dataset fashion-mnist --num_cells 24 --sample_seed 0 --seeds 2 --epochs 1 --init_channels 8 --layers 5 \
    --batch_size 32 --learning_rate 0.05 --train_subset 3000 --test_subset 2000 --no-auxiliary \
    --drop_path_prob 0 --cutout_length 0 --device cpu --report_freq 1000 --save "$RUN/gt"
stage scores \
    python3 proxy_study/scores.py --ground_truth "$RUN/gt/ground_truth.jsonl" \
    --model_path "$RUN/supernet/checkpoint_epoch_1.pth.tar" --init_model_path "$RUN/supernet/checkpoint_epoch_0.pth.tar" \
    --scoring_seeds 2 --max_train_img_size 256 --max_val_img_size 512 --device cpu --save "$RUN/scores"
stage report \
    python3 proxy_study/report.py --ground_truth "$RUN/gt/ground_truth.jsonl" --scores "$RUN/scores/scores.jsonl" \
    --out "$RUN/report" --force
echo "== study wall time $(( $(date +%s) - t_start )) s"
