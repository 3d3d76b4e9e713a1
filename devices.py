"""Devices and numerics: --device, --deterministic, mixed precision (--amp), the memory format of models and
batches."""
import os

import torch

from utils import UserError

# cuBLAS needs a fixed workspace for reproducible results (read when its first handle is made).
CUBLAS_WORKSPACE = ':4096:8'


def add_deterministic_flag(parser):
    """--deterministic, one help text for every stage that trains or scores."""
    parser.add_argument('--deterministic', action='store_true',
                        help='GPU: deterministic algorithms (cuDNN benchmark off, '
                             'torch.use_deterministic_algorithms, warning for an op without one; '
                             'CUBLAS_WORKSPACE_CONFIG=:4096:8), so that a '
                             'resumed run equals an uninterrupted one bit for bit and equal inputs give equal '
                             'scores; slower. A CPU run is deterministic without it')
    return parser


def use_deterministic(on):
    """With `on`: deterministic algorithms only, and cuBLAS's fixed workspace (set before CUDA starts, or it has
    no effect). Off: nothing is changed."""
    if not on:
        return
    if torch.cuda.is_initialized() and os.environ.get('CUBLAS_WORKSPACE_CONFIG') != CUBLAS_WORKSPACE:
        raise UserError('--deterministic must be applied before CUDA is initialised; set '
                        f'CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} in the environment')
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)
    # warn_only: the one op of these networks without a deterministic CUDA kernel is the backward of the global
    # average pooling (AdaptiveAvgPool2d(1)), whose atomic adds write each input element once (the pooling windows
    # do not overlap), so its result is deterministic anyway; any other such op warns with its name.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def choose_device(name='auto', local_rank=0, share=False, deterministic=False, benchmark=True):
    """--device auto|cpu|cuda -> torch.device (auto = cuda when available). The process of local rank r takes
    GPU r; with `share` (processes that exchange only small objects, as the search's ranks) GPU r mod the GPU
    count, so that several processes score on one GPU. `deterministic` (--deterministic): see use_deterministic;
    `benchmark`: let cuDNN time its algorithms (off for scoring, and under `deterministic`)."""
    if name not in ('auto', 'cpu', 'cuda'):
        raise UserError(f'--device must be auto, cpu or cuda, got {name!r}')
    use_deterministic(deterministic)                 # before anything touches CUDA
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA device is visible; use --device cpu')
    if name == 'cpu' or not torch.cuda.is_available():
        return torch.device('cpu')
    count = torch.cuda.device_count()
    if local_rank >= count and not share:
        raise UserError(f'local rank {local_rank} needs a GPU of its own but {count} are visible; start at most '
                        f'{count} processes per node (--nproc_per_node)')
    torch.cuda.set_device(local_rank % count)
    # Fixed input shapes: cuDNN may time its kernels and keep the fastest, which can differ between runs and
    # between processes sharing a GPU, so not where results must be reproducible.
    torch.backends.cudnn.benchmark = benchmark and not deterministic
    return torch.device('cuda', local_rank % count)


def native_bf16():
    """True where the current GPU computes bf16 natively (Ampere and later); emulated bf16 does not count. Older
    torch versions without `including_emulation` count only native support anyway."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def amp_dtype(device):
    """bf16 where the device computes it natively (CPUs, Ampere+ GPUs), else fp16 (which needs a GradScaler):
    a V100 or T4 emulates bf16, much slower than its fp16 tensor cores."""
    if device.type == 'cuda' and not native_bf16():
        return torch.float16
    return torch.bfloat16


def memory_format(channels_last):
    """The memory format --channels_last / --no-channels_last asks for (of the model and of every batch)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def make_scaler(device, amp):
    """A GradScaler that is active only for fp16 autocast."""
    return torch.amp.GradScaler(device.type, enabled=bool(amp) and amp_dtype(device) == torch.float16)
