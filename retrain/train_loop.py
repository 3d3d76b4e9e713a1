"""The one loop that trains and evaluates a stand-alone network under a training protocol (stage 3 and the
proxy study's ground truth), stage 3's data loaders, and exact distributed validation.

    state = make_training(model, protocol, device, schedule)       # SGD, the schedule, the (fp16) scaler
    record = train_network(state, Nets(model, model), loaders, protocol, plan, dist, device)
"""
import time
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from data import BatchLoader, imagenet_folders, load_arrays
from counting import topk_correct
from devices import amp_dtype, make_scaler, memory_format
from seeding import seed_everything
from training import EpochConfig, StepConfig, require_finite_loss, require_finite_weights, resume_hint, train_epoch
from utils import progress

CHECKPOINT = 'checkpoint.pth.tar'


def diverged_fix(save):
    """What to do after a divergence of the stage-3 run in `save`: a lower rate, resumed from the checkpoint
    that exists."""
    return f'lower --learning_rate (or drop --amp) and {resume_hint(save, CHECKPOINT)}'


@dataclass(frozen=True)
class Protocol:
    """How a stand-alone network is trained: the flags of stage 3 and of the ground truth with these names."""
    epochs: int
    learning_rate: float
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0              # 0: off
    auxiliary_weight: float = 0.4       # used where the network has an auxiliary head
    drop_path_prob: float = 0.0         # reached after the last epoch: epoch e (0-based) trains at p * e / epochs
    label_smooth: float = 0.0
    amp: bool = False
    report_freq: int = 100
    channels_last: bool = True

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @property
    def memory_format(self):
        return memory_format(self.channels_last)

    def drop_path_at(self, epoch):
        return self.drop_path_prob * epoch / self.epochs

    def step_config(self):
        return StepConfig(self.grad_clip, self.amp, self.auxiliary_weight, set_to_none=True)


class Loaders(NamedTuple):
    """What make_loaders gives: this process's loaders and the whole sets' sizes."""
    train: object                # a BatchLoader (images resident on the device) or a DataLoader (ImageNet)
    val: object
    train_images: int            # over all processes
    val_images: int
    num_classes: int


def make_loaders(args, device, dist):
    """Loaders of this process's shard: padded to equal length for training, disjoint for validation
    (exact totals)."""
    per_proc = args.batch_size // dist.world_size
    fmt = memory_format(args.channels_last)
    if args.dataset == 'imagenet':
        train_set, val_set = imagenet_folders(args.data, normalize=not args.no_normalize,
                                              pipeline=getattr(args, 'imagenet_pipeline', 'reference'))
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True,
                                                                  seed=args.seed)
        kw = dict(num_workers=args.workers, pin_memory=device.type == 'cuda', persistent_workers=False)
        train = torch.utils.data.DataLoader(train_set, per_proc, sampler=sampler, drop_last=True, **kw)
        shard = torch.utils.data.Subset(val_set, range(dist.rank, len(val_set), dist.world_size))
        val = torch.utils.data.DataLoader(shard, per_proc, shuffle=False, **kw)
        return Loaders(train, val, len(train_set), len(val_set), len(train_set.classes))
    train_set = load_arrays(args.dataset, args.data, train=True, download=args.download)
    test_set = load_arrays(args.dataset, args.data, train=False, download=args.download)
    if device.type == 'cuda':                      # whole sets resident on the GPU, batches never copied
        train_set, test_set = train_set.to(device), test_set.to(device)
    train_idx = torch.arange(len(train_set))
    if args.train_subset:
        g = torch.Generator().manual_seed(args.seed)
        train_idx = torch.randperm(len(train_set), generator=g)[:args.train_subset]
    test_idx = torch.arange(len(test_set))[:args.test_subset or None]
    train = BatchLoader(train_set, train_idx, per_proc, device, shuffle=True, augment=True, cutout=args.cutout_length,
                        seed=args.seed, rank=dist.rank, world_size=dist.world_size, memory_format=fmt)
    val = BatchLoader(test_set, test_idx, per_proc, device, rank=dist.rank, world_size=dist.world_size,
                      memory_format=fmt, even_shards=False)
    return Loaders(train, val, len(train_idx), len(test_idx), train_set.num_classes)


def _batches(loader, device, fmt):
    """(x, y) on the device from a BatchLoader (already there) or a DataLoader."""
    if isinstance(loader, BatchLoader):
        yield from loader
        return
    for x, y in loader:
        yield (x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device, non_blocking=True))


def set_epoch(loader, epoch):
    if isinstance(loader, BatchLoader):
        loader.set_epoch(epoch)
    else:
        loader.sampler.set_epoch(epoch)


