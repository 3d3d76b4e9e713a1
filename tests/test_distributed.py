"""Stages 1 and 2 under torchrun on the CPU (gloo): one path per step on every rank, candidates split
over ranks, results equal to one process, resumable with another world size."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_script
from spaces import get_space
from utils import read_metrics

SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2, '--crossover_num', 2,
          '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32, '--metric', 'angle+wlm',
          '--wlm_weight', 0.5, '--seed', 7, '--device', 'cpu']


def torchrun(script, *args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
                           str(ROOT / script), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def ddp_supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('ddp') / 'supernet'
    torchrun('train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 3,
             '--batch_size', 16, '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--epochs', 1,
             '--seed', 1, '--save', run, '--device', 'cpu')
    return run


def ckpts(run):
    return ['--init_model_path', run / 'checkpoint_epoch_0.pth.tar', '--model_path', run / 'checkpoint_epoch_1.pth.tar']


def top10(run):
    doc = json.loads((run / 'genotype.json').read_text())
    return [t['candidate'] for t in doc['top10']], [t['score'] for t in doc['top10']]


def all_scores(run):
    """{candidate: score} of every candidate a search scored (its checkpoint)."""
    doc = json.loads((run / 'search_checkpoint.json').read_text())
    return {k: v['score'] for k, v in doc['evolution']['scores'].items()}


def test_search_ranks_share_gpus_round_robin(monkeypatch):
    """Search ranks take GPU (local rank mod GPU count), so torchrun --nproc_per_node=4 runs on one GPU; the
    stages that train with DDP keep one GPU per rank and say so when there are too few."""
    import devices
    import utils
    chosen = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    assert [devices.choose_device('auto', r, share=True).index for r in range(5)] == [0, 1, 0, 1, 0] == chosen
    assert devices.choose_device('cuda', 1) == torch.device('cuda', 1)
    with pytest.raises(utils.UserError, match='start at most 2 processes per node'):
        devices.choose_device('auto', 2)


def sampled_path_parameters(seed, steps, C, layers):
    """Names of the supernet parameters on the first `steps` paths stage 1 draws with --seed."""
    space, rng = get_space('darts'), random.Random(seed)
    net = space.build_supernet(C, 10, layers)
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)] for _ in range(steps) for p in net.path_parameters(space.random_candidate(rng))}


@pytest.mark.slow
def test_two_process_supernet_training(ddp_supernet):
    assert sorted(p.name for p in ddp_supernet.glob('*.pth.tar')) == [
        'checkpoint_epoch_0.pth.tar', 'checkpoint_epoch_1.pth.tar', 'last.pth.tar']
    log = (ddp_supernet / 'log.txt').read_text()
    assert log.count('epoch 1/1') == 1 and '2 process(es)' in log and 'global batch 32' in log
    recs = read_metrics(ddp_supernet / 'metrics.jsonl')
    assert len(recs) == 1 and recs[0]['epoch'] == 1
    ck = torch.load(ddp_supernet / 'checkpoint_epoch_1.pth.tar')
    assert not any(k.startswith('module.') for k in ck['state_dict'])     # saved from the unwrapped model
    # both ranks sampled the same paths: DDP gives a gradient to every parameter some rank used, so the
    # parameters that ever got one are exactly those of the 4 paths (128 images / 2 ranks / batch 16) that
    # random.Random(--seed) draws; a rank drawing other paths would add its ops' parameters
    last = torch.load(ddp_supernet / 'last.pth.tar')
    assert set(last['grad_mask']) == sampled_path_parameters(seed=1, steps=4, C=4, layers=3)


@pytest.mark.slow
def test_distributed_search_equals_one_process_and_resumes_with_another_world_size(ddp_supernet, tmp_path):
    single, double, resumed = tmp_path / 'single', tmp_path / 'double', tmp_path / 'resumed'
    run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--save', single)
    torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--save', double)
    cands1, scores1 = top10(single)
    cands2, scores2 = top10(double)
    assert cands1 == cands2
    assert scores2 == pytest.approx(scores1, rel=1e-6)
    every1, every2 = all_scores(single), all_scores(double)        # every candidate, not only the top 10
    assert len(every1) == 18 and every2.keys() == every1.keys()
    assert [every2[k] for k in every1] == pytest.approx([every1[k] for k in every1], rel=1e-6)
    assert len(read_metrics(double / 'metrics.jsonl')) == 3          # rank 0 alone logs the generations

    torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--save', resumed, '--stop_after', 9)
    state = json.loads((resumed / 'search_checkpoint.json').read_text())['evolution']
    assert len(state['scores']) == 9 and state['generation'] == 1 and not (resumed / 'genotype.json').exists()
    run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--resume', resumed)
    cands3, scores3 = top10(resumed)
    assert cands3 == cands1 and scores3 == pytest.approx(scores1, rel=1e-6)


@pytest.mark.slow
def test_distributed_scoring_of_given_cells(ddp_supernet, tmp_path):
    proc = torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--arch', 'DARTS_V2',
                    '--arch', 'GENAS_FLATNESS_CIFAR10', '--arch', 'PDARTS', '--save', tmp_path / 'given')
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{')]
    assert [ln['name'] for ln in lines] == ['DARTS_V2', 'GENAS_FLATNESS_CIFAR10', 'PDARTS']   # printed once, in order
    single = run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *SEARCH, '--arch', 'PDARTS',
                        '--save', tmp_path / 'one')
    assert json.loads(single.stdout.splitlines()[-1])['score'] == pytest.approx(lines[2]['score'], rel=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message where no GPU is visible')
def test_bench_search_ranks_checks_its_arguments_without_a_gpu():
    """The GPU benchmark of ranks per GPU (run it where a GPU is lent) fails here with one line, as does a bad
    list of process counts."""
    for argv, message in ((['--search_ranks', '1,2,4'], 'no CUDA device is visible'),
                          (['--search_ranks', '0,2', '--device', 'cpu'], 'process counts such as 1,2,4')):
        proc = run_script('benchmarks/bench.py', *argv, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
