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
import sys
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import data  # noqa: E402
import genotypes  # noqa: E402
from retrain.retraining import KIND, build_model, image_size, read_given, run_evaluate, train  # noqa: E402
from retrain.train_loop import CHECKPOINT, make_loaders  # noqa: E402
from devices import add_deterministic_flag, choose_device, memory_format  # noqa: E402
from distributed import Dist  # noqa: E402
from seeding import seed_everything  # noqa: E402
from training import add_grad_form_flag, check_ranges, use_grad_form  # noqa: E402
from utils import (ArgumentParser, UserError, add_noop_flags, locks_released, pop_noop_flags,  # noqa: E402
                   refuse_other_kind, require, resolve_run_paths, run_cli)

DATASETS = ['imagenet'] + data.DATASETS
# Defaults per setting: the reference's for ImageNet, the DARTS evaluation protocol for the small images
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
    reference = p.add_argument_group('reference flags')
    _add_reference_flags(reference)
    _add_run_flags(reference)
    _add_additions(p.add_argument_group('additions'))
    add_noop_flags(p, {'note': str})           # the reference's free-text run note
    return p


def _add_reference_flags(g):
    g.add_argument('--data_root', '--data', dest='data', default=None,
                   help='ImageNet folder with train/ and val/, or the CIFAR / Fashion-MNIST / ImageNet16 folder')
    g.add_argument('--arch', default='GENAS_FLATNESS_CIFAR100', help='named genotype or genotype .json of the search')
    g.add_argument('--batch_size', type=int, default=None,
                   help='GLOBAL batch, split evenly over the processes, as the reference (per dataset: 1024 / 96; '
                        'stage 1\'s --batch_size is per process)')
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


def _add_run_flags(g):
    g.add_argument('--seed', type=int, default=0, help='seed')
    g.add_argument('--save', default=None, help='run directory; None means runs/retrain-<dataset>-<time>')
    g.add_argument('--report_freq', type=int, default=100, help='log a line every N steps')
    g.add_argument('--workers', type=int, default=None,
                   help='DataLoader workers per process for ImageNet (per dataset: 8 / 0)')
    g.add_argument('--resume', default=None, help='checkpoint.pth.tar (or its run directory) to continue')


def _add_additions(g):
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
    add_deterministic_flag(g)
    add_grad_form_flag(g)
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False,
                   help='torch.compile the network for training and evaluation (compiles once per mode at the start; '
                        'see docs/performance.md for when it pays off)')
    g.add_argument('--evaluate', default=None, metavar='CKPT', help='only validate this checkpoint')
    g.add_argument('--stop_after', type=int, default=0,
                   help='stop after N epochs of this invocation (resumable; 0: off)')


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    pop_noop_flags(args)
    if args.evaluate and args.resume:
        raise UserError('--evaluate only validates a checkpoint and --resume continues training one: pass one of them')
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
    check_ranges(args)
    require([(args.layers >= 3, '--layers must be >= 3'),
             (args.init_channels >= 2 and args.init_channels % 2 == 0, '--init_channels must be even and >= 2'),
             (0 <= args.drop_path_prob < 1, '--drop_path_prob must lie in [0, 1)'),
             (args.auxiliary_weight >= 0, f'--auxiliary_weight must be >= 0 (a negative weight rewards a wrong '
                                          f'auxiliary head), got {args.auxiliary_weight}')])
    return resolve_run_paths(args, CHECKPOINT, f'retrain-{args.dataset}')


@locks_released
def main(args):
    dist = Dist()
    device = choose_device(args.device, dist.local_rank, deterministic=args.deterministic)
    if args.batch_size % dist.world_size:
        raise UserError(f'--batch_size {args.batch_size} (global) must be divisible by the {dist.world_size} processes')
    if args.batch_size // dist.world_size < 2:
        raise UserError(f'--batch_size {args.batch_size} (global) gives {args.batch_size // dist.world_size} image per '
                        f'process and BatchNorm needs at least 2: pass --batch_size {2 * dist.world_size} or more')
    if not args.evaluate:
        refuse_other_kind(args.save, KIND)         # before any work: a supernet or search run is not resumed
    given = read_given(args)
    if not args.evaluate:
        recorded = None if given.resume is None else given.resume.get('args') or {}
        args.grad_form = use_grad_form(args.grad_form, recorded, args.resume)
    seed_everything(args.seed)
    genotype = genotypes.resolve_genotype(args.arch)
    with closing(dist.init(device)):               # the process group ends on every exit path
        loaders = make_loaders(args, device, dist)
        model = build_model(args, loaders.num_classes, genotype).to(device)
        model = model.to(memory_format=memory_format(args.channels_last))
        if args.evaluate:
            return run_evaluate(args, model, loaders, device, dist, given.evaluate)
        return train(args, model, genotype, loaders, device, dist, given.resume)

if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: f'rerun with --resume {args.save}')
