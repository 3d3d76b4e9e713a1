"""Throughput benchmarks of the three stages; prints one JSON object.

    python3 benchmarks/bench.py                       # the default workloads, CPU (several minutes)
    python3 benchmarks/bench.py --levers              # also each speed lever switched off, to see what it gives
    python3 benchmarks/bench.py --profile             # also the top ops and modules of the main workloads
    python3 benchmarks/bench.py --device cuda         # on a GPU (adds AMP variants; under 5 minutes)
    python3 benchmarks/bench.py --tiny                # seconds; what CI runs so the script cannot rot
    python3 benchmarks/bench.py --device cuda --search_ranks 1,2,4   # a search with 1, 2, 4 ranks on one GPU
    python3 benchmarks/bench.py --only retrain_compile          # stage 3 eager vs torch.compile (CPU: ~30 min)
    python3 benchmarks/bench.py --only retrain_compile,retrain_compile:amp --device cuda   # on a GPU, fp32 and AMP

Each workload runs in its own Python process (so its peak RSS is its own); its time is the median of
`repeats` timed runs after `warmup` untimed ones. Synthetic data, fp32 unless a variant says amp (bf16
autocast: on a GPU, and on a CPU with bf16 instructions), the thread count torch picks (OMP_NUM_THREADS
changes it). Every result carries the machine (CPU model and ISA flags, torch's CPU kernels, CPUs, threads,
torch version, date, GPU) and, where its multiply-adds are counted, its achieved GFLOP/s and the fraction
of this process's measured matmul peak. Settings: supernet C=16, 8 layers, batch 64; scoring with 256 BN
images (batch 64) and 512 validation images, stds 0.001/0.003/0.006; NetworkCIFAR C=16, 8 layers,
batch 64, GENAS_FLATNESS_CIFAR10 with auxiliary head, drop-path 0.2 and cutout 16 (the DARTS protocol);
NAS-Bench-201 supernet C=8, 5 cells per stage, batch 64; ground truth: one sampled cell, C=8, 5 cells,
batch 64, the proxy study's protocol.
"""
import argparse
import copy
import itertools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402

import genotypes  # noqa: E402
import operations  # noqa: E402
from benchmarks.machine import achieved, flops_of, matmul_peak  # noqa: E402
from benchmarks.profiling import format_profile, profile_round  # noqa: E402
from counting import count_macs  # noqa: E402
from data import BatchLoader, SearchData, synthetic_arrays  # noqa: E402
from devices import Machine, amp_dtype, choose_device, make_scaler  # noqa: E402
from evolutionary_search import metrics  # noqa: E402
from proxy_study.cells import sample_cells  # noqa: E402
from retrain.train_loop import Protocol  # noqa: E402
from spaces import get_space  # noqa: E402
from spaces.darts_supernet import Network  # noqa: E402
from heap import DEFAULT_HEADROOM, HeapTrimmer  # noqa: E402
from train_supernet.supernet_training import supernet_step  # noqa: E402
from training import StepConfig, train_step  # noqa: E402
from utils import ArgumentParser, UserError, run_cli  # noqa: E402

SCORE_METRICS = ['wlm', 'angle', 'acc', 'angle+wlm']
WORKLOADS = (['supernet_train'] + [f'score_{m}' for m in SCORE_METRICS]
             + ['retrain_cifar', 'nb201_supernet_train', 'ground_truth_train'])
