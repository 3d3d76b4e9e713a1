"""Stage 3: retrain a named or searched genotype from scratch (DARTS protocol), one process or torchrun.

    # ImageNet, 8 GPUs, as the reference (global batch 1024):
    torchrun --nproc_per_node=8 retrain/retrain.py --data_root /data/imagenet --auxiliary \
        --arch GENAS_FLATNESS_CIFAR100 --init_channels 46 --save runs/imagenet-genas-flatness-c100
    # CIFAR-10, DARTS evaluation protocol (600 epochs, C=36, 20 layers, cutout, drop path):
    python3 retrain/retrain.py --dataset cifar10 --data ./data --arch runs/search-wlm/genotype.json
    # offline, CPU, a few minutes:
    python3 retrain/retrain.py --dataset fashion-mnist --arch DARTS_V2 --epochs 2 --init_channels 16 \
        --layers 5 --batch_size 64 --learning_rate 0.05 --train_subset 10000 --test_subset 2000
    # validation only (our checkpoints or the reference's model zoo files, which need --no_normalize):
    python3 retrain/retrain.py --data_root /data/imagenet --arch GENAS_FLATNESS_CIFAR100 \
        --init_channels 46 --no_normalize --evaluate genas_flatness_c100.pth.tar

Writes to --save (rank 0 only): checkpoint.pth.tar (everything to resume), model_best.pth.tar,
log.txt, args.json, metrics.jsonl, tb/, and the cell drawings cell_normal.* / cell_reduce.*.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import data  # noqa: E402
import genotypes  # noqa: E402
from training import (claim_run_dir, require_finite_loss, require_finite_weights, resume_training,  # noqa: E402
                      stop_requested)
from spaces.darts_network import NetworkCIFAR, NetworkImageNet  # noqa: E402
from retrain.train_loop import CHECKPOINT, diverged_fix, evaluate, make_loaders, train_one_epoch  # noqa: E402
from checkpoints import load_checkpoint, load_state_checked, save_checkpoint  # noqa: E402
from counting import count_macs, count_parameters  # noqa: E402
from devices import choose_device, make_scaler, memory_format  # noqa: E402
from distributed import Dist  # noqa: E402
from seeding import derive_seed, get_rng_state, seed_everything  # noqa: E402
from utils import (ArgumentParser, Run, UserError, add_noop_flags, locks_released, logger, pop_noop_flags, require,  # noqa: E402
                   resolve_run_paths, restarts_from_beginning, run_cli, setup_logging)

BEST = 'model_best.pth.tar'
DATASETS = ['imagenet'] + data.DATASETS
# Defaults per setting: SPEC section 5 for ImageNet, the DARTS evaluation protocol for the small images
# (cutout half the image side: 16 on 32x32, 8 on ImageNet16-120's 16x16).
DEFAULTS = {
    'imagenet': dict(epochs=250, batch_size=1024, learning_rate=0.5, weight_decay=3e-5, layers=14, init_channels=48,
                     lr_scheduler='linear', warmup_epochs=5, label_smooth=0.1, cutout_length=0, drop_path_prob=0.0,
                     auxiliary=False, workers=8),
    'cifar': dict(epochs=600, batch_size=96, learning_rate=0.025, weight_decay=3e-4, layers=20, init_channels=36,
                  lr_scheduler='cosine', warmup_epochs=0, label_smooth=0.0, drop_path_prob=0.2,
                  auxiliary=True, workers=0),
}
# ImageNet channel counts of the reference's model zoo (used when --init_channels is not given).
ZOO_CHANNELS = {'GENAS_FLATNESS_CIFAR10': 52, 'GENAS_ANGLE_FLATNESS_CIFAR10': 44, 'GENAS_FLATNESS_CIFAR100': 46,
                'GENAS_ANGLE_FLATNESS_CIFAR100': 48}


def get_args_parser():
    p = ArgumentParser(description='Stage 3: retrain a genotype (GeNAS). Defaults marked "per dataset" are '
                                   'the reference\'s ImageNet recipe for imagenet (8 GPUs, global batch 1024, '
                                   '250 epochs) and the DARTS CIFAR protocol for 32x32 images.')
    g = p.add_argument_group('reference flags')
    g.add_argument('--data_root', '--data', dest='data', default=None,
                   help='ImageNet folder with train/ and val/, or the CIFAR / Fashion-MNIST / ImageNet16 folder')
    g.add_argument('--arch', default='GENAS_FLATNESS_CIFAR100', help='named genotype or genotype .json of the search')
    g.add_argument('--batch_size', type=int, default=None,
                   help='global batch, split over processes (per dataset: 1024 / 96)')
    g.add_argument('--learning_rate', type=float, default=None, help='base learning rate (per dataset: 0.5 / 0.025)')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--weight_decay', type=float, default=None, help='weight decay (per dataset: 3e-5 / 3e-4)')
    g.add_argument('--epochs', type=int, default=None, help='epochs (per dataset: 250 / 600)')
    g.add_argument('--init_channels', type=int, default=None,
                   help='C (per dataset: the model zoo value for GENAS_* on ImageNet, else 48 / 36)')
    g.add_argument('--layers', type=int, default=None, help='cells (per dataset: 14 / 20)')
    g.add_argument('--auxiliary', action=argparse.BooleanOptionalAction, default=None,
                   help='auxiliary head (per dataset: off for ImageNet unless given, as the reference; on for 32x32 '
                        'images; off and unavailable for 16x16)')
    g.add_argument('--auxiliary_weight', type=float, default=0.4, help='weight of the auxiliary loss')
    g.add_argument('--drop_path_prob', type=float, default=None,
                   help='final drop-path probability (per dataset: 0 / 0.2)')
    g.add_argument('--grad_clip', type=float, default=5.0, help='gradient norm clip (0: off)')
    g.add_argument('--label_smooth', type=float, default=None, help='label smoothing (per dataset: 0.1 / 0)')
    g.add_argument('--lr_scheduler', default=None, choices=['linear', 'cosine'], help='per dataset: linear / cosine')
    g.add_argument('--seed', type=int, default=0, help='seed')
    g.add_argument('--save', default=None, help='run directory; None means runs/retrain-<dataset>-<time>')
    g.add_argument('--report_freq', type=int, default=100, help='log a line every N steps')
    g.add_argument('--workers', type=int, default=None,
                   help='DataLoader workers per process for ImageNet (per dataset: 8 / 0)')
    g.add_argument('--resume', default=None, help='checkpoint.pth.tar (or its run directory) to continue')
    g = p.add_argument_group('additions')
    g.add_argument('--dataset', default='imagenet', choices=DATASETS, help='dataset')
    g.add_argument('--download', action='store_true', help='download CIFAR with torchvision (needs internet)')
    g.add_argument('--warmup_epochs', type=int, default=None, help='linear warm-up epochs (per dataset: 5 / 0)')
    g.add_argument('--cutout_length', type=int, default=None,
                   help='cutout square side, 0: off (per dataset: 0 / half the image side, 16 on 32x32)')
    g.add_argument('--no_normalize', action='store_true',
                   help='ImageNet: feed raw [0, 1] pixels as the reference did (needed for its model zoo files)')
    g.add_argument('--imagenet_pipeline', default='reference', choices=data.IMAGENET_PIPELINES,
                   help='reference: square crops resized without anti-aliasing, quantized lighting, OpenCV-style '
                        'eval resize (the pixels the reference and its model zoo saw); torchvision: '
                        'RandomResizedCrop and anti-aliased Resize')
    g.add_argument('--train_subset', type=int, default=0,
                   help='train on a seeded subset of N images (0: all; not ImageNet)')
    g.add_argument('--test_subset', type=int, default=0, help='test on the first N test images (0: all; not ImageNet)')
    g.add_argument('--amp', action='store_true', help='mixed precision: bf16 where supported, else fp16 with a scaler')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels-last memory format (faster on CPU and with --amp on GPU)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='device of each process')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False,
                   help='torch.compile the network for training and evaluation (compiles once per mode at the start; '
                        'see docs/performance.md for when it pays off)')
    g.add_argument('--evaluate', default=None, metavar='CKPT', help='only validate this checkpoint')
    g.add_argument('--stop_after', type=int, default=0,
                   help='stop after N epochs of this invocation (resumable; 0: off)')
    add_noop_flags(p, {'note': str})           # the reference's free-text run note
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    pop_noop_flags(args)
    if args.dataset == 'imagenet' and args.init_channels is None:
        args.init_channels = ZOO_CHANNELS.get(args.arch.upper())
    if args.dataset != 'imagenet':
        small = image_size(args.dataset) < 32
        if args.auxiliary and small:
            raise UserError(f'--auxiliary needs 32x32 images (its head pools the 8x8 maps of the last third); '
                            f'leave it off for {args.dataset}')
        if args.auxiliary is None and small:
            args.auxiliary = False
        if args.cutout_length is None:
            args.cutout_length = image_size(args.dataset) // 2
    for k, v in DEFAULTS['imagenet' if args.dataset == 'imagenet' else 'cifar'].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    require([(args.epochs >= 1, '--epochs must be >= 1'), (args.batch_size >= 1, '--batch_size must be >= 1'),
             (args.learning_rate > 0, '--learning_rate must be > 0'), (args.layers >= 3, '--layers must be >= 3'),
             (args.init_channels >= 2 and args.init_channels % 2 == 0, '--init_channels must be even and >= 2'),
             (0 <= args.drop_path_prob < 1, '--drop_path_prob must lie in [0, 1)'),
             (args.auxiliary_weight >= 0, f'--auxiliary_weight must be >= 0 (a negative weight rewards a wrong '
                                          f'auxiliary head), got {args.auxiliary_weight}')])
    return resolve_run_paths(args, CHECKPOINT, f'retrain-{args.dataset}')


def lr_factor(args):
    """Multiplier of the base learning rate at epoch e (SPEC section 5)."""
    E, W = args.epochs, args.warmup_epochs

    def factor(e):
        if args.lr_scheduler == 'cosine':
            f = 0.5 * (1 + math.cos(math.pi * e / E))
        elif E - e > 5:
            f = (E - 5 - e) / max(E - 5, 1)
        else:
            f = (E - e) / (max(E - 5, 1) * 5)
        return f * (e + 1) / W if e < W else f
    return factor


def image_size(dataset):
    """Side of the network's input: 224 for ImageNet (after cropping), the stored size otherwise."""
    return 224 if dataset == 'imagenet' else data.IMAGE_SIZES.get(dataset, 32)


