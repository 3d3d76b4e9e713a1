"""This machine's measured matmul peak and the achieved GFLOP/s of a workload against it (the Machine record every
result carries is devices.Machine)."""
import statistics
import time
from dataclasses import asdict, dataclass

import torch


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
