"""counting.py: top-k hits, multiply-adds and parameter counts, checked against counts by hand."""
import torch
import torch.nn as nn

import counting


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
