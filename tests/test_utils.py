import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpoints
import counting
import seeding
import utils
from utils import UserError


def test_parse_stds():
    assert utils.parse_stds('0.001,0.003,0.006') == [0.001, 0.003, 0.006]
    assert utils.parse_stds('0.01') == [0.01]
    for bad in ['', '0.003,0.001', '0.001,0.001', '0,0.1', '-0.1,0.2', 'a,b', 'nan']:
        with pytest.raises(UserError, match='stds'):
            utils.parse_stds(bad)


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.4],     # top1 = 1, top2 = {1, 2}
                           [0.9, 0.05, 0.05],   # top1 = 0
                           [0.2, 0.3, 0.5]])    # top1 = 2, top2 = {2, 1}
    target = torch.tensor([2, 0, 0])
    assert counting.topk_correct(logits, target, (1, 2, 3)) == [1, 2, 3]


def test_count_macs_and_parameters_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    macs = counting.count_macs(model, torch.zeros(1, 3, 8, 8))
    assert macs == 4 * 3 * 9 * 64 + 256 * 10
    assert counting.count_parameters(model) == 4 * 3 * 9 + 256 * 10 + 10


def test_count_parameters_skips_auxiliary():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 3)
            self.auxiliary_head = nn.Linear(3, 4)
    assert counting.count_parameters(M()) == 9
    assert counting.count_parameters(M(), skip=None) == 9 + 16


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / 'c.pth.tar'
    checkpoints.save_checkpoint({'w': torch.arange(3), 'rng': seeding.get_rng_state(), 'epoch': 2}, path)
    assert path.exists() and not (tmp_path / 'c.pth.tar.tmp').exists()
    ck = checkpoints.load_checkpoint(path)
    assert torch.equal(ck['w'], torch.arange(3)) and ck['epoch'] == 2
    (tmp_path / 'junk.pth.tar').write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='cannot load checkpoint'):
        checkpoints.load_checkpoint(tmp_path / 'junk.pth.tar')
    with pytest.raises(UserError, match='does not exist'):
        checkpoints.load_checkpoint(tmp_path / 'missing.pth.tar')


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    seeding.seed_everything(5)
    checkpoints.save_checkpoint({'rng': seeding.get_rng_state()}, tmp_path / 'r.pt')
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seeding.seed_everything(99)
    seeding.set_rng_state(checkpoints.load_checkpoint(tmp_path / 'r.pt')['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_derive_seed_is_a_pure_function():
    assert seeding.derive_seed(1, 'x', [1, 2]) == seeding.derive_seed(1, 'x', [1, 2])
    assert seeding.derive_seed(1, 'x', [1, 2]) != seeding.derive_seed(1, 'x', [2, 1])
    assert 0 <= seeding.derive_seed('a') < 2**63


def test_load_state_checked_names_the_shapes():
    small, big = nn.Linear(2, 3), nn.Linear(2, 4)
    with pytest.raises(UserError, match=r'weight: checkpoint \(4, 2\) vs model \(3, 2\)'):
        checkpoints.load_state_checked(small, big.state_dict(), 'x.pth')
    prefixed = {f'module.{k}': v for k, v in small.state_dict().items()}
    checkpoints.load_state_checked(nn.Linear(2, 3), prefixed, 'ddp.pth')   # DDP prefix is stripped


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', 'module._orig_mod.', '_orig_mod.module.'])
def test_state_dicts_of_wrapped_models_load(prefix):
    """Keys saved through DistributedDataParallel and / or torch.compile wrappers load into the bare model."""
    saved = nn.Linear(2, 3)
    target = nn.Linear(2, 3)
    checkpoints.load_state_checked(target, {prefix + k: v for k, v in saved.state_dict().items()}, 'wrapped.pth')
    assert torch.equal(target.weight, saved.weight) and torch.equal(target.bias, saved.bias)
    assert list(checkpoints.strip_module_prefix({'a.b': 1, prefix + 'c': 2})) == ['a.b', prefix + 'c']   # not all: kept


def test_run_dir_metrics_and_truncation(tmp_path):
    import argparse
    run = utils.Run(tmp_path / 'run', argparse.Namespace(a=1), tensorboard=False)
    for e in range(1, 4):
        run.log_metrics({'epoch': e, 'loss': 1.0 / e})
    run.truncate_metrics('epoch', 2)
    assert [r['epoch'] for r in utils.read_metrics(run.metrics_file)] == [1, 2]
    assert (tmp_path / 'run' / 'args.json').read_text().strip().startswith('{')
    assert (tmp_path / 'run' / 'log.txt').exists()


def test_cli_errors_exit_2_with_one_line(capsys):
    def main(args):
        raise UserError('something is wrong; do X')
    with pytest.raises(SystemExit) as e:
        utils.run_cli(main, lambda argv: None, [])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == 'error: something is wrong; do X'


def test_a_run_directory_of_another_kind_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / 'run'
    utils.lock_run_dir(run, 'supernet')
    utils.release_run_dirs()
    assert json.loads((run / utils.RUN_FILE).read_text()) == {'kind': 'supernet'}
    utils.lock_run_dir(run, 'supernet')          # the same kind continues
    utils.release_run_dirs()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(UserError, match=r'holds a stage-1 supernet run .*; a stage-3 retraining run .* would overwrite'):
        utils.lock_run_dir(run, 'retrain')
    utils.release_run_dirs()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_older_run_directories_are_known_by_their_files(tmp_path):
    for name, kind in [('search_checkpoint.json', 'search'), ('checkpoint.pth.tar', 'retrain'),
                       ('last.pth.tar', 'supernet'), ('protocol.json', 'ground-truth')]:
        (tmp_path / kind).mkdir()
        (tmp_path / kind / name).write_text('x')
        assert utils.recorded_kind(tmp_path / kind) == kind
    assert utils.recorded_kind(tmp_path / 'nothing') is None
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / utils.RUN_FILE).write_text('[1, 2]')
    with pytest.raises(UserError, match='not a run record'):
        utils.recorded_kind(tmp_path / 'bad')


def test_ctrl_c_is_one_line_with_exit_130_and_the_resume_hint(capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        utils.run_cli(interrupted, lambda argv: 'ARGS', [], resume_hint=lambda args: f'pass --resume {args}')
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: interrupted; pass --resume ARGS to continue (the files written before are intact)']


def test_config_starts_from_a_runs_arguments_and_flags_override(tmp_path, capsys):
    def parser():
        p = utils.ArgumentParser(prog='x')
        p.add_argument('--lr', type=float, default=0.1)
        p.add_argument('--stds', default='0.001,0.003')
        p.add_argument('--flag', action='store_true')
        p.add_argument('--save', default=None)
        return p
    old = {'lr': 0.5, 'stds': [0.002, 0.004], 'flag': True, 'save': 'runs/old', 'resolved_extra': 3}
    (tmp_path / 'args.json').write_text(json.dumps(old))
    args = parser().parse_args(['--config', str(tmp_path / 'args.json')])
    assert (args.lr, args.flag, args.save) == (0.5, True, None)           # where it ran is not taken
    assert utils.parse_stds(args.stds) == [0.002, 0.004] and not hasattr(args, 'resolved_extra')
    assert parser().parse_args(['--config', str(tmp_path / 'args.json'), '--lr', '0.2']).lr == 0.2
    (tmp_path / 'list.json').write_text('[1]')
    with pytest.raises(SystemExit) as e:
        parser().parse_args(['--config', str(tmp_path / 'list.json')])
    assert e.value.code == 2 and 'holds a list' in capsys.readouterr().err


def test_stage_1_config_reproduces_a_runs_resolved_arguments(tmp_path):
    from train_supernet import train
    first = train.parse_args(['--dataset', 'synthetic', '--init_channels', '6', '--epochs', '3', '--seed', '9',
                              '--save', str(tmp_path / 'a')])
    (tmp_path / 'args.json').write_text(json.dumps(vars(first), default=str))
    again = train.parse_args(['--config', str(tmp_path / 'args.json'), '--save', str(tmp_path / 'b'),
                              '--epochs', '4'])
    differ = {k for k in vars(first) if vars(first)[k] != vars(again).get(k)}
    assert differ == {'save', 'epochs', 'config'}, differ


def test_a_run_writes_its_flags_and_final_metrics_as_tensorboard_hparams(tmp_path):
    import argparse
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    run = utils.Run(tmp_path / 'run', argparse.Namespace(lr=0.5, arch=['A', 'B'], space=None, amp=False))
    run.log_metrics({'epoch': 1, 'valid_acc': 0.25}, step=1)
    run.log_metrics({'epoch': 2, 'valid_acc': 0.75, 'note': 'x'}, step=2)
    run.close()
    utils.release_run_dirs()
    acc = event_accumulator.EventAccumulator(str(tmp_path / 'run' / 'tb' / 'hparams'))
    acc.Reload()
    content = acc.PluginTagToContent('hparams')['_hparams_/session_start_info']
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams['lr'].number_value == 0.5 and info.hparams['arch'].string_value == '["A", "B"]'
    assert info.hparams['space'].string_value == 'null' and info.hparams['amp'].bool_value is False
    assert acc.Scalars('final/valid_acc')[0].value == 0.75 and acc.Scalars('final/epoch')[0].value == 2
