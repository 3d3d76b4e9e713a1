"""Does reduced precision change the flatness ranking? Kendall's tau between fp32 scores and scores
computed with TF32 / bf16 / fp16, over random candidates of a trained supernet. Prints one JSON object.

    python3 benchmarks/precision_tau.py --model_path runs/supernet-fmnist/checkpoint_epoch_2.pth.tar
    python3 benchmarks/precision_tau.py --model_path ... --device cuda --candidates 30

Flags after the known ones go to evolutionary_search/search.py's parser (e.g. --metric angle+wlm
--wlm_weight 16 --init_model_path ...); the defaults score `wlm` on 256 BN and 512 validation images.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genotypes  # noqa: E402
from evolutionary_search import search  # noqa: E402
from evolutionary_search.metrics import METRICS  # noqa: E402


def kendall_tau(a, b):
    """Kendall's tau-b of two equally long score lists (ties in either list count as neither)."""
    concordant = discordant = ties_a = ties_b = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denom if denom else 1.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model_path', required=True, help='trained supernet checkpoint')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='device (default: cpu)')
    p.add_argument('--candidates', type=int, default=30, help='random candidates to rank (default: 30)')
    p.add_argument('--precisions', default=None,
                   help='comma-separated; default: bf16,fp16 on a CPU, tf32,bf16,fp16 on a GPU')
    args, rest = p.parse_known_args(argv)
    precisions = (args.precisions.split(',') if args.precisions else
                  ['bf16', 'fp16'] if args.device == 'cpu' else ['tf32', 'bf16', 'fp16'])
    sargs = search.parse_args(['--model_path', args.model_path, '--device', args.device, '--max_train_img_size', '256',
                               '--max_val_img_size', '512', '--save', '/nonexistent-unused', *rest])
    from devices import choose_device
    ctx = search.build_context(sargs, choose_device(sargs.device))
    rng = random.Random(0)
    cands = [genotypes.random_candidate(rng) for _ in range(args.candidates)]
    scorer = METRICS[sargs.metric]
    out = {'device': args.device, 'metric': sargs.metric, 'candidates': len(cands), 'model_path': args.model_path,
           'results': {}}
    reference = None
    for prec in ['fp32'] + precisions:
        ctx.precision = prec
        t0 = time.perf_counter()
        infos = [scorer(ctx, c) for c in cands]
        seconds = (time.perf_counter() - t0) / len(cands)
        scores = [i['score'] for i in infos]
        # The flatness part of wlm alone: poor minus its |L1 / s1| term, i.e. the loss slopes between levels.
        slopes = [i['poor'] - abs(i['losses'][0] / sargs.stds[0]) for i in infos if 'poor' in i]
        if reference is None:
            reference, ref_slopes = scores, slopes
        worst = max(abs(s - r) / abs(r) for s, r in zip(scores, reference))
        out['results'][prec] = {'kendall_tau_vs_fp32': kendall_tau(reference, scores),
                                'slope_kendall_tau_vs_fp32': kendall_tau(ref_slopes, slopes) if slopes else None,
                                'max_relative_score_change': worst, 'seconds_per_candidate': seconds}
        r = out['results'][prec]
        print(f'{prec}: tau {r["kendall_tau_vs_fp32"]:.3f} (slopes {r["slope_kendall_tau_vs_fp32"]}), '
              f'{seconds:.2f} s per candidate', file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    main()