PROFILED = ['supernet_train', 'score_wlm', 'retrain_cifar']         # --profile: these, in every variant
# Each lever switched off (or the reference's way), to measure what it gives.
LEVERS = ['supernet_train:contiguous', 'supernet_train:reference_forward', 'supernet_train:no_trim',
          'supernet_train:low_memory',
          'score_wlm:contiguous',
          'score_wlm:reference_forward', 'score_wlm:no_grad', 'score_wlm:test_batch_256', 'score_wlm:deepcopy',
          'retrain_cifar:contiguous', 'nb201_supernet_train:contiguous', 'ground_truth_train:contiguous',
          'supernet_train:direct_grads', 'supernet_train:polyphase_grads', 'retrain_cifar:direct_grads',
          'retrain_cifar:relu_per_cell', 'ground_truth_train:direct_grads', 'ground_truth_train:polyphase_grads',
          'data:tensor_batches', 'data:pil_per_image',
          'supernet_train:trimmed_heap', 'score_wlm:trimmed_heap', 'retrain_cifar:trimmed_heap',
          'ground_truth_train:trimmed_heap']
GPU_VARIANTS = ['supernet_train:amp', 'retrain_cifar:amp', 'nb201_supernet_train:amp', 'ground_truth_train:amp',
                'score_wlm:test_batch_64']
# bf16 autocast on a CPU with bf16 instructions (Machine.cpu_bf16); skipped, with a note, on other CPUs.
CPU_BF16_VARIANTS = ['supernet_train:amp', 'retrain_cifar:amp', 'nb201_supernet_train:amp']
AMP_VARIANTS = sorted({n for n in GPU_VARIANTS + CPU_BF16_VARIANTS if n.endswith(':amp')})


def settings(tiny):
    if tiny:
        return {'C': 4, 'layers': 3, 'batch': 8, 'steps': 2, 'warmup': 1, 'repeats': 2,
                'bn_images': 16, 'val_images': 32, 'stds': [0.001, 0.003, 0.006],
                'nb201_C': 4, 'nb201_layers': 1, 'gt_C': 4, 'gt_layers': 3, 'tiny': True}
    return {'C': 16, 'layers': 8, 'batch': 64, 'steps': 10, 'warmup': 3, 'repeats': 5,
            'bn_images': 256, 'val_images': 512, 'stds': [0.001, 0.003, 0.006],
            'nb201_C': 8, 'nb201_layers': 5, 'gt_C': 8, 'gt_layers': 5, 'tiny': False}


def _timed(fn, s):
    for _ in range(s['warmup']):
        fn()
    times = []
    for _ in range(s['repeats']):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _use_reference_forward():
    """Make the supernet compute every op's own ReLU and the `none` edges, as the reference does."""
    Network.forward_candidate = lambda self, x, c: self.forward_reference(x, c[:14], c[14:])


@dataclass
class Workload:
    """A workload ready to time: run() is one timed round; flops(i) the FLOPs of round i (0-based, warm-up rounds
    counted), None where nothing is counted; `images` per round (None: a round is one candidate)."""
    run: Callable[[], None]
    model: torch.nn.Module
    images: Optional[int]
    flops: Optional[Callable[[int], float]] = None
    extra: Callable[[], dict] = dict
    amp: bool = False


class PathMacs:
    """Multiply-adds of one image through each path of a supernet (count_macs at batch 1, remembered per path):
    every counted op (convolutions, matrix products) is linear in the batch."""

    def __init__(self, model, space, device, fmt):
        self.model, self.space, self.cache = model, space, {}
        self.x = torch.zeros(1, 3, 32, 32, device=device).to(memory_format=fmt)

    def __call__(self, cand):
        key = tuple(cand)
        if key not in self.cache:
            self.cache[key] = count_macs(self.model, self.x, *self.space.forward_args(cand))
        return self.cache[key]


def _paths(space, s, rounds_extra=1):
    """The fixed sequence of random paths of a training workload, steps per round, for the warm-up, timed and
    profiled rounds (random.Random(0), one draw per step as a run draws them)."""
    rng = random.Random(0)
    n = (s['warmup'] + s['repeats'] + rounds_extra) * s['steps']
    return [space.random_candidate(rng) for _ in range(n)]


def _fmt(variant):
    return torch.contiguous_format if variant == 'contiguous' else torch.channels_last


def _train_loader(device, s, fmt, cutout=0):
    data = synthetic_arrays(s['batch'] * s['steps']).to(device)
    return BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True, cutout=cutout,
                       memory_format=fmt)


