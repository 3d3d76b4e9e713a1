"""Throughput benchmarks of the three stages; prints one JSON object.

    python3 benchmarks/bench.py                       # the default workloads, CPU (a few minutes)
    python3 benchmarks/bench.py --levers              # also each speed lever switched off, to see what it gives
    python3 benchmarks/bench.py --device cuda         # on a GPU (adds AMP variants; under 5 minutes)
    python3 benchmarks/bench.py --tiny                # seconds; what CI runs so the script cannot rot
    python3 benchmarks/bench.py --device cuda --search_ranks 1,2,4   # a search with 1, 2, 4 ranks on one GPU
    python3 benchmarks/bench.py --only retrain_compile          # stage 3 eager vs torch.compile (CPU: ~30 min)
    python3 benchmarks/bench.py --only retrain_compile,retrain_compile:amp --device cuda   # on a GPU, fp32 and AMP

Each workload runs in its own Python process (so its peak RSS is its own); its time is the median of
`repeats` timed runs after `warmup` untimed ones. Synthetic data, fp32 unless a variant says amp, the
thread count torch picks (OMP_NUM_THREADS changes it). Settings: supernet C=16, 8 layers, batch 64;
scoring with 256 BN images (batch 64) and 512 validation images, stds 0.001/0.003/0.006;
NetworkCIFAR C=16, 8 layers, batch 64, GENAS_FLATNESS_CIFAR10 with auxiliary head, drop-path 0.2 and
cutout 16 (the DARTS protocol).
"""
import argparse
import copy
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402

import genotypes  # noqa: E402
from data import BatchLoader, SearchData, synthetic_arrays  # noqa: E402
from devices import amp_dtype, choose_device, make_scaler  # noqa: E402
from evolutionary_search import metrics  # noqa: E402
from retrain.train_loop import Protocol  # noqa: E402
from spaces import get_space  # noqa: E402
from spaces.darts_supernet import Network  # noqa: E402
from train_supernet.heap import DEFAULT_HEADROOM, HeapTrimmer  # noqa: E402
from train_supernet.supernet_training import supernet_step  # noqa: E402
from training import StepConfig, train_step  # noqa: E402
from utils import ArgumentParser, UserError, run_cli  # noqa: E402

SCORE_METRICS = ['wlm', 'angle', 'acc', 'angle+wlm']
WORKLOADS = ['supernet_train'] + [f'score_{m}' for m in SCORE_METRICS] + ['retrain_cifar']
# Each lever switched off (or the reference's way), to measure what it gives.
LEVERS = ['supernet_train:contiguous', 'supernet_train:reference_forward', 'supernet_train:no_trim',
          'supernet_train:low_memory',
          'score_wlm:contiguous',
          'score_wlm:reference_forward', 'score_wlm:no_grad', 'score_wlm:test_batch_256', 'score_wlm:deepcopy',
          'retrain_cifar:contiguous', 'data:tensor_batches', 'data:pil_per_image']
GPU_VARIANTS = ['supernet_train:amp', 'retrain_cifar:amp', 'score_wlm:test_batch_64']


def settings(tiny):
    if tiny:
        return {'C': 4, 'layers': 3, 'batch': 8, 'steps': 2, 'warmup': 1, 'repeats': 2,
                'bn_images': 16, 'val_images': 32, 'stds': [0.001, 0.003, 0.006]}
    return {'C': 16, 'layers': 8, 'batch': 64, 'steps': 10, 'warmup': 3, 'repeats': 5,
            'bn_images': 256, 'val_images': 512, 'stds': [0.001, 0.003, 0.006]}


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


def bench_supernet_train(device, s, variant):
    """Images/s of stage-1 SPOS steps (a random path each step), as train_supernet/train.py runs them."""
    if variant == 'reference_forward':
        _use_reference_forward()
    torch.manual_seed(0)
    fmt = torch.contiguous_format if variant == 'contiguous' else torch.channels_last
    model = Network(s['C'], 10, s['layers']).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    data = synthetic_arrays(s['batch'] * s['steps']).to(device)
    loader = BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True,
                         memory_format=fmt)
    rng, crit = random.Random(0), torch.nn.CrossEntropyLoss()
    amp = variant == 'amp'
    scaler = make_scaler(device, amp)
    cfg = StepConfig(5.0, amp, set_to_none=False)          # --grad_clip 5, --zero_grad inplace
    headroom = {'no_trim': -1.0, 'low_memory': 0.0}.get(variant, DEFAULT_HEADROOM)
    trim_heap = HeapTrimmer(device, headroom)

    def run():
        for x, y in loader:
            supernet_step(model, x, y, genotypes.random_candidate(rng), opt, scaler, crit, cfg)
            trim_heap()
        _sync(device)
    times = _timed(run, s)
    return {'images_per_s': s['batch'] * s['steps'] / statistics.median(times), 'seconds': times,
            'heap_trims': trim_heap.trims}


