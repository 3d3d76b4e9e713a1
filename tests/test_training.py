"""training.py: the one epoch loop both training stages share, its log lines, the resume hint and the check
that no weight became NaN or infinite."""
import pytest
import torch

import genotypes as G
import training
import utils
from spaces.darts_network import NetworkCIFAR


def test_resume_hint_names_a_checkpoint_that_exists(tmp_path):
    assert '--resume' in training.resume_hint(tmp_path, 'last.pth.tar') and 'starts over' in training.resume_hint(
        tmp_path, 'last.pth.tar')
    (tmp_path / 'last.pth.tar').write_bytes(b'x')
    assert training.resume_hint(tmp_path, 'last.pth.tar') == f'resume from {tmp_path / "last.pth.tar"} (the last good ' \
                                                          'checkpoint)'


def test_require_finite_weights_counts_bad_tensors():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    training.require_finite_weights(net, 'here', 'fix')
    with torch.no_grad():
        net[1].running_var[0] = float('inf')
        net[0].weight[1, 1] = float('nan')
    with pytest.raises(utils.UserError, match=r'^2 weight tensors became NaN or infinite here \(e.g. 0.weight\)'):
        training.require_finite_weights(net, 'here', 'fix')



def test_require_finite_weights_reads_one_value_back_for_the_whole_model(monkeypatch):
    """A healthy model costs one host-device sync (one .item(), no bool() of a tensor), however many tensors it
    has; the names are looked up only after that check failed."""
    net = NetworkCIFAR(4, 10, 3, False, G.GENAS_FLATNESS_CIFAR10)
    reads = []
    item, to_bool = torch.Tensor.item, torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, 'item', lambda t: (reads.append('item'), item(t))[1])
    monkeypatch.setattr(torch.Tensor, '__bool__', lambda t: (reads.append('bool'), to_bool(t))[1])
    training.require_finite_weights(net, 'here', 'fix')
    assert reads == ['item'] and len(net.state_dict()) > 50
    with torch.no_grad():
        net.classifier.weight[0, 0] = float('nan')
    with pytest.raises(utils.UserError, match=r'^1 weight tensors became NaN or infinite here \(e.g. '
                                              r'classifier.weight\)'):
        training.require_finite_weights(net, 'here', 'fix')

def test_a_log_line_at_least_every_30_seconds_whatever_report_freq_says(monkeypatch):
    """With --report_freq far above the epoch's steps, a step that ends 30 s or more after the last line logs
    one anyway (a redirected run is never silent for minutes); it changes nothing else."""
    import logging
    import training
    from distributed import Dist
    from utils import logger
    now = [0.0]
    monkeypatch.setattr(training.time, 'monotonic', lambda: now[0])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    steps = [10.0, 15.0, 31.0, 10.0, 21.0, 40.0]      # seconds each step takes: lines after the 3rd, 5th, 6th
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in steps]

    def step_time():
        now[0] += steps[len(times)]
        times.append(now[0])
    times, lines = [], []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        training.train_epoch(model, batches, len(batches), torch.optim.SGD(model.parameters(), 0.1),
                             torch.amp.GradScaler('cpu', enabled=False), torch.nn.CrossEntropyLoss(),
                             training.StepConfig(5.0), training.EpochConfig(0, 1, 1000, 'fix'), Dist.single(),
                             torch.device('cpu'), training.Hooks(after_step=step_time))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [ln.split(' loss')[0] for ln in lines if ln.startswith('train epoch')] == [
        'train epoch 1 step 3/6', 'train epoch 1 step 5/6', 'train epoch 1 step 6/6']


