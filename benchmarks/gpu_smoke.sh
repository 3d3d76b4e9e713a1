#!/usr/bin/env bash
# First run on a GPU: every stage on synthetic data (stage 3 also on a folder of generated JPEGs), one GPU,
# under 10 minutes. One line per step (PASS / FAIL / SKIP, its seconds), INFO lines with what was measured,
# then a summary line; the exit status is 1 when any step failed, else 0.
#
#   bash benchmarks/gpu_smoke.sh [WORKDIR]        # WORKDIR (default: a new temporary folder) keeps each step's log
#   SKIP_BENCH=1 bash benchmarks/gpu_smoke.sh     # without benchmarks/bench.py (its main run takes up to 5 minutes)
#   DEVICE=cpu bash benchmarks/gpu_smoke.sh       # dry run on a CPU with tiny sizes (tests/test_gpu_smoke.py)
#   STEPS='^(env|s1_)' bash benchmarks/gpu_smoke.sh   # only the steps whose name matches (later ones need earlier)
set -u
cd "$(dirname "$0")/.." || exit 1
DEVICE=${DEVICE:-cuda}
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-smoke.XXXXXX")}
mkdir -p "$WORK" || exit 1
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
PY=${PYTHON:-python3}
passed=0 failed=0 skipped=0 started=$SECONDS

if [ "$DEVICE" = cpu ]; then        # tiny: the dry run checks the script, not the numbers
    S1_SIZE=(--init_channels 4 --layers 3 --batch_size 16 --train_subset 96 --valid_subset 48 --valid_bn_images 32)
    SEARCH_SIZE=(--max_epochs 1 --population_num 4 --select_num 2 --mutation_num 1 --crossover_num 1
                 --max_train_img_size 32 --max_val_img_size 32 --batch_size 16 --test_batch_size 32)
    S3_SIZE=(--init_channels 4 --layers 3 --batch_size 16 --train_subset 64 --test_subset 32)
    JPEGS=2 INET_BATCH=4
else
    S1_SIZE=(--init_channels 8 --layers 5 --batch_size 64 --train_subset 2048 --valid_subset 512 --valid_bn_images 256)
    SEARCH_SIZE=(--max_epochs 2 --population_num 8 --select_num 3 --mutation_num 3 --crossover_num 3
                 --max_train_img_size 256 --max_val_img_size 512 --batch_size 64)
    S3_SIZE=(--init_channels 8 --layers 5 --batch_size 64 --train_subset 2048 --test_subset 512)
    JPEGS=16 INET_BATCH=16
fi
S1=(train_supernet/train.py --dataset synthetic "${S1_SIZE[@]}" --seed 0 --device "$DEVICE" --report_freq 1000)
SEARCH=(evolutionary_search/search.py --init_model_path "$WORK/s1/checkpoint_epoch_0.pth.tar"
        --model_path "$WORK/s1/checkpoint_epoch_2.pth.tar" --metric angle+wlm --wlm_weight 16 --seed 0
        "${SEARCH_SIZE[@]}" --device "$DEVICE")
S3=(retrain/retrain.py --dataset synthetic --arch GENAS_FLATNESS_CIFAR10 "${S3_SIZE[@]}" --epochs 2 --seed 0
    --device "$DEVICE" --report_freq 1000)

# run NAME TIMEOUT_S COMMAND...: PASS when COMMAND exits 0 in time; its output goes to WORK/NAME.log, and the
# end of it is shown on a FAIL.
run() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    if [ -n "${STEPS:-}" ] && ! [[ $name =~ $STEPS ]]; then return 0; fi
    timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then
        echo "PASS $name ($((SECONDS - t0)) s)"
        passed=$((passed + 1))
    else
        echo "FAIL $name (exit status $rc$([ $rc = 124 ] && echo ", over ${limit} s"), $((SECONDS - t0)) s; log: $WORK/$name.log)"
        tail -n 20 "$WORK/$name.log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
    grep '^INFO ' "$WORK/$name.log"
    return 0
}

skip() {
    if [ -n "${STEPS:-}" ] && ! [[ $1 =~ $STEPS ]]; then return 0; fi
    echo "SKIP $1 ($2)"
    skipped=$((skipped + 1))
}

# --- the machine --------------------------------------------------------------------------------------
run env 120 "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
print(f'INFO torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')
if device == 'cuda':
    assert torch.cuda.is_available(), 'no CUDA device is visible'
    from devices import native_bf16
    props = torch.cuda.get_device_properties(0)
    print(f'INFO GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.'
          f'{props.minor}, {torch.cuda.device_count()} visible, native bf16: {native_bf16()}')
else:
    print(f'INFO dry run on the CPU ({torch.get_num_threads()} threads)')
EOF