def bench_score(device, s, metric, variant):
    """Seconds per candidate of a stage-2 metric (a new random candidate each time, as in a search)."""
    if variant == 'reference_forward':
        _use_reference_forward()
    if variant == 'no_grad':
        metrics.evaluate_candidate = torch.no_grad()(metrics.evaluate_candidate.__wrapped__)
    torch.manual_seed(0)
    fmt = torch.contiguous_format if variant == 'contiguous' else torch.channels_last
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
    rng = random.Random(0)

    def run():
        if variant == 'deepcopy':        # the reference perturbs a deep copy of the whole supernet
            ctx.model = copy.deepcopy(model)
        metrics.METRICS[metric](ctx, genotypes.random_candidate(rng))
        _sync(device)
    times = _timed(run, s)
    return {'seconds_per_candidate': statistics.median(times), 'seconds': times, 'test_batch_size': test_batch}


def bench_retrain_cifar(device, s, variant):
    """Images/s of stage-3 NetworkCIFAR training, as retrain/retrain.py runs it."""
    torch.manual_seed(0)
    fmt = torch.contiguous_format if variant == 'contiguous' else torch.channels_last
    model = get_space('darts').network(genotypes.GENAS_FLATNESS_CIFAR10, s['C'], 10, s['layers'], auxiliary=True)
    model = model.to(device).to(memory_format=fmt).train()
    model.drop_path_prob = 0.2
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    data = synthetic_arrays(s['batch'] * s['steps']).to(device)
    loader = BatchLoader(data, torch.arange(len(data)), s['batch'], device, shuffle=True, augment=True, cutout=16,
                         memory_format=fmt)
    protocol = Protocol(epochs=1, learning_rate=0.025, auxiliary_weight=0.4, grad_clip=5.0, amp=variant == 'amp')
    scaler, crit, cfg = make_scaler(device, protocol.amp), torch.nn.CrossEntropyLoss(), protocol.step_config()

    def run():
        for x, y in loader:
            train_step(model, x, y, opt, scaler, crit, cfg)
        _sync(device)
    times = _timed(run, s)
    return {'images_per_s': s['batch'] * s['steps'] / statistics.median(times), 'seconds': times}


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
               seconds=times, cpu=_cpu_model())
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