def _supernet_workload(device, s, variant, space, model):
    """SPOS steps through supernet_step (a fixed sequence of random paths), as train_supernet/train.py runs them."""
    fmt = _fmt(variant)
    model = model.to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    loader, crit = _train_loader(device, s, fmt), torch.nn.CrossEntropyLoss()
    amp = variant == 'amp'
    scaler = make_scaler(device, amp)
    cfg = StepConfig(5.0, amp, set_to_none=False)          # --grad_clip 5, --zero_grad inplace
    headroom = {'no_trim': -1.0, 'low_memory': 0.0}.get(variant, DEFAULT_HEADROOM)
    trim_heap = HeapTrimmer(device, headroom)
    paths, rounds, macs = _paths(space, s), itertools.count(), PathMacs(model, space, device, fmt)

    def run():
        r = next(rounds)
        for k, (x, y) in enumerate(loader):
            supernet_step(model, x, y, paths[r * s['steps'] + k], opt, scaler, crit, cfg, space)
            trim_heap()
        _sync(device)

    def flops(r):
        step_paths = paths[r * s['steps']:(r + 1) * s['steps']]
        return flops_of(s['batch'] * sum(macs(c) for c in step_paths), training=True)
    return Workload(run, model, s['batch'] * s['steps'], flops, lambda: {'heap_trims': trim_heap.trims}, amp)


def bench_supernet_train(device, s, variant):
    """Stage-1 SPOS steps of the DARTS supernet (C, layers, batch of the settings)."""
    if variant == 'reference_forward':
        _use_reference_forward()
    torch.manual_seed(0)
    return _supernet_workload(device, s, variant, get_space('darts'), Network(s['C'], 10, s['layers']))


def bench_nb201_supernet_train(device, s, variant):
    """Stage-1 SPOS steps of the NAS-Bench-201 supernet (train_supernet/train.py --space nb201): nb201_C,
    nb201_layers cells per stage, the settings' batch, 32x32 images."""
    torch.manual_seed(0)
    space = get_space('nb201')
    return _supernet_workload(device, s, variant, space, space.build_supernet(s['nb201_C'], 10, s['nb201_layers']))


def score_images(metric, s):
    """Images one candidate's score forwards through its path: BN recalibration, then the validation images once
    per noise level (wlm) or once (acc); angle forwards none."""
    bn = math.ceil(s['bn_images'] / s['batch']) * s['batch']
    return {'wlm': bn + len(s['stds']) * s['val_images'], 'angle+wlm': bn + len(s['stds']) * s['val_images'],
            'acc': bn + s['val_images']}.get(metric, 0)


def bench_score(device, s, metric, variant):
    """A stage-2 metric (a new random candidate each round, as in a search); FLOPs of its forwards."""
    if variant == 'reference_forward':
        _use_reference_forward()
    if variant == 'no_grad':
        metrics.evaluate_candidate = torch.no_grad()(metrics.evaluate_candidate.__wrapped__)
    torch.manual_seed(0)
    fmt = _fmt(variant)
    init = Network(s['C'], 10, s['layers']).to(device)
    model = Network(s['C'], 10, s['layers']).to(device).to(memory_format=fmt).eval()
    arrays = synthetic_arrays(2 * max(s['bn_images'], s['val_images']))
    half = len(arrays) // 2
    data = SearchData(arrays, torch.arange(half), arrays, torch.arange(half, len(arrays)), 10).resident(device)
    test_batch = int(variant.rsplit('_', 1)[1]) if variant.startswith('test_batch') else \
        (64 if device.type == 'cpu' else 512)
    ctx = metrics.ScoringContext(model=model, init_model=init, data=data, device=device, seed=0,
                                 stds=tuple(s['stds']), batch_size=s['batch'], test_batch_size=test_batch,
                                 max_train_img_size=s['bn_images'], max_val_img_size=s['val_images'],
                                 acc_train_img_size=s['bn_images'], acc_val_img_size=s['val_images'],
                                 wlm_weight=16.0, memory_format=fmt)
    space = get_space('darts')
    cands, rounds, macs = _paths(space, dict(s, steps=1)), itertools.count(), PathMacs(model, space, device, fmt)

    def run():
        if variant == 'deepcopy':        # the reference perturbs a deep copy of the whole supernet
            ctx.model = copy.deepcopy(model)
        metrics.METRICS[metric](ctx, cands[next(rounds)])
        _sync(device)
    images = score_images(metric, s)
    flops = (lambda r: flops_of(images * macs(cands[r]), training=False)) if images else None
    return Workload(run, model, None, flops, lambda: {'test_batch_size': test_batch})


