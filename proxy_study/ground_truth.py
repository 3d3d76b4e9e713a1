"""Ground truth for the proxy study: train cells from scratch (stage-3 network and training loop) with
several seeds each and record their test accuracy.

    # offline, CPU (see docs/proxy_study/README.md for the committed study):
    python3 proxy_study/ground_truth.py --dataset fashion-mnist --num_cells 40 --seeds 2 --epochs 1 \
        --init_channels 8 --layers 5 --batch_size 64 --learning_rate 0.05 --train_subset 5000 \
        --test_subset 2000 --no-auxiliary --drop_path_prob 0 --cutout_length 0 --save runs/study/gt
    # 8 GPUs: every process trains its own (cell, seed) pairs; rank 0 gathers them
    torchrun --nproc_per_node=8 proxy_study/ground_truth.py --dataset cifar10 --data ./data --num_cells 100 \
        --seeds 3 --epochs 100 --save runs/study-c10/gt

Rerunning the same command resumes: each finished (cell, seed) pair is a file pairs/<cell>-s<seed>.json
(written atomically), so a kill loses at most the pairs in progress, which are retrained identically
(every pair's initialisation and data order are functions of (seed, cell) alone). Rank 0 waits for all
pairs and writes ground_truth.jsonl: one JSON line per pair, in cell order then seed order, with the
candidate, seed, test accuracy and loss, parameters, multiply-adds and the protocol. Under several
nodes the run directory must be on a shared file system.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import torch  # noqa: E402

import data  # noqa: E402
import inputs  # noqa: E402
from proxy_study.cells import add_cell_args, select_cells  # noqa: E402
from retrain.train_loop import EpochPlan, Loaders, Nets, Protocol, evaluate, make_training, train_network  # noqa: E402
from spaces import get_space  # noqa: E402
from counting import count_macs, count_parameters  # noqa: E402
from devices import choose_device  # noqa: E402
from distributed import Dist  # noqa: E402
from seeding import derive_seed, seed_everything  # noqa: E402
from training import (LEGACY_GRAD_FORM_KEY, add_grad_form_flag, check_ranges, recorded_grad_form,  # noqa: E402
                      use_grad_form)
from utils import (ArgumentParser, UserError, atomic_write_text, changed_flags, lock_run_dir,  # noqa: E402
                   locks_released, logger, refuse_other_kind, require, run_cli, setup_logging)

OUTPUT, PROTOCOL_FILE, PAIRS = 'ground_truth.jsonl', 'protocol.json', 'pairs'
KIND = 'ground-truth'       # what its run directory holds (utils.RUN_KINDS)
# The flags that define the training protocol: recorded in every line, fixed for a run directory.
PROTOCOL = ['dataset', 'epochs', 'train_subset', 'subset_seed', 'test_subset', 'init_channels', 'layers',
            'batch_size', 'learning_rate', 'momentum', 'weight_decay', 'grad_clip', 'auxiliary', 'auxiliary_weight',
            'drop_path_prob', 'cutout_length', 'label_smooth', 'amp', 'grad_form']


def get_args_parser():
    p = ArgumentParser(description='Proxy study, ground truth: train N cells x S seeds from scratch (stage-3 '
                                   'network). Defaults: the DARTS CIFAR protocol (lower --epochs for a study).')
    add_cell_args(p)
    g = p.add_argument_group('protocol')
    g.add_argument('--seeds', type=int, default=2, help='training seeds per cell (0 .. S-1)')
    g.add_argument('--dataset', default='cifar10', choices=data.DATASETS, help='dataset')
    g.add_argument('--data', default=None, help='dataset folder (default per dataset, as in stage 3)')
    g.add_argument('--epochs', type=int, default=600, help='epochs per cell')
    g.add_argument('--train_subset', type=int, default=0, help='train on a seeded subset of N images (0: all)')
    g.add_argument('--subset_seed', type=int, default=0, help='seed of that subset (the same for every cell)')
    g.add_argument('--test_subset', type=int, default=0, help='test on the first N test images (0: all)')
    g.add_argument('--init_channels', type=int, default=36, help='C')
    g.add_argument('--layers', type=int, default=20, help='cells')
    g.add_argument('--batch_size', type=int, default=96, help='batch size')
    g.add_argument('--learning_rate', type=float, default=0.025, help='initial rate of the cosine schedule')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--weight_decay', type=float, default=3e-4, help='weight decay')
    g.add_argument('--grad_clip', type=float, default=5.0, help='gradient norm clip (0: off)')
    g.add_argument('--auxiliary', action=argparse.BooleanOptionalAction, default=True, help='auxiliary head')
    g.add_argument('--auxiliary_weight', type=float, default=0.4, help='weight of the auxiliary loss')
    g.add_argument('--drop_path_prob', type=float, default=0.2, help='final drop-path probability')
    g.add_argument('--cutout_length', type=int, default=16, help='cutout square side (0: off)')
    g.add_argument('--label_smooth', type=float, default=0.0, help='label smoothing')
    g.add_argument('--amp', action='store_true', help='mixed precision (GPUs)')
    add_grad_form_flag(g)
    g = p.add_argument_group('run')
    g.add_argument('--save', required=True, help='run directory (rerun to resume)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='device of each process')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True, help='memory format')
    g.add_argument('--report_freq', type=int, default=100, help='log a line every N steps')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    check_ranges(args)
    require([(args.num_cells >= 0, '--num_cells must be >= 0'),
             (args.init_channels >= 2 and args.init_channels % 2 == 0, '--init_channels must be even and >= 2'),
             (args.layers >= 3, '--layers must be >= 3')])
    if args.auxiliary and data.IMAGE_SIZES.get(args.dataset, 32) < 32:
        raise UserError(f'--auxiliary needs 32x32 images; add --no-auxiliary for {args.dataset}')
    return args


def protocol_of(args):
    return {k: getattr(args, k) for k in PROTOCOL}


def pair_name(candidate, seed):
    return f'{"_".join(map(str, candidate))}-s{seed}.json'


def load_sets(args, device):
    """(train set, train indices, test set, test indices): the subset is fixed by --subset_seed."""
    train = data.load_arrays(args.dataset, args.data, train=True)
    test = data.load_arrays(args.dataset, args.data, train=False)
    if device.type == 'cuda':
        train, test = train.to(device), test.to(device)
    train_idx = torch.arange(len(train))
    if args.train_subset:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.subset_seed))
        train_idx = perm[:args.train_subset]
    return train, train_idx, test, torch.arange(len(test))[:args.test_subset or None]


def diverged_fix():
    """What to do after a divergence: the finished pairs are kept, so the same command continues."""
    return 'lower --learning_rate (or drop --amp) and rerun the same command (finished pairs are kept)'


def train_pair(cell, seed, args, sets, device):
    """Train one cell with one seed through stage 3's loop; its record (everything a function of (cell, seed,
    protocol)). Every rank trains whole pairs on its own: the loop sees one process."""
    train, train_idx, test, test_idx = sets
    key = derive_seed('ground_truth', seed, list(cell.candidate))
    protocol = Protocol.from_args(args)
    fmt = protocol.memory_format
    seed_everything(key)
    model = get_space('darts').standalone(cell.candidate, args.init_channels, train.num_classes, args.layers,
                                          auxiliary=args.auxiliary).to(device).to(memory_format=fmt)
    size = data.IMAGE_SIZES.get(args.dataset, 32)
    params, macs = count_parameters(model), count_macs(model, torch.zeros(1, 3, size, size, device=device))
    # DARTS: cosine to 0 (torch's recursive form, which the recorded ground truth was trained with)
    state = make_training(model, protocol, device, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, protocol.epochs))
    loader = data.BatchLoader(train, train_idx, args.batch_size, device, shuffle=True, augment=True,
                              cutout=args.cutout_length, seed=key, memory_format=fmt)
    test_loader = data.BatchLoader(test, test_idx, 64 if device.type == 'cpu' else 512, device, memory_format=fmt)
    solo = Dist.single()
    plan = EpochPlan(epoch_seed=lambda e: derive_seed(key, 'epoch', e), fix=diverged_fix(), validate=False)
    loaders = Loaders(loader, test_loader, len(train_idx), len(test_idx), train.num_classes)
    trained = train_network(state, Nets(model, model), loaders, protocol, plan, solo, device)
    result = evaluate(model, test_loader, device, solo, protocol.amp, fmt)
    return {'name': cell.name, 'candidate': list(cell.candidate), 'seed': seed, 'test_acc': result['val_top1'],
            'test_loss': result['val_loss'], 'train_acc': trained['train_acc'], 'train_loss': trained['train_loss'],
            'params': params, 'macs': macs, 'protocol': protocol_of(args)}


def recorded_protocol(save):
    """The protocol record of run directory `save`, None where there is none yet."""
    path = Path(save) / PROTOCOL_FILE
    return inputs.json_document('--save', path, {}, 'the protocol record of a ground truth') if path.exists() else None


def refuse_other_protocol(save, args):
    """A run directory holds one protocol: UserError when the one it recorded differs from the flags' (reads
    only, so it runs before the directory is claimed)."""
    recorded = recorded_protocol(save)
    if recorded is None:
        return
    current = protocol_of(args)
    form = recorded_grad_form(recorded)             # a directory made by earlier code: the key it used, or none
    recorded = {**{k: v for k, v in recorded.items() if k != LEGACY_GRAD_FORM_KEY}, 'grad_form': form}
    if current['grad_form'] is None:                # not asked: the directory's own
        current['grad_form'] = recorded['grad_form']
    # A flag the record lacks counts as None: refused unless it is None here too.
    changed = changed_flags(recorded, current, fallback=dict.fromkeys(current))
    if changed:
        raise UserError(f'{save} holds ground truth trained with other flags ({"; ".join(changed)}); use the '
                        'same protocol flags to resume or extend it, or another --save')


def check_protocol(save, args, is_main):
    """Rank 0 records the protocol on the first start (the other ranks wait for it); every rank refuses other
    flags."""
    path = Path(save) / PROTOCOL_FILE
    if not path.exists() and is_main:
        (Path(save) / PAIRS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(protocol_of(args), indent=2))
    while not path.exists():
        time.sleep(0.5)
    refuse_other_protocol(save, args)


def gather(save, pairs, poll_s=2.0):
    """Rank 0: wait until every pair's file exists (the other ranks write theirs), then the records."""
    folder = Path(save) / PAIRS
    waiting = [p for p in pairs if not (folder / pair_name(*p)).exists()]
    if waiting:
        logger.info('waiting for %d pair(s) of other ranks', len(waiting))
    while waiting:
        time.sleep(poll_s)
        waiting = [p for p in waiting if not (folder / pair_name(*p)).exists()]
    return [json.loads((folder / pair_name(*p)).read_text()) for p in pairs]


