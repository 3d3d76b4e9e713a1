"""inputs.py: each kind of user input is checked with one line that names the flag, the file and the fix."""
import json
import os

import pytest
import torch

import inputs
from utils import UserError


@pytest.mark.parametrize('value, kwargs, ok', [
    (0, dict(lo=0), True), (-1, dict(lo=0), False), (0, dict(lo=0, lo_open=True), False),
    (1.0, dict(lo=0, hi=1), True), (1.0, dict(lo=0, hi=1, hi_open=True), False),
    (float('nan'), {}, False), (float('inf'), dict(lo=0), False), (2 ** 64, dict(hi=inputs.SEED_MAX), False),
    (None, dict(lo=0), True),
])
def test_number_ranges(value, kwargs, ok):
    if ok:
        assert inputs.number('--x', value, **kwargs) == value or value is None
    else:
        with pytest.raises(UserError, match=r'^--x must be'):
            inputs.number('--x', value, **kwargs)


def test_files_that_are_missing_unreadable_or_directories(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        inputs.readable_file('--f', tmp_path / 'nope', 'a file')
    with pytest.raises(UserError, match='is a directory, not a file'):
        inputs.readable_file('--f', tmp_path, 'a file')
    locked = tmp_path / 'locked'
    locked.write_text('x')
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):              # root reads anything: nothing to refuse
        pytest.skip('running as root: a mode-0 file is still readable')
    with pytest.raises(UserError, match='not readable'):
        inputs.readable_file('--f', locked, 'a file')


@pytest.mark.parametrize('content, message', [
    ([1, 2], 'holds a list, not a dict'), (5, 'holds a int, not a dict'),
    ({'epoch': 1}, "has no 'state_dict' entry"), ({'state_dict': {}, 'epoch': '3'}, "'epoch' entry is a str"),
    ({'state_dict': {}, 'epoch': True}, "'epoch' entry is a bool"),
])
def test_checkpoints_of_the_wrong_shape(tmp_path, content, message):
    path = tmp_path / 'c.pth.tar'
    torch.save(content, path)
    with pytest.raises(UserError, match=message):
        inputs.checkpoint('--resume', path, {'state_dict': dict, 'epoch': int}, 'a stage-3 checkpoint')


def test_a_text_file_as_checkpoint_and_a_good_one(tmp_path):
    (tmp_path / 't.pth.tar').write_text('hello')
    with pytest.raises(UserError, match='cannot load checkpoint'):
        inputs.checkpoint('--resume', tmp_path / 't.pth.tar', {}, 'a checkpoint')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'epoch': 2}, tmp_path / 'g.pth.tar')
    got = inputs.checkpoint('--resume', tmp_path / 'g.pth.tar', {'state_dict': dict, 'epoch': int}, 'a checkpoint')
    assert got['epoch'] == 2


@pytest.mark.parametrize('text, message', [
    ('[]', 'holds a list, not a dict'), ('"abc"', 'holds a str'), ('{"args": {}}', "no 'evolution' entry"),
    ('{"args": {}, "evolution": []}', "'evolution' entry is a list"), ('{', 'not valid JSON'),
])
def test_json_documents_of_the_wrong_shape(tmp_path, text, message):
    path = tmp_path / 'd.json'
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        inputs.json_document('--resume', path, {'args': dict, 'evolution': dict}, 'a search checkpoint')
    path.write_bytes(b'\x80\x81\x00')
    with pytest.raises(UserError, match='binary file'):
        inputs.json_document('--resume', path, {'args': dict}, 'a search checkpoint')
    path.write_text(json.dumps({'args': {}, 'evolution': {}}))
    assert inputs.json_document('--resume', path, {'args': dict, 'evolution': dict}, 'x') == {'args': {}, 'evolution': {}}