def build_model(args, num_classes, genotype, auxiliary=None):
    cls = NetworkImageNet if args.dataset == 'imagenet' else NetworkCIFAR
    aux = args.auxiliary if auxiliary is None else auxiliary
    return cls(args.init_channels, num_classes, args.layers, aux, genotype)


def describe(model, args, genotype, device):
    """Log the genotype, parameters without the auxiliary head and multiply-adds for one input."""
    size = image_size(args.dataset)
    macs = count_macs(model, torch.zeros(1, 3, size, size, device=device))
    params = count_parameters(model)
    logger.info('genotype %s', genotype)
    logger.info('params (without auxiliary head) %.3fM, multiply-adds %.1fM for one %dx%d image',
                params / 1e6, macs / 1e6, size, size)
    return params, macs


def draw_cells(run, genotype):
    from retrain.visualize import plot_genotype
    written = plot_genotype(genotype, run.path / 'cell')
    if run.tb is not None:
        run.tb.add_text('genotype', str(genotype))
        for which, paths in written.items():
            png = [p for p in paths if p.suffix == '.png']
            if png:
                from torchvision.io import read_image
                run.tb.add_image(f'cell/{which}', read_image(str(png[0]))[:3], 0)


def compile_model(module, args):
    """torch.compile(module) with --compile, else module itself. A retrained cell is fixed, so each mode
    (training without / with drop path, evaluation) compiles once for the whole run. The compiled wrapper
    only runs the module: state dicts are read from and loaded into the module itself (no `_orig_mod.`)."""
    return torch.compile(module) if args.compile else module