def _standalone_workload(device, s, model, protocol, cutout, fmt):
    """Training steps of a fixed network through the shared train_step, as stage 3 and the ground truth run it."""
    model = model.to(device).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), protocol.learning_rate, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    loader = _train_loader(device, s, fmt, cutout)
    scaler, crit, cfg = make_scaler(device, protocol.amp), torch.nn.CrossEntropyLoss(), protocol.step_config()
    # count_macs counts an eval-mode forward: an auxiliary head (training only) is left out.
    macs = count_macs(model, torch.zeros(1, 3, 32, 32, device=device).to(memory_format=fmt))

    def run():
        for x, y in loader:
            train_step(model, x, y, opt, scaler, crit, cfg)
        _sync(device)
    images = s['batch'] * s['steps']
    return Workload(run, model, images, lambda r: flops_of(images * macs, training=True), amp=protocol.amp)


def bench_retrain_cifar(device, s, variant):
    """Stage-3 NetworkCIFAR training, as retrain/retrain.py runs it."""
    torch.manual_seed(0)
    model = get_space('darts').network(genotypes.GENAS_FLATNESS_CIFAR10, s['C'], 10, s['layers'], auxiliary=True)
    model.drop_path_prob = 0.2
    if variant == 'relu_per_cell':          # every cell rectifies its own inputs, as the reference's cells do
        model.share_relu = False
    protocol = Protocol(epochs=1, learning_rate=0.025, auxiliary_weight=0.4, grad_clip=5.0, amp=variant == 'amp')
    return _standalone_workload(device, s, model, protocol, 16, _fmt(variant))


def bench_ground_truth_train(device, s, variant):
    """The proxy study's ground truth: one sampled cell's stand-alone network trained from scratch
    (proxy_study/ground_truth.py with the committed study's protocol: no auxiliary head, no drop path, no cutout,
    learning rate 0.05), gt_C, gt_layers cells, the settings' batch."""
    cell = sample_cells(1, 0, get_space('darts'))[0]
    torch.manual_seed(0)
    model = get_space('darts').standalone(cell.candidate, s['gt_C'], 10, s['gt_layers'], auxiliary=False)
    protocol = Protocol(epochs=1, learning_rate=0.05, grad_clip=5.0, amp=variant == 'amp',
                        channels_last=variant != 'contiguous')
    return _standalone_workload(device, s, model, protocol, 0, protocol.memory_format)


def measure(name, w, device, s, profile=False):
    """Time a Workload (median of the timed rounds), its achieved GFLOP/s against this process's matmul peak
    (bf16 for an amp variant, else fp32), and with `profile` one more round under torch.profiler."""
    times = _timed(w.run, s)
    out = {'seconds': times}
    if w.images is None:
        out['seconds_per_candidate'] = statistics.median(times)
    else:
        out['images_per_s'] = w.images / statistics.median(times)
    out.update(w.extra())
    if w.flops is not None:
        peak_n = 256 if s['tiny'] else 2048
        peak = matmul_peak(device, peak_n, dtype=amp_dtype(device) if w.amp else torch.float32)
        timed = range(s['warmup'], s['warmup'] + s['repeats'])
        out.update(achieved([w.flops(r) for r in timed], times, peak), peak=peak.record())
    if profile:
        out['profile'] = profile_round(w.run, w.model, device)
        print(format_profile(name, out['profile']), file=sys.stderr)
    return out


