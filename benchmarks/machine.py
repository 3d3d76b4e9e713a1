"""What a benchmark number was measured on (the Machine record every result carries), this machine's measured
matmul peak, and the achieved GFLOP/s of a workload against it."""
import datetime
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

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


@dataclass(frozen=True)
class Peak:
    """The measured matmul throughput of this process: the best of `repeats` timed n x n products."""
    gflops: float
    median_gflops: float
    n: int
    repeats: int
    dtype: str

    def record(self):
        return asdict(self)


def matmul_peak(device, n=2048, repeats=5, dtype=torch.float32):
    """Peak of an n x n x n matmul (2 n^3 FLOPs) in `dtype` on `device`, timed here after one warm-up
    product, with the thread count this process has."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    torch.mm(a, b)
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return Peak(max(rates), statistics.median(rates), n, repeats, str(dtype).replace('torch.', ''))


def flops_of(macs, training):
    """FLOPs of `macs` multiply-adds of forward passes: 2 per multiply-add, times 3 for a training step (the
    backward pass costs about twice the forward: gradients of the inputs and of the weights)."""
    return 2 * macs * (3 if training else 1)


def achieved(flops_per_round, seconds, peak=None):
    """{'gflops_per_s', 'fraction_of_peak'} of timed rounds: the median over rounds of FLOPs / seconds."""
    rates = [f / s / 1e9 for f, s in zip(flops_per_round, seconds)]
    rate = statistics.median(rates)
    out = {'gflops_per_s': rate, 'gflops': statistics.median(flops_per_round) / 1e9}
    if peak is not None:
        out['fraction_of_peak'] = rate / peak.gflops
    return out