def run_evaluate(args, model, loaders, device, dist):
    """--evaluate: validate a checkpoint (ours or the reference's) and print one JSON line."""
    setup_logging(None, dist.is_main)
    ckpt = load_checkpoint(args.evaluate, map_location='cpu', inside=BEST)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    load_state_checked(model, state, args.evaluate)
    result = evaluate(compile_model(model, args), loaders.val, device, dist, args)
    if dist.is_main:
        print(json.dumps({'checkpoint': str(args.evaluate), **result}), flush=True)
        logger.info('evaluate %s: top1 %.4f top5 %.4f loss %.4f (%d images)', args.evaluate, result['val_top1'],
                    result['val_top5'], result['val_loss'], result['val_images'])
    dist.close()
    return result


def finished_epochs(ckpt):
    """Epochs a retrain checkpoint has finished. Ours store that number with the run's args; the reference's
    (keys epoch, state_dict, best_acc_top1, optimizer only) store the 0-based index of the last finished one."""
    return ckpt['epoch'] if 'args' in ckpt or 'scheduler' in ckpt else ckpt['epoch'] + 1


def check_retrain_checkpoint(args, ckpt):
    """UserError unless ckpt is a stage-3 checkpoint (ours or the reference's) of the cell --arch names."""
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt or 'epoch' not in ckpt:
        raise UserError(f'{args.resume} is not a retrain checkpoint (needs state_dict and epoch)')
    saved = ckpt.get('genotype')
    if saved is not None and genotypes.genotype_from_dict(saved) != genotypes.resolve_genotype(args.arch):
        trained = ckpt.get('args', {}).get('arch', 'another cell')
        raise UserError(f'{args.resume} was trained with --arch {trained}, not {args.arch}; pass --arch {trained} '
                        'to resume it, or choose another --save to train this cell')