# Stage 3 compiled (retrain/retrain.py --compile): opt-in, minutes of code generation on a CPU.
COMPILE_WORKLOADS = ['retrain_compile']
COMPILE_GPU_VARIANTS = ['retrain_compile:amp']


def bench_retrain_compile(device, s, variant):
    """Stage-3 NetworkCIFAR (the retrain_cifar settings) eager and torch.compile'd in one process: the time of the
    first compiled training step and evaluation batch (code generation, from an empty compile cache) apart from
    the steady-state images/s of training and evaluation. Eager and compiled rounds alternate, so that load from
    other processes hits both alike."""
    torch.manual_seed(0)
    fmt = torch.channels_last
    eager = get_space('darts').network(genotypes.GENAS_FLATNESS_CIFAR10, s['C'], 10, s['layers'], auxiliary=True)
    eager = eager.to(device).to(memory_format=fmt)
    eager.drop_path_prob = 0.2
    nets = {'eager': eager, 'compiled': torch.compile(copy.deepcopy(eager))}
    opts = {k: torch.optim.SGD(n.parameters(), 0.025, momentum=0.9, weight_decay=3e-4) for k, n in nets.items()}
    data = synthetic_arrays(s['batch'] * s['steps']).to(device)
    loader = BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True, cutout=16,
                         memory_format=fmt)
    protocol = Protocol(epochs=1, learning_rate=0.025, auxiliary_weight=0.4, grad_clip=5.0, amp=variant == 'amp')
    scaler, crit, cfg = make_scaler(device, protocol.amp), torch.nn.CrossEntropyLoss(), protocol.step_config()

    def train_round(k, batches=None):
        nets[k].train()
        for x, y in batches or loader:
            train_step(nets[k], x, y, opts[k], scaler, crit, cfg)
        _sync(device)

    @torch.inference_mode()
    def eval_round(k, batches=None):
        nets[k].eval()
        for x, _ in batches or loader:
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=protocol.amp):
                nets[k](x)
        _sync(device)

    phases = {'train': train_round, 'eval': eval_round}
    compile_s = {what: _timed_once(fn, 'compiled', [next(iter(loader))]) for what, fn in phases.items()}
    times = _alternating_rounds(phases, list(nets), s)
    images = s['batch'] * s['steps']
    out = {f'{k}_images_per_s': images / statistics.median(v) for k, v in times.items()}
    out.update({f'speedup_{w}': out[f'compiled_{w}_images_per_s'] / out[f'eager_{w}_images_per_s']
                for w in ('train', 'eval')})
    out.update(compile_first_train_step_s=compile_s['train'], compile_first_eval_batch_s=compile_s['eval'],
               seconds=times)
    return out


def _timed_once(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _alternating_rounds(phases, keys, s):
    """{f'{key}_{phase}': [seconds of each timed round]}: every round runs each phase(key) of every key in turn."""
    times = {f'{k}_{what}': [] for k in keys for what in phases}
    warmup, repeats = min(s['warmup'], 1), min(s['repeats'], 3)      # 4 rounds of 4 phases each
    for i in range(warmup + repeats):
        for k in keys:
            for what, fn in phases.items():
                took = _timed_once(fn, k)
                if i >= warmup:
                    times[f'{k}_{what}'].append(took)
    return times


def compile_worker_env(name):
    """Compile workloads start from an empty inductor cache (a first run's compile time), in a fresh folder."""
    if not name.startswith('retrain_compile'):
        return None
    return dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='bench-inductor-'))