# --- stage 1: fp32, AMP, and with --deterministic an interrupted run against an uninterrupted one --------
run s1_fp32 150 "$PY" "${S1[@]}" --epochs 2 --save "$WORK/s1"
run s1_amp 120 "$PY" "${S1[@]}" --epochs 1 --amp --save "$WORK/s1_amp"
run s1_det 150 "$PY" "${S1[@]}" --epochs 2 --deterministic --save "$WORK/s1_det"
run s1_det_stop 120 "$PY" "${S1[@]}" --epochs 2 --deterministic --stop_after 1 --save "$WORK/s1_stop"
run s1_det_resume 120 "$PY" "${S1[@]}" --epochs 2 --deterministic --resume "$WORK/s1_stop"
run s1_resume_bit_identical 60 "$PY" - "$WORK" <<'EOF'
import sys
import torch
work = sys.argv[1]
load = lambda run: torch.load(f'{work}/{run}/last.pth.tar', map_location='cpu', weights_only=True)  # noqa: E731


def max_dw(a, b):
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()),
               default=0.0)


straight, resumed = load('s1_det'), load('s1_stop')
dw = max_dw(straight['state_dict'], resumed['state_dict'])
same = all(torch.equal(v, resumed['state_dict'][k]) for k, v in straight['state_dict'].items())
print(f'INFO --deterministic, stopped after 1 epoch and resumed vs uninterrupted: max |dw| {dw:.3g}, '
      f'bit-identical: {same}')
print(f'INFO without --deterministic vs with it: max |dw| {max_dw(load("s1")["state_dict"], straight["state_dict"]):.3g}'
      ' (0 or tiny: cuDNN may pick other algorithms)')
assert same, 'the resumed run differs from the uninterrupted one'
EOF

# --- stage 2: a search on 1 rank and on 2 ranks sharing the GPU, given cells scored in bf16 ---------------
run s2_search_1_rank 180 "$PY" "${SEARCH[@]}" --save "$WORK/s2_one"
run s2_search_2_ranks 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 "${SEARCH[@]}" \
    --save "$WORK/s2_two"
run s2_ranks_agree 60 "$PY" - "$WORK" <<'EOF'
import json
import sys
work = sys.argv[1]
one, two = (json.load(open(f'{work}/{run}/search_checkpoint.json'))['evolution']['scores'] for run in ('s2_one', 's2_two'))
rel = max(abs(one[k]['score'] - two[k]['score']) / max(abs(one[k]['score']), 1e-30) for k in one)
print(f'INFO 1 rank vs 2 ranks on one device: {len(one)} candidates, max relative score difference {rel:.3g}')
assert one.keys() == two.keys(), 'the two searches scored other candidates'
assert rel <= 1e-6, f'scores differ by {rel:.3g} (relative), more than 1e-6'
EOF
run s2_given_bf16 120 "$PY" "${SEARCH[@]}" --score_precision bf16 --arch GENAS_FLATNESS_CIFAR10 --arch DARTS_V2 \
    --save "$WORK/s2_given"

# --- stage 3: AMP stopped and resumed, --evaluate, an ImageNet folder of JPEGs, torch.compile -------------
run s3_amp_stop 180 "$PY" "${S3[@]}" --amp --stop_after 1 --save "$WORK/s3"
run s3_amp_resume 150 "$PY" "${S3[@]}" --amp --resume "$WORK/s3"
run s3_evaluate 90 "$PY" "${S3[@]}" --amp --evaluate "$WORK/s3/checkpoint.pth.tar"
run s3_jpegs 60 "$PY" - "$WORK/jpegs" "$JPEGS" <<'EOF'
import os
import sys
import numpy as np
from PIL import Image
root, per_class = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for split, n in (('train', per_class), ('val', max(per_class // 2, 2))):
    for cls in ('n01', 'n02'):
        os.makedirs(f'{root}/{split}/{cls}', exist_ok=True)
        for i in range(n):      # not square and larger than the 224 crop: the resizes run
            Image.fromarray(rng.integers(0, 256, (270, 310, 3), dtype=np.uint8)).save(f'{root}/{split}/{cls}/{i}.JPEG')
EOF
run s3_imagenet_folder 240 "$PY" retrain/retrain.py --dataset imagenet --data_root "$WORK/jpegs" \
    --arch GENAS_FLATNESS_CIFAR100 --init_channels 8 --layers 3 --epochs 1 --batch_size "$INET_BATCH" --workers 2 \
    --amp --device "$DEVICE" --report_freq 1000 --save "$WORK/s3_imagenet"
if [ "$DEVICE" = cpu ]; then
    skip s3_compile 'CPU dry run: compiling takes minutes on a CPU'
else
    run s3_compile 300 "$PY" "${S3[@]}" --epochs 1 --compile --save "$WORK/s3_compile"
fi

# --- benchmarks/bench.py: every workload tiny, then the main run ------------------------------------------
if [ -n "${SKIP_BENCH:-}" ]; then
    skip bench_tiny SKIP_BENCH
    skip bench_main SKIP_BENCH
else
    run bench_tiny 180 "$PY" benchmarks/bench.py --device "$DEVICE" --tiny
    if [ "$DEVICE" = cpu ]; then
        skip bench_main 'CPU dry run: the main run takes minutes'
    else
        run bench_main 420 "$PY" benchmarks/bench.py --device "$DEVICE"
    fi
fi

echo "SUMMARY $passed passed, $failed failed, $skipped skipped in $((SECONDS - started)) s on $DEVICE; logs in $WORK"
[ "$failed" = 0 ]
