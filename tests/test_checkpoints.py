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


class OnGpu(torch.Tensor):
    """Stands for a CUDA tensor: .cpu() returns a plain tensor (a GPU one would return its host copy)."""

    def cpu(self, *args, **kwargs):
        return torch.Tensor(self.as_subclass(torch.Tensor).clone())


def test_saved_checkpoints_hold_cpu_tensors_only(tmp_path):
    """Weights (a state_dict with its _metadata), optimizer state, RNG states, nested lists and named tuples:
    every tensor is moved by .cpu() before torch.save, so torch.load works without a GPU."""
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: torch.Tensor
        b: int

    net = nn.BatchNorm1d(3)
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    on_gpu = lambda t: t.as_subclass(OnGpu)      # noqa: E731
    sd = net.state_dict()
    gpu_sd = type(sd)((k, on_gpu(v)) for k, v in sd.items())
    gpu_sd._metadata = sd._metadata
    optim = opt.state_dict()
    optim['state'] = {k: {n: on_gpu(v) for n, v in st.items()} for k, st in optim['state'].items()}
    state = {'state_dict': gpu_sd, 'optimizer': optim, 'rng': {'cuda': [on_gpu(torch.zeros(4, dtype=torch.uint8))]},
             'pair': Pair(on_gpu(torch.ones(2)), 3), 'epoch': 1}
    moved = checkpoints.to_cpu(state)
    found = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            found.append(type(x))
        elif isinstance(x, dict):
            list(map(walk, x.values()))
        elif isinstance(x, (list, tuple)):
            list(map(walk, x))
    walk(moved)
    assert len(found) == 5 + 2 + 1 + 1 and set(found) == {torch.Tensor}, found
    assert moved['state_dict']._metadata == sd._metadata and isinstance(moved['pair'], Pair)
    assert all(torch.equal(moved['state_dict'][k], v) for k, v in sd.items())
    plain = {'a': torch.ones(2), 'b': [torch.zeros(1)]}          # CPU already: the very same objects
    assert checkpoints.to_cpu(plain) is plain
    del state['pair']                    # weights-only files hold no classes of their own
    checkpoints.save_checkpoint(state, tmp_path / 'c.pth.tar')
    loaded = torch.load(tmp_path / 'c.pth.tar', weights_only=True)
    assert type(loaded['state_dict']['weight']) is torch.Tensor and type(loaded['rng']['cuda'][0]) is torch.Tensor