def bench_data(device, s, variant):
    """Images/s of producing augmented, normalized training batches alone: whole batches cropped and
    flipped as tensors (ours) or torchvision's per-image PIL transforms in a DataLoader (the reference)."""
    arrays = synthetic_arrays(s['batch'] * s['steps'])
    if variant == 'tensor_batches':
        loader = BatchLoader(arrays.to(device), torch.arange(len(arrays)), s['batch'], device, shuffle=True,
                             augment=True)
    else:
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(arrays.mean, arrays.std)])
        images = arrays.images.permute(0, 2, 3, 1).numpy()

        class PIL(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                from PIL import Image
                return tf(Image.fromarray(images[i])), int(arrays.labels[i])
        loader = torch.utils.data.DataLoader(PIL(), s['batch'], shuffle=True)

    def run():
        for x, y in loader:
            x.to(device)
        _sync(device)
    times = _timed(run, s)
    return {'images_per_s': s['batch'] * s['steps'] / statistics.median(times), 'seconds': times}


def search_ranks_settings(tiny):
    """A stage-2 wlm search on a C=16, 8-cell supernet (one epoch on synthetic data: the cost of scoring does not
    depend on the weights), validation batch 512 as on a GPU by default."""
    if tiny:
        return {'C': 4, 'layers': 3, 'population': 4, 'bn_images': 32, 'val_images': 64, 'test_batch': 32}
    return {'C': 16, 'layers': 8, 'population': 48, 'bn_images': 256, 'val_images': 1024, 'test_batch': 512}


def failure(what, proc):
    """A benchmark process that failed: its own one-line error (bad input) as ours, else its traceback (a bug)."""
    lines = proc.stderr.strip().splitlines()
    if lines and lines[-1].startswith('error: '):
        return UserError(f'{what}: {lines[-1][len("error: "):]}')
    return SystemExit(f'{what} failed:\n{proc.stderr[-2000:]}')


def _run(cmd, env=None):
    proc = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode != 0:
        raise failure(f'benchmark command {" ".join(map(str, cmd))}', proc)
    return proc


class SearchTiming(NamedTuple):
    """One search under torchrun: its scoring time (the slowest rank's, first generation to the end), the whole
    command's wall time, the ranks' own records (benchmarks/search_rank.py) and the scores."""
    seconds: float
    wall_s: float
    ranks: list
    scores: dict


def _timed_search(n, supernet, save, device, s):
    """SearchTiming of one wlm search generation under `torchrun --nproc_per_node=n`."""
    cmd = ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', 'benchmarks/search_rank.py',
           '--model_path', supernet, '--metric', 'wlm', '--max_epochs', 1, '--population_num', s['population'],
           '--select_num', 1, '--mutation_num', 0, '--crossover_num', 0, '--max_train_img_size', s['bn_images'],
           '--max_val_img_size', s['val_images'], '--test_batch_size', s['test_batch'], '--device', device,
           '--save', save]
    times = save.parent / f'{save.name}-times'
    times.mkdir()
    t0 = time.perf_counter()
    _run(cmd, env={'CUDA_VISIBLE_DEVICES': '0', 'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // n)),
                   'BENCH_SEARCH_TIMES': str(times)})
    wall = time.perf_counter() - t0
    doc = json.loads((save / 'search_checkpoint.json').read_text())
    ranks = [json.loads((times / f'rank{r}.json').read_text()) for r in range(n)]
    return SearchTiming(max(r['search_s'] for r in ranks), wall, ranks,
                        {k: v['score'] for k, v in doc['evolution']['scores'].items()})


