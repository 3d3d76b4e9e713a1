"""Throughput benchmarks; prints one JSON object.

    python3 benchmarks/bench.py                       # full settings, CPU
    python3 benchmarks/bench.py --device cuda         # on a GPU
    python3 benchmarks/bench.py --tiny                # seconds; what CI runs so the script cannot rot

Each workload runs in its own Python process (so its peak RSS is its own); its time is the median
of --repeats timed runs after --warmup untimed ones. Synthetic data, fp32, the thread count of
torch (set OMP_NUM_THREADS / --threads to change it).
"""
import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORE_METRICS = ['wlm', 'angle', 'acc', 'angle+wlm']
WORKLOADS = ['supernet_train'] + [f'score_{m}' for m in SCORE_METRICS] + ['retrain_cifar']


def settings(tiny):
    if tiny:
        return {'C': 4, 'layers': 3, 'batch': 8, 'steps': 2, 'warmup': 1, 'repeats': 2,
                'bn_images': 16, 'val_images': 32, 'test_batch': 32, 'stds': [0.001, 0.003, 0.006]}
    return {'C': 16, 'layers': 8, 'batch': 64, 'steps': 10, 'warmup': 3, 'repeats': 5,
            'bn_images': 256, 'val_images': 512, 'test_batch': 256, 'stds': [0.001, 0.003, 0.006]}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_supernet_train(device, s, channels_last=True):
    """Images/s of stage-1 SPOS steps (random path each step), as train_supernet/train.py runs them."""
    import torch
    import genotypes
    from data import BatchLoader, synthetic_arrays
    from train_supernet.super_model import Network
    from train_supernet.train import train_step
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = Network(s['C'], 10, s['layers']).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    data = synthetic_arrays(s['batch'] * s['steps'])
    loader = BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True,
                         memory_format=fmt)
    rng, crit = random.Random(0), torch.nn.CrossEntropyLoss()

    def run():
        for x, y in loader:
            train_step(model, x, y, genotypes.random_candidate(rng), opt, crit, 5.0)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    times = _timed(run, s)
    return {'images_per_s': s['batch'] * s['steps'] / statistics.median(times), 'seconds': times}


def bench_score(device, s, metric):
    """Seconds per candidate of a stage-2 metric (a new random candidate each time, as in a search)."""
    import argparse
    import torch
    import genotypes
    from data import load_search_data
    from evolutionary_search.metrics import METRICS, ScoringContext
    from train_supernet.super_model import Network
    torch.manual_seed(0)
    init = Network(s['C'], 10, s['layers']).to(device)
    model = Network(s['C'], 10, s['layers']).to(device).to(memory_format=torch.channels_last).eval()
    data = load_search_data(argparse.Namespace(dataset='synthetic', data=None, download=False, split_data=1,
                                               train_portion=0.5, split_seed=0, split_file=None, train_subset=0,
                                               valid_subset=0, random_label=0))
    ctx = ScoringContext(model=model, init_model=init, data=data, device=device, seed=0, stds=tuple(s['stds']),
                         batch_size=s['batch'], test_batch_size=s['test_batch'], max_train_img_size=s['bn_images'],
                         max_val_img_size=s['val_images'], acc_train_img_size=s['bn_images'],
                         acc_val_img_size=s['val_images'], wlm_weight=16.0, memory_format=torch.channels_last)
    rng = random.Random(0)

    def run():
        METRICS[metric](ctx, genotypes.random_candidate(rng))
        if device.type == 'cuda':
            torch.cuda.synchronize()
    times = _timed(run, s)
    return {'seconds_per_candidate': statistics.median(times), 'seconds': times}


def bench_retrain_cifar(device, s, channels_last=True):
    """Images/s of stage-3 NetworkCIFAR training (GENAS_FLATNESS_CIFAR10, auxiliary head, drop path 0.2,
    cutout 16: the DARTS protocol), as retrain/retrain.py runs it."""
    import argparse
    import torch
    import genotypes
    from data import BatchLoader, synthetic_arrays
    from retrain.model import NetworkCIFAR
    from retrain.train_loop import train_step
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = NetworkCIFAR(s['C'], 10, s['layers'], True, genotypes.GENAS_FLATNESS_CIFAR10).to(device)
    model = model.to(memory_format=fmt).train()
    model.drop_path_prob = 0.2
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    data = synthetic_arrays(s['batch'] * s['steps'])
    loader = BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True, cutout=16,
                         memory_format=fmt)
    args = argparse.Namespace(amp=False, auxiliary_weight=0.4, grad_clip=5.0)
    crit = torch.nn.CrossEntropyLoss()

    def run():
        for x, y in loader:
            train_step(model, x, y, opt, scaler, crit, args, device, torch.bfloat16)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    times = _timed(run, s)
    return {'images_per_s': s['batch'] * s['steps'] / statistics.median(times), 'seconds': times}


def _timed(fn, s):
    for _ in range(s['warmup']):
        fn()
    times = []
    for _ in range(s['repeats']):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def worker(name, device_name, tiny):
    import torch
    from utils import choose_device
    device = choose_device(device_name)
    if name.startswith('score_'):
        result = bench_score(device, settings(tiny), name[len('score_'):])
    else:
        result = {'supernet_train': bench_supernet_train,
                  'retrain_cifar': bench_retrain_cifar}[name](device, settings(tiny))
    result['peak_rss_mb'] = _peak_rss_mb()
    result['threads'] = torch.get_num_threads()
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'auto'], help='device (default: cpu)')
    p.add_argument('--tiny', action='store_true', help='tiny shapes, a few steps (default: off)')
    p.add_argument('--only', default=','.join(WORKLOADS), help=f'comma-separated subset of {WORKLOADS}')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.device, args.tiny)
    import torch
    out = {'device': args.device, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
           'settings': settings(args.tiny), 'results': {}}
    for name in args.only.split(','):
        if name not in WORKLOADS:
            p.error(f'unknown workload {name!r}; choose from {WORKLOADS}')
        proc = subprocess.run([sys.executable, __file__, '--worker', name, '--device', args.device]
                              + (['--tiny'] if args.tiny else []), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f'benchmark {name} failed:\n{proc.stderr[-2000:]}')
        out['results'][name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    main()