def _cpu_model():
    """The CPU's model name (Linux), which decides much of a compiled network's speed (AVX2 vs AVX-512)."""
    try:
        with open('/proc/cpuinfo') as f:
            names = [ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')]
        flags = open('/proc/cpuinfo').read()
        isa = 'avx512' if 'avx512f' in flags else 'avx2' if 'avx2' in flags else 'other'
        return f'{names[0]} x{len(names)} ({isa})'
    except (OSError, IndexError):
        return platform.processor() or 'unknown'


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


def _timed_search(n, supernet, save, device, s):
    """(seconds, {candidate: score}) of one wlm search generation under `torchrun --nproc_per_node=n`."""
    cmd = ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', 'evolutionary_search/search.py',
           '--model_path', supernet, '--metric', 'wlm', '--max_epochs', 1, '--population_num', s['population'],
           '--select_num', 1, '--mutation_num', 0, '--crossover_num', 0, '--max_train_img_size', s['bn_images'],
           '--max_val_img_size', s['val_images'], '--test_batch_size', s['test_batch'], '--device', device,
           '--save', save]
    t0 = time.perf_counter()
    _run(cmd, env={'CUDA_VISIBLE_DEVICES': '0', 'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // n))})
    seconds = time.perf_counter() - t0
    doc = json.loads((save / 'search_checkpoint.json').read_text())
    return seconds, {k: v['score'] for k, v in doc['evolution']['scores'].items()}


def bench_search_ranks(ranks, device, tiny):
    """Wall time of the same search (one generation of wlm scoring) under `torchrun --nproc_per_node=N` for each N
    in `ranks`, every rank on GPU 0 (CUDA_VISIBLE_DEVICES=0): several processes fill a GPU that one C=16 path at
    batch 512 leaves mostly idle. Each process gets cores / N threads. Also checks that every run scored every
    candidate the same (max relative difference to the first run)."""
    s = search_ranks_settings(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(['train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', s['C'], '--layers', s['layers'],
              '--epochs', 1, '--train_subset', 256, '--valid_bn_images', 64, '--device', device, '--save',
              tmp / 'supernet'], env={'CUDA_VISIBLE_DEVICES': '0'})
        runs = {n: _timed_search(n, tmp / 'supernet' / 'checkpoint_epoch_1.pth.tar', tmp / f'search-{n}', device, s)
                for n in ranks}
    base, first = runs[ranks[0]]
    results = {f'ranks_{n}': {'seconds': sec, 'candidates_per_s': s['population'] / sec,
                              f'speedup_vs_{ranks[0]}': base / sec} for n, (sec, _) in runs.items()}
    diff = max(abs(sc[k] - first[k]) / max(abs(first[k]), 1e-12) for _, sc in runs.values() for k in first)
    where = 'every rank on GPU 0' if device == 'cuda' else 'CPU processes (a check of the script, not a measurement)'
    return {'device': device, 'settings': s, 'results': results, 'max_relative_score_difference': diff,
            'note': f'wall time of the whole torchrun command (start-up included), {where}'}


def parse_ranks(text):
    try:
        ranks = [int(r) for r in text.split(',')]
    except ValueError:
        ranks = []
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f'--search_ranks takes process counts such as 1,2,4, got {text!r}')
    return ranks


KNOWN = WORKLOADS + LEVERS + GPU_VARIANTS + COMPILE_WORKLOADS + COMPILE_GPU_VARIANTS
BENCHES = {'supernet_train': bench_supernet_train, 'retrain_cifar': bench_retrain_cifar, 'data': bench_data,
           'retrain_compile': bench_retrain_compile}


def worker(name, device_name, tiny):
    """One workload in this process; returns its result (with the peak RSS and thread count)."""
    device = choose_device(device_name)
    workload, _, variant = name.partition(':')
    s = settings(tiny)
    if workload.startswith('score_'):
        result = bench_score(device, s, workload[len('score_'):], variant)
    else:
        result = BENCHES[workload](device, s, variant)
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result['threads'] = torch.get_num_threads()
    return result


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default=None, choices=['cpu', 'cuda', 'auto'],
                   help='device (default: cpu; cuda with --search_ranks)')
    p.add_argument('--tiny', action='store_true', help='tiny shapes, a few steps (default: off)')
    p.add_argument('--levers', action='store_true', help='also run every lever switched off (default: off)')
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


def workload_names(args, device):
    """The workloads to run, in order: --only's, or the defaults with the levers, GPU variants and compile ones."""
    names = args.only.split(',') if args.only else list(WORKLOADS)
    if args.levers:
        names += LEVERS
    if device == 'cuda' and not args.only:
        names += GPU_VARIANTS
    if args.compile:
        extra = COMPILE_WORKLOADS + (COMPILE_GPU_VARIANTS if device == 'cuda' else [])
        names += [n for n in extra if n not in names]
    return names


def run_worker(name, device, tiny):
    """One workload in a fresh Python process (so that its peak RSS is its own); returns its result."""
    proc = subprocess.run([sys.executable, __file__, '--worker', name, '--device', device]
                          + (['--tiny'] if tiny else []), capture_output=True, text=True,
                          env=compile_worker_env(name))
    if proc.returncode != 0:
        raise failure(f'benchmark {name}', proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_search_ranks(args):
    if args.device != 'cpu' and not torch.cuda.is_available():
        raise UserError('--search_ranks times ranks sharing a GPU but no CUDA device is visible; run it on a GPU '
                        'machine (or pass --device cpu to check the script only)')
    return bench_search_ranks(args.search_ranks, 'cpu' if args.device == 'cpu' else 'cuda', args.tiny)


def run_workloads(args):
    device = args.device or 'cpu'
    choose_device(device)              # --device cuda without a GPU: one error line before any worker starts
    out = {'device': device, 'torch': torch.__version__, 'threads': torch.get_num_threads(),
           'settings': settings(args.tiny), 'results': {}}
    for name in workload_names(args, device):
        out['results'][name] = run_worker(name, device, args.tiny)
        print(f'{name}: {out["results"][name]}', file=sys.stderr)
    return out


def main(args):
    """Prints one JSON object (a worker: its workload's result on the last line) and returns it."""
    if args.worker:
        out = worker(args.worker, args.device, args.tiny)
        print(json.dumps(out))
        return out
    out = run_search_ranks(args) if args.search_ranks else run_workloads(args)
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    run_cli(main, parse_args)
