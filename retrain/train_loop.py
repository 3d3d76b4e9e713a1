"""Data loaders, one training epoch and exact distributed validation for stage 3."""
import time
from typing import NamedTuple

import torch
import torch.nn as nn

from data import BatchLoader, imagenet_folders, load_arrays
from counting import topk_correct
from devices import amp_dtype, memory_format
from training import backward_and_step, require_finite_loss, resume_hint
from utils import logger, progress

CHECKPOINT = 'checkpoint.pth.tar'


def diverged_fix(args):
    """What to do after a divergence: a lower rate, resumed from the checkpoint that exists."""
    return f'lower --learning_rate (or drop --amp) and {resume_hint(args.save, CHECKPOINT)}'


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


def train_step(net, x, y, optimizer, scaler, criterion, args, device):
    """Forward (with the auxiliary loss), backward, clip, step; returns (logits, loss)."""
    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
        logits, logits_aux = net(x)
        loss = criterion(logits, y)
        if logits_aux is not None:
            loss = loss + args.auxiliary_weight * criterion(logits_aux, y)
    optimizer.zero_grad(set_to_none=True)
    backward_and_step(loss, optimizer, scaler, net.parameters(), args.grad_clip)
    return logits, loss


def train_one_epoch(net, loader, optimizer, scaler, criterion, device, dist, args, epoch):
    """One epoch; returns the loss / top-1 over all processes and the global images per second."""
    net.train()
    set_epoch(loader, epoch)
    fmt = memory_format(args.channels_last)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, t0 = 0, time.time()
    bar = progress(_batches(loader, device, fmt), is_main=dist.is_main, total=len(loader),
                   desc=f'epoch {epoch + 1}/{args.epochs}')
    for step, (x, y) in enumerate(bar):
        logits, loss = train_step(net, x, y, optimizer, scaler, criterion, args, device)
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if (step + 1) % args.report_freq == 0:
            avg = loss_sum.item() / seen
            require_finite_loss(avg, f'at epoch {epoch + 1} step {step + 1}', diverged_fix(args))
            logger.info('train epoch %d step %d/%d loss %.4f acc %.2f%%', epoch + 1, step + 1, len(loader), avg,
                        100 * correct.item() / seen)
    elapsed = time.time() - t0
    total_loss, total_correct, total_seen = dist.all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
    require_finite_loss(total_loss, f'in epoch {epoch + 1}', diverged_fix(args))
    return {'train_loss': total_loss / total_seen, 'train_acc': total_correct / total_seen,
            'images_per_s': total_seen / elapsed, 'train_images': int(total_seen)}


@torch.inference_mode()
def evaluate(model, loader, device, dist, args):
    """Exact top-1 / top-5 / mean loss over the whole validation set (sums reduced over processes)."""
    model.eval()
    fmt = memory_format(args.channels_last)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)    # sums stay on the device
    c1 = torch.zeros((), dtype=torch.long, device=device)
    c5 = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in progress(_batches(loader, device, fmt), is_main=dist.is_main, total=len(loader), desc='val'):
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            logits, _ = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction='sum').double()
        top1, top5 = topk_correct(logits, y, (1, 5))
        c1 += top1
        c5 += top5
        seen += len(y)
    loss_sum, c1, c5, seen = dist.all_reduce_sum([loss_sum.item(), c1.item(), c5.item(), seen], device)
    return {'val_loss': loss_sum / max(seen, 1), 'val_top1': c1 / max(seen, 1), 'val_top5': c5 / max(seen, 1),
            'val_images': int(seen)}