def train_one_epoch(net, loader, optimizer, scaler, criterion, protocol, epoch, fix, dist, device):
    """One epoch (the shared loop); the loss / top-1 over all processes and the global images per second."""
    set_epoch(loader, epoch)
    cfg = EpochConfig(epoch, protocol.epochs, protocol.report_freq, fix)
    out = train_epoch(net, _batches(loader, device, protocol.memory_format), len(loader), optimizer, scaler,
                      criterion, protocol.step_config(), cfg, dist, device)
    return {'train_loss': out.loss, 'train_acc': out.acc, 'images_per_s': out.images / out.seconds,
            'train_images': out.images}


@torch.inference_mode()
def evaluate(model, loader, device, dist, amp=False, fmt=torch.contiguous_format):
    """Exact top-1 / top-5 / mean loss over the whole validation set (sums reduced over processes); fmt: the
    memory format of batches from a DataLoader."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)    # sums stay on the device
    c1 = torch.zeros((), dtype=torch.long, device=device)
    c5 = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in progress(_batches(loader, device, fmt), is_main=dist.is_main, total=len(loader), desc='val'):
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            logits, _ = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction='sum').double()
        top1, top5 = topk_correct(logits, y, (1, 5))
        c1 += top1
        c5 += top5
        seen += len(y)
    loss_sum, c1, c5, seen = dist.all_reduce_sum([loss_sum.item(), c1.item(), c5.item(), seen], device)
    return {'val_loss': loss_sum / max(seen, 1), 'val_top1': c1 / max(seen, 1), 'val_top5': c5 / max(seen, 1),
            'val_images': int(seen)}


class TrainState(NamedTuple):
    """What the epochs advance (and a checkpoint saves): the unwrapped network, its optimizer, schedule, scaler."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object


def make_training(model, protocol, device, schedule):
    """SGD with the protocol's rate, momentum and weight decay; schedule(optimizer) gives the LR scheduler."""
    optimizer = torch.optim.SGD(model.parameters(), protocol.learning_rate, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    return TrainState(model, optimizer, schedule(optimizer), make_scaler(device, protocol.amp))


class Nets(NamedTuple):
    """The callables that run the model: for training (DDP-wrapped under torchrun) and for evaluation (each
    compiled with --compile); the model itself in one plain process."""
    train: nn.Module
    val: nn.Module


class EpochPlan(NamedTuple):
    """The run around the epochs: where it starts, how each epoch is seeded, what happens after each."""
    epoch_seed: Callable[[int], int]      # seeds every RNG before epoch e (drop-path masks, worker seeds)
    fix: str                              # what a divergence error tells the user to do
    start_epoch: int = 0
    validate: bool = True                 # validate (and check the weights) after every epoch
    after_epoch: Callable[[dict], bool] = lambda record: False      # the stage's bookkeeping; True: stop


def _validate(state, nets, loaders, protocol, epoch, fix, dist, device):
    dist.broadcast_buffers(state.model)              # evaluate (and save) exactly rank 0's model
    val = evaluate(nets.val, loaders.val, device, dist, protocol.amp, protocol.memory_format)
    require_finite_loss(val['val_loss'], f'in epoch {epoch + 1}', fix, 'validation loss')
    require_finite_weights(state.model, f'in epoch {epoch + 1}', fix)     # before anything is saved
    return val


def run_epoch(state, nets, loaders, criterion, protocol, epoch, plan, dist, device):
    """One epoch: train through nets.train at the epoch's drop-path probability, step the schedule, and with
    plan.validate validate rank 0's model through nets.val, refusing anything non-finite. Returns its record."""
    seed_everything(plan.epoch_seed(epoch))
    state.model.drop_path_prob = protocol.drop_path_at(epoch)
    lr = state.optimizer.param_groups[0]['lr']
    t0 = time.time()
    train = train_one_epoch(nets.train, loaders.train, state.optimizer, state.scaler, criterion, protocol, epoch,
                            plan.fix, dist, device)
    state.scheduler.step()
    record = {'epoch': epoch + 1, 'lr': lr, 'drop_path_prob': state.model.drop_path_prob, **train}
    if plan.validate:
        record.update(_validate(state, nets, loaders, protocol, epoch, plan.fix, dist, device))
    record['epoch_time'] = time.time() - t0
    return record


def train_network(state, nets, loaders, protocol, plan, dist, device):
    """Epochs plan.start_epoch .. protocol.epochs (until plan.after_epoch asks to stop); the last record."""
    criterion = nn.CrossEntropyLoss(label_smoothing=protocol.label_smooth)
    record = {}
    for epoch in range(plan.start_epoch, protocol.epochs):
        record = run_epoch(state, nets, loaders, criterion, protocol, epoch, plan, dist, device)
        if plan.after_epoch(record):
            break
    return record
