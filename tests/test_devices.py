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


def test_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    """A V100 / T4 emulates bf16 (is_bf16_supported() says True by default): --amp takes fp16 and its scaler."""
    import devices
    calls = []

    def supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation          # emulated only
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', supported)
    assert devices.amp_dtype(torch.device('cuda')) == torch.float16 and calls == [False]
    assert devices.amp_dtype(torch.device('cpu')) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)    # Ampere+
    assert devices.amp_dtype(torch.device('cuda')) == torch.bfloat16
    # a torch without the argument counts native support only
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: False)
    assert devices.amp_dtype(torch.device('cuda')) == torch.float16


@pytest.fixture
def restored_determinism(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', torch.backends.cudnn.benchmark)
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_turns_benchmark_off_and_fixes_cublas(monkeypatch, restored_determinism):
    import os
    import devices
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda i: None)
    devices.choose_device('cuda', 0)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ
    devices.choose_device('cuda', 0, share=True, benchmark=False)         # scoring
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    devices.choose_device('cuda', 0, deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'


@pytest.mark.parametrize('stage', ['train_supernet.train', 'evolutionary_search.search', 'retrain.retrain'])
def test_each_stage_takes_deterministic(stage):
    import importlib
    module = importlib.import_module(stage)
    argv = ['--model_path', 'x'] if stage.startswith('evolutionary') else []
    assert module.get_args_parser().parse_args(argv + ['--deterministic']).deterministic is True
    assert module.get_args_parser().parse_args(argv).deterministic is False
