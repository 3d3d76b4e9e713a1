"""seeding.py: the random-number state round trip and the derived seeds."""
import random

import numpy as np
import torch

import checkpoints
import seeding


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
