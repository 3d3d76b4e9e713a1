"""The torchrun environment: one helper that reads RANK / WORLD_SIZE / LOCAL_RANK, falls back to one process,
and gates what only rank 0 does."""
import itertools
import os

import torch
import torch.distributed as dist

from utils import UserError


class Dist:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""

    def __init__(self):
        self.rank = int(os.environ.get('RANK', 0))
        self.world_size = int(os.environ.get('WORLD_SIZE', 1))
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))

    @classmethod
    def single(cls):
        """One process whatever the environment says: for a loop that a torchrun rank runs on its own (the proxy
        study's ground truth trains whole (cell, seed) pairs per rank)."""
        solo = cls.__new__(cls)
        solo.rank, solo.world_size, solo.local_rank = 0, 1, 0
        return solo

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def init(self, device, backend=None):
        """Start the process group: `backend`, by default nccl on CUDA and gloo on CPU."""
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend or ('nccl' if device.type == 'cuda' else 'gloo'))
        return self

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values, device):
        """Sum a list of numbers over all ranks (exact for integer counts below 2**53)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn):
        """fn() run on rank 0 only, its result (or its UserError) given to every rank."""
        result = None
        if self.is_main:
            try:
                result = ('ok', fn())
            except UserError as e:
                result = ('error', str(e))
        if self.enabled:
            box = [result]
            dist.broadcast_object_list(box, 0)
            result = box[0]
        if result[0] == 'error':
            raise UserError(result[1])
        return result[1]

    def broadcast_buffers(self, model):
        """Give every rank rank 0's buffers (BN statistics). DDP syncs them at the start of each training
        forward, so after the last step each rank holds statistics updated by its own batch only."""
        if self.enabled:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def broadcast_module(self, model):
        """Every rank gets rank 0's parameters and buffers, as DistributedDataParallel's constructor gives them
        (for a model trained without it, see average_gradients)."""
        if self.enabled:
            for t in itertools.chain(model.parameters(), model.buffers()):
                dist.broadcast(t.detach(), 0)

    def average_gradients(self, params):
        """Average the gradients of `params` over the ranks, as DistributedDataParallel does (each divided by the
        world size, then summed), in one all-reduce per dtype. Every rank must pass the same parameters in the
        same order, each with a gradient on every rank or on none."""
        if not self.enabled:
            return
        grads, seen = {}, set()
        for p in params:
            if p.grad is not None and id(p) not in seen:       # a parameter listed twice is averaged once
                seen.add(id(p))
                grads.setdefault(p.grad.dtype, []).append(p.grad)
        for group in grads.values():
            flat = torch.cat([g.reshape(-1) for g in group]).div_(self.world_size)
            dist.all_reduce(flat)
            for g, part in zip(group, flat.split([g.numel() for g in group])):
                g.copy_(part.view_as(g))

    def wrap(self, model, device, **ddp_kwargs):
        """model in DistributedDataParallel under torchrun (gradients averaged over ranks), else model itself.
        Save and evaluate the unwrapped model: its state_dict has no `module.` prefix."""
        if not self.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, **ddp_kwargs)

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