def bench_search_ranks(ranks, device, tiny):
    """Scoring time of the same search (one generation of wlm scoring; each rank times its search from the first
    generation to the end, start-up left out) under `torchrun --nproc_per_node=N` for each N in `ranks`, every rank
    on GPU 0 (CUDA_VISIBLE_DEVICES=0): several processes fill a GPU that one C=16 path at batch 512 leaves mostly
    idle. Each process gets cores / N threads. Also each rank's peak allocated GPU memory, and a check that every
    run scored every candidate the same (max relative difference to the first run)."""
    s = search_ranks_settings(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(['train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', s['C'], '--layers', s['layers'],
              '--epochs', 1, '--train_subset', 256, '--valid_bn_images', 64, '--device', device, '--save',
              tmp / 'supernet'], env={'CUDA_VISIBLE_DEVICES': '0'})
        runs = {n: _timed_search(n, tmp / 'supernet' / 'checkpoint_epoch_1.pth.tar', tmp / f'search-{n}', device, s)
                for n in ranks}
    base, first = runs[ranks[0]].seconds, runs[ranks[0]].scores
    results = {f'ranks_{n}': {'seconds': r.seconds, 'candidates_per_s': s['population'] / r.seconds,
                              f'speedup_vs_{ranks[0]}': base / r.seconds, 'wall_s': r.wall_s,
                              'max_memory_allocated_mb': [x['max_memory_allocated_mb'] for x in r.ranks],
                              'peak_rss_mb': [x['peak_rss_mb'] for x in r.ranks]} for n, r in runs.items()}
    diff = max(abs(r.scores[k] - first[k]) / max(abs(first[k]), 1e-12) for r in runs.values() for k in first)
    where = 'every rank on GPU 0' if device == 'cuda' else 'CPU processes (a check of the script, not a measurement)'
    return {'device': device, 'machine': Machine.here(device).record(), 'settings': s, 'results': results,
            'max_relative_score_difference': diff,
            'note': f'seconds: the slowest rank\'s search, first generation to the end (start-up left out; wall_s '
                    f'is the whole torchrun command); memory per rank; {where}'}


def parse_ranks(text):
    try:
        ranks = [int(r) for r in text.split(',')]
    except ValueError:
        ranks = []
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f'--search_ranks takes process counts such as 1,2,4, got {text!r}')
    return ranks


KNOWN = list(dict.fromkeys(WORKLOADS + LEVERS + GPU_VARIANTS + CPU_BF16_VARIANTS + ['ground_truth_train:amp']
                           + COMPILE_WORKLOADS + COMPILE_GPU_VARIANTS))
BENCHES = {'supernet_train': bench_supernet_train, 'retrain_cifar': bench_retrain_cifar, 'data': bench_data,
           'retrain_compile': bench_retrain_compile, 'nb201_supernet_train': bench_nb201_supernet_train,
           'ground_truth_train': bench_ground_truth_train}


def skip_reason(name, device, machine):
    """Why a workload does not run here (None: it runs): bf16 autocast on a CPU without bf16 instructions."""
    if device == 'cpu' and name.endswith(':amp') and not machine.cpu_bf16:
        return (f'skipped: bf16 autocast on a CPU needs avx512_bf16 or amx_bf16, which {machine.cpu} lacks '
                '(it would time emulated bf16)')
    return None


