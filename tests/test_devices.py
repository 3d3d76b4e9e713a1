"""devices.py: which device each process takes."""
import pytest
import torch


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