@locks_released
def main(args):
    dist = Dist()
    device = choose_device(args.device, dist.local_rank)
    save = Path(args.save)
    refuse_other_kind(save, KIND)                        # every rank, reading only; rank 0 takes the lock below
    refuse_other_protocol(save, args)
    args.grad_form = use_grad_form(args.grad_form, recorded_protocol(save), save)
    cells = select_cells(args.num_cells, args.sample_seed, args.candidates, args.arch)
    sets = load_sets(args, device)                       # fails on missing data before anything is written
    if dist.is_main:            # the other ranks write their own pairs/ files into the directory rank 0 holds
        lock_run_dir(save, KIND)
    check_protocol(save, args, dist.is_main)
    if dist.is_main:
        atomic_write_text(save / 'args.json', json.dumps(vars(args), indent=2, default=str))
    setup_logging(save / 'log.txt' if dist.is_main else None, dist.is_main)
    pairs = [(c.candidate, s) for c in cells for s in range(args.seeds)]
    by_candidate = {c.candidate: c for c in cells}
    # Pairs are dealt by their index in the full list, so the split never depends on what is done.
    mine = [p for i, p in enumerate(pairs) if i % dist.world_size == dist.rank
            and not (save / PAIRS / pair_name(*p)).exists()]
    logger.info('%d cells x %d seeds = %d pairs, %d to train here (rank %d of %d), protocol %s', len(cells),
                args.seeds, len(pairs), len(mine), dist.rank, dist.world_size, json.dumps(protocol_of(args)))
    for n, (cand, seed) in enumerate(mine, 1):
        t0 = time.time()
        record = train_pair(by_candidate[cand], seed, args, sets, device)
        atomic_write_text(save / PAIRS / pair_name(cand, seed), json.dumps(record))
        logger.info('[%d/%d] %s seed %d: test acc %.4f loss %.4f, %d params (%.0fs)', n, len(mine),
                    by_candidate[cand].name, seed, record['test_acc'], record['test_loss'], record['params'],
                    time.time() - t0)
    if not dist.is_main:
        return None
    records = gather(save, pairs)
    atomic_write_text(save / OUTPUT, ''.join(json.dumps(r) + '\n' for r in records))
    logger.info('wrote %s (%d lines)', save / OUTPUT, len(records))
    return records


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun the same command')