def resume_state(args, model, optimizer, scheduler, scaler):
    """Restore what a checkpoint holds; the reference's hold weights, optimizer and epoch only. Returns
    (epochs finished, best top-1)."""
    ckpt, done = resume_training(args, model, optimizer, scaler, lambda c: check_retrain_checkpoint(args, c),
                                 finished_epochs)
    scheduler.last_epoch = done - 1
    scheduler.step()                               # sets the learning rate of epoch `done` (0-based)
    best = ckpt.get('best_acc_top1', 0.0)
    return done, float(best.item() if torch.is_tensor(best) else best)


def start_run(args, model, genotype, loaders, device, dist, optimizer, scheduler, scaler):
    """Resume (or start fresh), claim the run directory and describe the run. Returns (run, first epoch,
    best top-1 so far)."""
    start_epoch, best_acc = 0, 0.0
    if args.resume and not restarts_from_beginning(args.resume, CHECKPOINT):
        start_epoch, best_acc = resume_state(args, model, optimizer, scheduler, scaler)
    claim_run_dir(dist, args.save, CHECKPOINT, bool(args.resume))
    run = Run(args.save, args, is_main=dist.is_main)
    describe(model, args, genotype, device)
    logger.info('%d process(es) on %s, global batch %d (%d per process), %d train / %d val images%s',
                dist.world_size, device, args.batch_size, args.batch_size // dist.world_size,
                loaders.train_images, loaders.val_images, ', compiled' if args.compile else '')
    if dist.is_main:
        draw_cells(run, genotype)
        if args.resume:
            run.truncate_metrics('epoch', start_epoch)
            logger.info('resumed from %s after epoch %d (best top1 %.4f)', args.resume, start_epoch, best_acc)
    return run, start_epoch, best_acc


def save_epoch(run, args, epoch, model, optimizer, scheduler, scaler, genotype, best_acc, is_best):
    """Rank 0: model_best.pth.tar when this epoch is the best, then checkpoint.pth.tar (everything to resume),
    both from the uncompiled, unwrapped model."""
    state = {'epoch': epoch + 1, 'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'best_acc_top1': best_acc,
             'rng': get_rng_state(), 'args': vars(args), 'genotype': genotypes.genotype_to_dict(genotype)}
    if is_best:                     # before the checkpoint: a crash in between redoes this epoch
        save_checkpoint({k: state[k] for k in ('epoch', 'state_dict', 'best_acc_top1', 'args', 'genotype')},
                        run.path / BEST)
    save_checkpoint(state, run.path / CHECKPOINT)