def worker(name, device_name, tiny, profile=False):
    """One workload in this process; returns its result (with the peak RSS, thread count and machine)."""
    workload, _, variant = name.partition(':')
    # trimmed_heap: glibc's own trimming of the heap top, which makes every step page-fault its activations in anew
    device = choose_device(device_name, keep_heap=variant != 'trimmed_heap')
    s = settings(tiny)
    if variant.endswith('_grads'):          # another gradient form (--grad_form direct / polyphase)
        operations.set_grad_form(variant[:-len('_grads')])
    if workload.startswith('score_'):
        w = bench_score(device, s, workload[len('score_'):], variant)
    else:
        w = BENCHES[workload](device, s, variant)
    result = measure(name, w, device, s, profile and workload in PROFILED) if isinstance(w, Workload) else w
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result['threads'] = torch.get_num_threads()
    result['machine'] = Machine.here(device).record()
    return result


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default=None, choices=['cpu', 'cuda', 'auto'],
                   help='device (default: cpu; cuda with --search_ranks)')
    p.add_argument('--tiny', action='store_true', help='tiny shapes, a few steps (default: off)')
    p.add_argument('--levers', action='store_true', help='also run every lever switched off (default: off)')
    p.add_argument('--profile', action='store_true',
                   help=f'also one round of {", ".join(PROFILED)} under torch.profiler: the top 10 ops (self CPU '
                        'time) and top-level modules (forward CPU time), in the JSON and as tables on stderr '
                        '(default: off)')
    p.add_argument('--compile', action='store_true',
                   help=f'also {",".join(COMPILE_WORKLOADS)}: stage 3 eager vs torch.compile (default: off)')
    p.add_argument('--only', default=None, help=f'comma-separated workloads (default: {",".join(WORKLOADS)})')
    p.add_argument('--search_ranks', type=parse_ranks, default=None,
                   help='instead of the workloads: time a search with each number of ranks sharing GPU 0, e.g. 1,2,4 '
                        '(needs --device cuda; --device cpu only checks the script) (default: off)')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    asked = (args.only.split(',') if args.only else []) + ([args.worker] if args.worker else [])
    unknown = [n for n in asked if n not in KNOWN]
    if unknown:
        raise UserError(f'unknown workload {unknown[0]!r} in --only; choose from {",".join(KNOWN)}')
    return args


def workload_names(args, device, cpu_bf16=False):
    """The workloads to run, in order: --only's, or the defaults with the levers, GPU (or, on a CPU with bf16
    instructions, bf16) variants and compile ones."""
    names = args.only.split(',') if args.only else list(WORKLOADS)
    if args.levers:
        names += LEVERS
    if device == 'cuda' and not args.only:
        names += GPU_VARIANTS
    if device == 'cpu' and cpu_bf16 and not args.only:
        names += CPU_BF16_VARIANTS
    if args.compile:
        extra = COMPILE_WORKLOADS + (COMPILE_GPU_VARIANTS if device == 'cuda' else [])
        names += [n for n in extra if n not in names]
    return names


def run_worker(name, device, tiny, profile=False):
    """One workload in a fresh Python process (so that its peak RSS is its own); returns its result. Its stderr
    (the profile tables) is passed on."""
    proc = subprocess.run([sys.executable, __file__, '--worker', name, '--device', device]
                          + (['--tiny'] if tiny else []) + (['--profile'] if profile else []),
                          capture_output=True, text=True, env=compile_worker_env(name))
    if proc.returncode != 0:
        raise failure(f'benchmark {name}', proc)
    if profile and proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_search_ranks(args):
    if args.device != 'cpu' and not torch.cuda.is_available():
        raise UserError('--search_ranks times ranks sharing a GPU but no CUDA device is visible; run it on a GPU '
                        'machine (or pass --device cpu to check the script only)')
    return bench_search_ranks(args.search_ranks, 'cpu' if args.device == 'cpu' else 'cuda', args.tiny)


def run_workloads(args):
    device = args.device or 'cpu'
    choose_device(device)              # --device cuda without a GPU: one error line before any worker starts
    machine = Machine.here(device)
    out = {'device': device, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
           'machine': machine.record(), 'settings': settings(args.tiny), 'results': {}}
    print(f'machine: {machine.line()}', file=sys.stderr)
    for name in workload_names(args, device, machine.cpu_bf16):
        reason = skip_reason(name, device, machine)
        if reason:
            out['results'][name] = {'skipped': reason, 'machine': machine.record()}
        else:
            out['results'][name] = run_worker(name, device, args.tiny, args.profile)
        shown = {k: v for k, v in out['results'][name].items() if k not in ('profile', 'machine')}
        print(f'{name}: {shown}', file=sys.stderr)
    return out


def main(args):
    """Prints one JSON object (a worker: its workload's result on the last line) and returns it."""
    if args.worker:
        out = worker(args.worker, args.device, args.tiny, args.profile)
        print(json.dumps(out))
        return out
    out = run_search_ranks(args) if args.search_ranks else run_workloads(args)
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    run_cli(main, parse_args)
