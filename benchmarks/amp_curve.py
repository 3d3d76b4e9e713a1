"""Does bf16 autocast change stage-1 training? The same short SPOS supernet run (same seed, weights, batches
and paths) in fp32 and with --amp (bf16 autocast), side by side. Prints one JSON object, then a markdown table.

    python3 benchmarks/amp_curve.py                                  # Fashion-MNIST, 100 steps (a few minutes)
    python3 benchmarks/amp_curve.py --dataset synthetic --steps 50
    python3 benchmarks/amp_curve.py --tiny                           # seconds; a check of the script

Reports each run's loss at every step, the max and mean absolute difference of the two loss curves, and each
run's final validation accuracy and the first step whose loss is not finite (if any): the mean top-1 of --valid_paths random paths (the same in both runs), each
after re-estimating its BN statistics on 256 training images, evaluated in fp32.
"""
import argparse
import itertools
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import DATASETS, BatchLoader, load_arrays  # noqa: E402
from devices import Machine, choose_device, make_scaler  # noqa: E402
from spaces import SPACE_NAMES, get_space  # noqa: E402
from spaces.supernet import evaluate_candidate  # noqa: E402
from train_supernet.supernet_training import supernet_step  # noqa: E402
from training import StepConfig  # noqa: E402
from utils import ArgumentParser, require, run_cli  # noqa: E402

TINY = dict(steps=3, batch_size=8, init_channels=4, layers=3, valid_images=32, valid_paths=2, dataset='synthetic')


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='fashion-mnist', choices=DATASETS, help='training and test data')
    p.add_argument('--data', default=None, help='dataset folder (default per dataset, as in stage 1)')
    p.add_argument('--space', default='darts', choices=SPACE_NAMES, help='search space of the supernet')
    p.add_argument('--steps', type=int, default=100, help='SPOS steps of each run')
    p.add_argument('--batch_size', type=int, default=64, help='batch size')
    p.add_argument('--init_channels', type=int, default=8, help='C of the supernet')
    p.add_argument('--layers', type=int, default=5, help='cells (darts) or cells per stage (nb201)')
    p.add_argument('--learning_rate', type=float, default=0.05, help='SGD learning rate (constant)')
    p.add_argument('--valid_images', type=int, default=1000, help='test images of the final validation')
    p.add_argument('--valid_paths', type=int, default=5, help='random paths of the final validation')
    p.add_argument('--seed', type=int, default=0, help='seed of weights, batches and paths (both runs)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'auto'], help='where to train')
    p.add_argument('--tiny', action='store_true', help=f'a check of the script: {TINY} (default: off)')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.tiny:
        vars(args).update(TINY)
    require([(args.steps >= 1, '--steps must be >= 1'), (args.batch_size >= 2, '--batch_size must be >= 2'),
             (args.valid_images >= 1, '--valid_images must be >= 1'),
             (args.valid_paths >= 1, '--valid_paths must be >= 1')])
    return args


def final_accuracy(model, space, args, train, test, device):
    """Mean top-1 of --valid_paths seeded random paths, each after BN re-estimation on 256 training images."""
    rng, accs = random.Random(args.seed + 1), []
    valid = BatchLoader(test, torch.arange(min(args.valid_images, len(test))), 64, device,
                        memory_format=torch.channels_last)
    for _ in range(args.valid_paths):
        cand = space.random_candidate(rng)
        bn = BatchLoader(train, torch.arange(len(train)), args.batch_size, device, shuffle=True, seed=args.seed,
                         memory_format=torch.channels_last)
        with model.preserved_path(cand):
            model.recalibrate_bn(cand, itertools.islice(bn, max(1, 256 // args.batch_size)))
            accs.append(evaluate_candidate(model, cand, valid).acc)
    return statistics.mean(accs)


def train_run(args, amp, device, train, test):
    """One run from the seed: {'losses': per-step training loss, 'valid_acc', 'seconds'}."""
    torch.manual_seed(args.seed)
    space = get_space(args.space)
    model = space.build_supernet(args.init_channels, train.num_classes, args.layers)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=0.9, weight_decay=3e-4)
    loader = BatchLoader(train, torch.arange(len(train)), args.batch_size, device, shuffle=True, augment=True,
                         seed=args.seed, memory_format=torch.channels_last)
    rng, crit, scaler = random.Random(args.seed), torch.nn.CrossEntropyLoss(), make_scaler(device, amp)
    cfg = StepConfig(5.0, amp, set_to_none=False)
    losses, t0 = [], time.perf_counter()
    model.train()
    batches = itertools.chain.from_iterable(_epochs(loader))
    for x, y in itertools.islice(batches, args.steps):
        step = supernet_step(model, x, y, space.random_candidate(rng), opt, scaler, crit, cfg, space)
        losses.append(step.loss.detach().item())
    seconds = time.perf_counter() - t0
    return {'losses': losses, 'valid_acc': final_accuracy(model, space, args, train, test, device),
            'seconds': seconds}


def _epochs(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield loader


def markdown(out):
    """The small table of the comparison."""
    fp32, amp = out['runs']['fp32'], out['runs']['bf16']
    return '\n'.join([
        '| | fp32 | bf16 autocast |', '|---|---|---|',
        f'| first / last training loss | {fp32["losses"][0]:.4f} / {fp32["losses"][-1]:.4f} | '
        f'{amp["losses"][0]:.4f} / {amp["losses"][-1]:.4f} |',
        f'| final valid accuracy | {fp32["valid_acc"]:.4f} | {amp["valid_acc"]:.4f} |',
        f'| seconds of training | {fp32["seconds"]:.1f} | {amp["seconds"]:.1f} |',
        f'| first step with a non-finite loss | {fp32["first_nonfinite_step"] or "none"} | '
        f'{amp["first_nonfinite_step"] or "none"} |',
        f'| loss curves: max / mean absolute difference | {out["max_abs_loss_difference"]:.4f} / '
        f'{out["mean_abs_loss_difference"]:.4f} | |'])


def main(args):
    device = choose_device(args.device)          # before loading anything: --device cuda without a GPU fails first
    train = load_arrays(args.dataset, args.data, train=True).to(device)
    test = load_arrays(args.dataset, args.data, train=False).to(device)
    runs = {'fp32': train_run(args, False, device, train, test), 'bf16': train_run(args, True, device, train, test)}
    for run in runs.values():          # a non-finite loss (NaN) is reported where it first appears, not hidden
        run['first_nonfinite_step'] = next((i + 1 for i, v in enumerate(run['losses']) if not math.isfinite(v)),
                                           None)
    diffs = [abs(a - b) for a, b in zip(runs['fp32']['losses'], runs['bf16']['losses'])]
    finite = all(math.isfinite(d) for d in diffs)
    machine = Machine.here(device)
    settings = {k: getattr(args, k) for k in ('dataset', 'space', 'steps', 'batch_size', 'init_channels', 'layers',
                                              'learning_rate', 'valid_images', 'valid_paths', 'seed')}
    out = {'device': str(device), 'machine': machine.record(), 'machine_line': machine.line(),
           'cpu_bf16': machine.cpu_bf16, 'settings': settings, 'runs': runs,
           'max_abs_loss_difference': max(diffs) if finite else math.nan,
           'mean_abs_loss_difference': statistics.mean(diffs) if finite else math.nan}
    print(json.dumps(out, indent=2))
    print(markdown(out))
    return out


if __name__ == '__main__':
    run_cli(main, parse_args)