def _hand_epoch(model, batches, lr, loss_of, forward_args=lambda: ()):
    """Mean loss and top-1 of one epoch of plain SGD steps (clip 5) written out here, without the shared loop."""
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    loss_sum, correct, seen = 0.0, 0, 0
    model.train()
    for x, y in batches:
        opt.zero_grad()
        out = model(x, *forward_args())
        logits = out[0] if isinstance(out, tuple) else out
        loss = loss_of(out, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return loss_sum / seen, correct / seen


def test_both_stages_train_their_epochs_through_the_one_shared_loop(monkeypatch):
    """Stage 1's and stage 3's epoch functions both run training.train_epoch, and what it returns is the mean
    loss and top-1 of the steps, accumulated here by hand on copies of the models."""
    import copy
    import random
    import training
    from data import BatchLoader, synthetic_arrays
    from distributed import Dist
    from retrain import train_loop
    from spaces import get_space
    from spaces.darts_supernet import Network
    from train_supernet import supernet_training
    assert supernet_training.train_epoch is training.train_epoch is train_loop.train_epoch
    calls = []
    spy = lambda *a, **k: calls.append(training.train_epoch(*a, **k)) or calls[-1]      # noqa: E731
    monkeypatch.setattr(supernet_training, 'train_epoch', spy)
    monkeypatch.setattr(train_loop, 'train_epoch', spy)
    cpu, ce, space = torch.device('cpu'), torch.nn.functional.cross_entropy, get_space('darts')
    arrays = synthetic_arrays(96)
    loader = BatchLoader(arrays, torch.arange(96), 32, cpu, shuffle=True, seed=4)     # the same batches each time
    scaler = torch.amp.GradScaler('cpu', enabled=False)

    torch.manual_seed(0)
    supernet = Network(4, 10, 3)
    hand_net, rng = copy.deepcopy(supernet), random.Random(5)
    expected = _hand_epoch(hand_net, list(loader), 0.05, lambda out, y: ce(out, y),
                           lambda: space.forward_args(space.random_candidate(rng)))
    opt = torch.optim.SGD(supernet.parameters(), 0.05, momentum=0.9)
    out = supernet_training.train_supernet_epoch(
        supernet, loader, opt, scaler, torch.nn.CrossEntropyLoss(), random.Random(5), space,
        training.StepConfig(5.0), training.EpochConfig(0, 1, 2, 'fix'), Dist.single(), cpu)
    assert (out.loss, out.acc, out.images) == (pytest.approx(expected[0], rel=1e-6), expected[1], 96)

    torch.manual_seed(0)
    network = NetworkCIFAR(8, 10, 3, True, G.DARTS_V2)
    network.drop_path_prob = 0.0
    expected = _hand_epoch(copy.deepcopy(network), list(loader), 0.05,
                           lambda out, y: ce(out[0], y) + 0.4 * ce(out[1], y))
    protocol = train_loop.Protocol(epochs=1, learning_rate=0.05, momentum=0.9, auxiliary_weight=0.4,
                                   report_freq=2, channels_last=False)
    opt = torch.optim.SGD(network.parameters(), 0.05, momentum=0.9)
    rec = train_loop.train_one_epoch(network, loader, opt, scaler, torch.nn.CrossEntropyLoss(), protocol, 0, 'fix',
                                     Dist.single(), cpu)
    assert (rec['train_loss'], rec['train_acc'], rec['train_images']) == (
        pytest.approx(expected[0], rel=1e-6), expected[1], 96)
    assert len(calls) == 2


@pytest.mark.parametrize('asked, recorded, form, warned', [
    (None, None, 'dense', False),                           # a new run
    (None, {}, 'direct', False),                            # a run recorded before the forms existed
    (None, {'dilated_conv': 'polyphase'}, 'polyphase', False),   # recorded when --dilated_conv was the choice
    (None, {'grad_form': 'polyphase'}, 'polyphase', False),
    (None, {'grad_form': 'dense'}, 'dense', False),
    ('direct', None, 'direct', False),
    ('dense', {'seed': 1}, 'dense', True),                  # asked otherwise than the run started: warned
    ('dense', {'dilated_conv': 'polyphase'}, 'dense', True),
])
def test_a_run_keeps_the_gradient_form_it_started_with(asked, recorded, form, warned, monkeypatch):
    import operations
    from training import use_grad_form
    warnings = []
    monkeypatch.setattr(training.logger, 'warning', lambda *a: warnings.append(a[0] % a[1:]))
    try:
        assert use_grad_form(asked, recorded, 'the run') == form
        assert operations.grad_form() == form
    finally:
        operations.set_grad_form(operations.GRAD_FORMS[0])
    assert any('differ from an uninterrupted one' in w for w in warnings) == warned