def train_and_validate(args, epoch, model, nets, loaders, optimizer, scheduler, scaler, criterion, device, dist):
    """One epoch: train through nets.train, validate rank 0's model through nets.val, refuse anything
    non-finite. Returns the epoch's record (without best_top1)."""
    seed_everything(derive_seed(args.seed, 'epoch', epoch, dist.rank))   # drop-path masks, worker seeds
    model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
    lr = optimizer.param_groups[0]['lr']
    t0 = time.time()
    train = train_one_epoch(nets.train, loaders.train, optimizer, scaler, criterion, device, dist, args, epoch)
    scheduler.step()
    dist.broadcast_buffers(model)              # evaluate (and save) exactly rank 0's model
    val = evaluate(nets.val, loaders.val, device, dist, args)
    require_finite_loss(val['val_loss'], f'in epoch {epoch + 1}', diverged_fix(args), 'validation loss')
    require_finite_weights(model, f'in epoch {epoch + 1}', diverged_fix(args))     # before anything is saved
    return {'epoch': epoch + 1, 'lr': lr, 'drop_path_prob': model.drop_path_prob, **train, **val,
            'epoch_time': time.time() - t0}


class Nets(NamedTuple):
    """The callables that run the model: for training (DDP-wrapped under torchrun) and for evaluation (each
    compiled with --compile)."""
    train: nn.Module
    val: nn.Module


def make_nets(args, model, device, dist):
    train_net = compile_model(dist.wrap(model, device), args)
    val_net = train_net if not dist.enabled else compile_model(model, args)   # one process: the same wrapper
    return Nets(train_net, val_net)


def train(args, model, genotype, loaders, device, dist):
    """The training run (resumable): epochs from the checkpoint's to --epochs (or --stop_after)."""
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args))
    scaler = make_scaler(device, args.amp)
    run, start_epoch, best_acc = start_run(args, model, genotype, loaders, device, dist, optimizer, scheduler,
                                           scaler)
    nets = make_nets(args, model, device, dist)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
    record = {}
    for epoch in range(start_epoch, args.epochs):
        record = train_and_validate(args, epoch, model, nets, loaders, optimizer, scheduler, scaler, criterion,
                                    device, dist)
        is_best = record['val_top1'] >= best_acc
        best_acc = max(best_acc, record['val_top1'])
        record['best_top1'] = best_acc
        logger.info('epoch %d/%d lr %.5f train loss %.4f acc %.2f%% | val loss %.4f top1 %.2f%% top5 %.2f%% | '
                    '%.1fs, %.0f img/s', epoch + 1, args.epochs, record['lr'], record['train_loss'],
                    100 * record['train_acc'], record['val_loss'], 100 * record['val_top1'],
                    100 * record['val_top5'], record['epoch_time'], record['images_per_s'])
        run.log_metrics(record, step=epoch + 1)
        if dist.is_main:
            save_epoch(run, args, epoch, model, optimizer, scheduler, scaler, genotype, best_acc, is_best)
        if stop_requested(args, epoch, start_epoch, run.path / CHECKPOINT):
            break
    run.close()
    dist.barrier()
    dist.close()
    return record


@locks_released
def main(args):
    dist = Dist()
    device = choose_device(args.device, dist.local_rank)
    if args.batch_size % dist.world_size:
        raise UserError(f'--batch_size {args.batch_size} (global) must be divisible by the {dist.world_size} processes')
    seed_everything(args.seed)
    genotype = genotypes.resolve_genotype(args.arch)
    dist.init(device)
    loaders = make_loaders(args, device, dist)
    model = build_model(args, loaders.num_classes, genotype).to(device)
    model = model.to(memory_format=memory_format(args.channels_last))
    if args.evaluate:
        return run_evaluate(args, model, loaders, device, dist)
    return train(args, model, genotype, loaders, device, dist)


if __name__ == '__main__':
    run_cli(main, parse_args)
