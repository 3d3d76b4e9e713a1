"""utils.py: argument checks, the run directory (its files, its lock, its kind), the CLI contract, writes that a
full disk cannot half-finish, and the reference's flags that do nothing here."""
import errno
import json
import os
import subprocess
import sys

import pytest

import checkpoints
import utils
from conftest import ROOT, cli_exit_code
from evolutionary_search import search
from train_supernet import train
from utils import UserError


def test_parse_stds():
    assert utils.parse_stds('0.001,0.003,0.006') == [0.001, 0.003, 0.006]
    assert utils.parse_stds('0.01') == [0.01]
    for bad in ['', '0.003,0.001', '0.001,0.001', '0,0.1', '-0.1,0.2', 'a,b', 'nan']:
        with pytest.raises(UserError, match='stds'):
            utils.parse_stds(bad)


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
def test_reference_noop_flags_warn_once_and_unknown_flags_fail(capsys, tmp_path):
    args = train.parse_args(['--gpu', '0', '--cutout', '--cutout_length', '16', '--drop_path_prob', '0.3',
                             '--model_path', 'saved_models', '--unrolled', '--arch_learning_rate', '3e-4',
                             '--arch_weight_decay', '1e-3', '--save', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: --gpu --cutout --cutout_length') and 'nothing' in err[0]
    assert not any(k.startswith('noop_') for k in vars(args)) and not hasattr(args, 'gpu')
    args = search.parse_args(['--model_path', 'x.pth.tar', '--cutout', '--cutout_length', '16'])
    assert capsys.readouterr().err.count('warning:') == 1 and not hasattr(args, 'cutout')
    for module, argv in ((train, ['--unknown_flag', '1']), (search, ['--model_path', 'x', '--gpu', '0'])):
        assert cli_exit_code(module, argv) == 2 and 'unrecognized arguments' in capsys.readouterr().err


# --- one writer per run directory -----------------------------------------------------------------------

def test_lock_is_reentrant_in_one_process_and_released_after_main(tmp_path):
    utils.lock_run_dir(tmp_path / 'r')
    utils.lock_run_dir(tmp_path / 'r')                 # the same process: no-op
    assert (tmp_path / 'r' / '.lock').read_text() == f'{os.getpid()}\n'
    probe = [sys.executable, '-c', f'import utils; utils.lock_run_dir({str(tmp_path / "r")!r})']   # cwd: the repo
    held = subprocess.run(probe, capture_output=True, text=True, cwd=ROOT)
    assert held.returncode != 0 and f'PID {os.getpid()}' in held.stderr
    utils.release_run_dirs()
    assert (tmp_path / 'r' / '.lock').read_text() == ''
    assert subprocess.run(probe, capture_output=True, text=True, cwd=ROOT).returncode == 0


# --- full disks ----------------------------------------------------------------------------------------

def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """Runs everywhere: ENOSPC faked at the fsync of the temporary file."""
    path = tmp_path / 'last.pth.tar'
    checkpoints.save_checkpoint({'epoch': 1}, path)
    old = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(utils.os, 'fsync', full)
    with pytest.raises(utils.UserError, match=rf'^{path} was not written: the disk is full; free space'):
        checkpoints.save_checkpoint({'epoch': 2}, path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']


def test_append_on_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / 'metrics.jsonl'
    utils.append_line(path, '{"epoch": 1}')
    real_open = open

    class Full:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr('builtins.open', Full)
    with pytest.raises(utils.UserError, match='the disk is full'):
        utils.append_line(path, '{"epoch": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"epoch": 1}\n'


@pytest.mark.parametrize('rank, is_main, disable', [(None, True, None), ('0', True, None), ('1', True, True),
                                                  ('0', False, True), ('3', False, True)])
def test_only_rank_0_draws_a_progress_bar(monkeypatch, rank, is_main, disable):
    """disable=None draws on a terminal; True never draws. Under torchrun (RANK) only rank 0 may draw, even
    in a loop a rank runs on its own."""
    if rank is None:
        monkeypatch.delenv('RANK', raising=False)
    else:
        monkeypatch.setenv('RANK', rank)
    captured = {}
    import tqdm

    class Spy:
        def __init__(self, iterable, disable=None, **kwargs):
            captured['disable'] = disable
    monkeypatch.setattr(tqdm, 'tqdm', Spy)
    utils.progress([1, 2], is_main=is_main)
    assert captured['disable'] is disable
