"""Devices and numerics: --device, mixed precision (--amp), the memory format of models and batches."""
import torch

from utils import UserError


def choose_device(name='auto', local_rank=0, share=False):
    """--device auto|cpu|cuda -> torch.device (auto = cuda when available). The process of local rank r takes
    GPU r; with `share` (processes that exchange only small objects, as the search's ranks) GPU r mod the GPU
    count, so that several processes score on one GPU."""
    if name not in ('auto', 'cpu', 'cuda'):
        raise UserError(f'--device must be auto, cpu or cuda, got {name!r}')
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA device is visible; use --device cpu')
    if name == 'cpu' or not torch.cuda.is_available():
        return torch.device('cpu')
    count = torch.cuda.device_count()
    if local_rank >= count and not share:
        raise UserError(f'local rank {local_rank} needs a GPU of its own but {count} are visible; start at most '
                        f'{count} processes per node (--nproc_per_node)')
    torch.cuda.set_device(local_rank % count)
    torch.backends.cudnn.benchmark = True      # fixed input shapes: let cuDNN pick the fastest kernels
    return torch.device('cuda', local_rank % count)


def amp_dtype(device):
    """bf16 where the device supports it (CPUs, Ampere+ GPUs), else fp16 (which needs a GradScaler)."""
    if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def memory_format(channels_last):
    """The memory format --channels_last / --no-channels_last asks for (of the model and of every batch)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def make_scaler(device, amp):
    """A GradScaler that is active only for fp16 autocast."""
    return torch.amp.GradScaler(device.type, enabled=bool(amp) and amp_dtype(device) == torch.float16)

