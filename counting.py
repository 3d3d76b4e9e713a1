"""Counting: correct predictions, parameters and multiply-adds of a network."""
import torch


def topk_correct(logits, target, topk=(1,)):
    """Number of samples whose target is among the top-k logits, for each k (0-dim tensors on the
    logits' device, so summing them needs no synchronization)."""
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices                 # (N, maxk)
    hit = pred.eq(target.view(-1, 1))                        # (N, maxk)
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


def count_parameters(model, skip='auxiliary'):
    """Number of parameter elements, leaving out those whose name contains `skip`."""
    return sum(p.numel() for n, p in model.named_parameters() if not (skip and skip in n))


def count_macs(model, example_input, *forward_args):
    """Multiply-adds of one forward pass in eval mode, counted by torch.utils.flop_counter
    (convolutions and matrix products; FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example_input, *forward_args)
    model.train(was_training)
    return counter.get_total_flops() // 2

