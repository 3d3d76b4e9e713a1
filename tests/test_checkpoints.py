"""checkpoints.py: atomic, weights-only checkpoints and state dicts that load whatever wrapped the model."""
import pytest
import torch
import torch.nn as nn

import checkpoints
import seeding
from utils import UserError


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
