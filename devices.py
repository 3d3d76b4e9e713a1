"""Devices and numerics: --device, --deterministic, mixed precision (--amp), the memory format of models and
batches; what machine a run had (Machine: CPU model, ISA, threads, torch, GPU)."""
import datetime
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from heap import keep_freed_memory
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


def choose_device(name='auto', local_rank=0, share=False, deterministic=False, benchmark=True, keep_heap=True):
    """--device auto|cpu|cuda -> torch.device (auto = cuda when available). The process of local rank r takes
    GPU r; with `share` (processes that exchange only small objects, as the search's ranks) GPU r mod the GPU
    count, so that several processes score on one GPU. `deterministic` (--deterministic): see use_deterministic;
    `benchmark`: let cuDNN time its algorithms (off for scoring, and under `deterministic`); `keep_heap`: on a CPU,
    keep freed memory for the next step (heap.keep_freed_memory)."""
    if name not in ('auto', 'cpu', 'cuda'):
        raise UserError(f'--device must be auto, cpu or cuda, got {name!r}')
    use_deterministic(deterministic)                 # before anything touches CUDA
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA device is visible; use --device cpu')
    if name == 'cpu' or not torch.cuda.is_available():
        if keep_heap:
            keep_freed_memory()
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


# --- the machine a result was measured on ---------------------------------------------------------------------

# The CPU instruction-set flags that decide most of a CPU's fp32 and bf16 speed in PyTorch.
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16')
BF16_FLAGS = ('avx512_bf16', 'amx_bf16')


def _cpuinfo():
    try:
        with open('/proc/cpuinfo') as f:
            return f.read()
    except OSError:
        return ''


def _cpuinfo_field(text, key):
    for line in text.splitlines():
        name, _, value = line.partition(':')
        if name.strip() == key:
            return value.strip()
    return None


def _lscpu_model():
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return _cpuinfo_field(out, 'Model name')


def cpu_model_and_flags():
    """(model name, the ISA_FLAGS it has): /proc/cpuinfo, else lscpu, else platform.processor()."""
    text = _cpuinfo()
    model = _cpuinfo_field(text, 'model name') or _lscpu_model() or platform.processor() or 'unknown'
    flags = set((_cpuinfo_field(text, 'flags') or '').split())
    return model, tuple(f for f in ISA_FLAGS if f in flags)


@dataclass(frozen=True)
class Machine:
    """The machine and software a result was measured with."""
    cpu: str                    # CPU model name
    isa: tuple                  # which of ISA_FLAGS the CPU has
    cpu_capability: str         # the kernels torch dispatches to (torch.backends.cpu.get_cpu_capability())
    logical_cpus: int           # os.cpu_count()
    usable_cpus: int            # the CPUs this process may run on (its affinity mask)
    threads: int                # torch.get_num_threads()
    torch: str
    date: str                   # UTC, ISO 8601, to the second
    gpu: Optional[str]          # the CUDA device's name on a CUDA run, else None

    @classmethod
    def here(cls, device='cpu'):
        model, isa = cpu_model_and_flags()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        gpu = torch.cuda.get_device_name() if str(device).startswith('cuda') and torch.cuda.is_available() else None
        return cls(cpu=model, isa=isa, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   logical_cpus=os.cpu_count() or 1, usable_cpus=usable or 1, threads=torch.get_num_threads(),
                   torch=torch.__version__,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), gpu=gpu)

    @property
    def cpu_bf16(self):
        """The CPU has bf16 instructions (AVX-512 BF16 or AMX), so bf16 autocast is worth timing on it."""
        return any(f in self.isa for f in BF16_FLAGS)

    def record(self):
        out = asdict(self)
        out['isa'] = list(self.isa)
        return out

    def line(self):
        """One readable line, as docs/performance.md quotes it."""
        where = f'{self.gpu}, ' if self.gpu else ''
        return (f'{where}{self.cpu} ({",".join(self.isa) or "none of " + ",".join(ISA_FLAGS)}; torch kernels '
                f'{self.cpu_capability}), {self.usable_cpus} of {self.logical_cpus} CPUs usable, {self.threads} '
                f'torch threads, torch {self.torch}, {self.date}')
