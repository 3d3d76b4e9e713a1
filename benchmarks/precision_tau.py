"""Does reduced precision change the flatness ranking? Kendall's tau between fp32 scores and scores
computed with TF32 / bf16 / fp16, over random candidates of a trained supernet. Prints one JSON object.

    python3 benchmarks/precision_tau.py --model_path runs/supernet-fmnist/checkpoint_epoch_2.pth.tar
    python3 benchmarks/precision_tau.py --model_path ... --device cuda --candidates 30
    python3 benchmarks/precision_tau.py --model_path ... --metric angle+wlm --wlm_weight 16 \
        --init_model_path runs/supernet-fmnist/checkpoint_epoch_0.pth.tar

Scoring as stage 2 does (evolutionary_search/metrics.py) on the data and split the supernet was trained on;
the defaults score `wlm` on 256 BN and 512 validation images. A tau is NaN where it is undefined (the scores
of one precision are all equal).
"""
import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genotypes  # noqa: E402
from devices import choose_device  # noqa: E402
from evolutionary_search import context  # noqa: E402
from evolutionary_search.metrics import METRICS, PRECISIONS  # noqa: E402
from proxy_study.stats import kendall_tau  # noqa: E402
from utils import ArgumentParser, require, run_cli  # noqa: E402

# The data flags of the supernet's own train / valid split: None takes the checkpoint's value.
DATA_FLAGS = dict(dataset=None, download=False, split_data=None, split=None, train_portion=None, split_seed=None,
                  split_file=None, train_subset=0, valid_subset=0, random_label=0)


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    context.add_scoring_args(p)
    # A benchmark of numerics, not a search: fewer images than stage 2 scores, on the CPU unless asked.
    p.set_defaults(max_train_img_size=256, max_val_img_size=512, device='cpu')
    g = p.add_argument_group('benchmark')
    g.add_argument('--data', default=None, help='dataset folder (default: the one the supernet was trained on)')
    g.add_argument('--candidates', type=int, default=30, help='random candidates to rank')
    g.add_argument('--precisions', default=None,
                   help='comma-separated; default: bf16,fp16 on a CPU, tf32,bf16,fp16 on a GPU')
    g.add_argument('--metric', default='wlm', choices=list(METRICS), help='scoring metric')
    g.add_argument('--seed', type=int, default=3, help='seed of the BN batches and weight noise')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    require([(args.candidates >= 1, f'--candidates must be >= 1, got {args.candidates}')])
    if args.precisions:
        args.precisions = args.precisions.split(',')
        bad = [p for p in args.precisions if p not in PRECISIONS]
        require([(not bad, f'--precisions: unknown {bad[0] if bad else ""!r}; choose from {",".join(PRECISIONS)}')])
    return context.check_scoring_args(args, [args.metric])


def build_context(args, device):
    """Stage 2's scoring context for the supernet of --model_path, on its own data split."""
    data_args = argparse.Namespace(data=args.data, **DATA_FLAGS)
    return context.build_context(args, device, [args.metric], data_args=data_args).ctx


def score_all(ctx, scorer, cands):
    """(infos, seconds per candidate) of every candidate under ctx's precision."""
    t0 = time.perf_counter()
    infos = [scorer(ctx, c) for c in cands]
    return infos, (time.perf_counter() - t0) / len(cands)


def flatness_slopes(infos, stds):
    """The flatness part of wlm alone: poor minus its |L1 / s1| term, i.e. the loss slopes between levels."""
    return [i['poor'] - abs(i['losses'][0] / stds[0]) for i in infos if 'poor' in i]


def main(args):
    device = choose_device(args.device)          # before loading anything: --device cuda without a GPU fails first
    precisions = args.precisions or (['bf16', 'fp16'] if args.device == 'cpu' else ['tf32', 'bf16', 'fp16'])
    ctx = build_context(args, device)
    rng = random.Random(0)
    cands = [genotypes.random_candidate(rng) for _ in range(args.candidates)]
    scorer = METRICS[args.metric]
    out = {'device': args.device, 'metric': args.metric, 'candidates': len(cands), 'model_path': args.model_path,
           'results': {}}
    reference = ref_slopes = None
    for prec in ['fp32'] + precisions:
        infos, seconds = score_all(dataclasses.replace(ctx, precision=prec), scorer, cands)
        scores, slopes = [i['score'] for i in infos], flatness_slopes(infos, args.stds)
        if reference is None:
            reference, ref_slopes = scores, slopes
        r = out['results'][prec] = {
            'kendall_tau_vs_fp32': kendall_tau(reference, scores),
            'slope_kendall_tau_vs_fp32': kendall_tau(ref_slopes, slopes) if slopes else None,
            'max_relative_score_change': max(abs(s - f) / abs(f) for s, f in zip(scores, reference)),
            'seconds_per_candidate': seconds}
        print(f'{prec}: tau {r["kendall_tau_vs_fp32"]:.3f} (slopes {r["slope_kendall_tau_vs_fp32"]}), '
              f'{seconds:.2f} s per candidate', file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    run_cli(main, parse_args)
