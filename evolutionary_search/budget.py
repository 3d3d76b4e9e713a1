"""Cost budgets of the search: --flops_limit (multiply-adds) and --params_limit, measured on a stage-3 network.

    budget = Budget(space, 'imagenet', channels=48, layers=14, num_classes=1000, input_shape=(3, 224, 224),
                    flops_limit=600e6)
    budget.measure(candidate)     # {'macs': 529911552, 'params': 4718752}
    budget.excess(cost)           # None, or 'multiply-adds 699.5M > --flops_limit 600M'

The counting is the one of the `macs` / `params` metrics and of stage 3's log (utils.count_macs,
utils.count_parameters): multiply-adds of one forward pass of one image through the convolutions and linear
layers (BN, ReLU, pooling and additions are not counted, the DARTS papers' convention), and every parameter of the
network without an auxiliary head (there is none here).

The evolution (evolution.py) measures each candidate once (its cost cache) and never proposes one over a limit;
`check_reachable` measures the space's cheapest cell first, so an impossible limit fails at once.
"""
import argparse
import math
import re
from dataclasses import dataclass

import torch

from counting import count_macs, count_parameters
from utils import UserError, require

NETWORKS = ('imagenet', 'cifar')
IMAGENET_INPUT = (3, 224, 224)          # the mobile setting of stage 3
IMAGENET_CLASSES = 1000
SUFFIXES = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}


def parse_amount(text):
    """'600M', '0.6G', '5.5m', '6e8' or '600000000' -> float (argparse type of the limits: a bad value ends with
    argparse's one error line)."""
    m = re.fullmatch(r'\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*', str(text).lower())
    try:
        value = float(m.group(1)) * SUFFIXES[m.group(2)] if m else float('nan')
    except ValueError:
        value = float('nan')
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'a limit must be a positive count such as 600M, 0.6G or 6e8, got {text!r}')
    return value


def millions(n):
    return f'{n / 1e6:.4g}M'


@dataclass(frozen=True)
class Budget:
    space: object                 # spaces.SearchSpace; builds the network (SearchSpace.budget_network)
    network: str                  # 'imagenet' or 'cifar'
    channels: int
    layers: int
    num_classes: int
    input_shape: tuple            # (3, H, W) of one image
    flops_limit: float = None     # multiply-adds; None: no limit
    params_limit: float = None

    def describe(self):
        """The network the costs are measured on, in words (logged and written to genotype.json)."""
        return (f'the {self.space.name} {self.network} network at C={self.channels}, {self.layers} cells, '
                f'{self.num_classes} classes, one {"x".join(map(str, self.input_shape))} image, no auxiliary head')

    def limits(self):
        return {'flops_limit': self.flops_limit, 'params_limit': self.params_limit, 'network': self.describe()}

    def __str__(self):
        named = [f'multiply-adds <= {millions(self.flops_limit)}' if self.flops_limit is not None else '',
                 f'parameters <= {millions(self.params_limit)}' if self.params_limit is not None else '']
        return f'{" and ".join(filter(None, named))} on {self.describe()}'

    def measure(self, candidate):
        """{'macs', 'params'} of the candidate's network. Built under a forked RNG: measuring never changes the
        random numbers of the search."""
        with torch.random.fork_rng(devices=[]):
            net = self.space.budget_network(self.network, candidate, self.channels, self.num_classes, self.layers)
        return {'macs': int(count_macs(net, torch.zeros(1, *self.input_shape))), 'params': int(count_parameters(net))}

    def excess(self, cost):
        """None when `cost` is within both limits, else what exceeds which limit."""
        over = []
        if self.flops_limit is not None and cost['macs'] > self.flops_limit:
            over.append(f'multiply-adds {millions(cost["macs"])} > --flops_limit {millions(self.flops_limit)}')
        if self.params_limit is not None and cost['params'] > self.params_limit:
            over.append(f'parameters {millions(cost["params"])} > --params_limit {millions(self.params_limit)}')
        return ' and '.join(over) or None

    def check_reachable(self):
        """UserError unless the space's cheapest cell (no cell costs less) is within the limits."""
        excess = self.excess(self.measure(self.space.cheapest_candidate()))
        if excess:
            raise UserError(f'no candidate can meet the cost limits: even the cheapest cell has {excess} on '
                            f'{self.describe()}; raise the limit, or measure on a smaller network (--budget_channels, '
                            '--budget_layers, --budget_network)')


def make_budget(args, space, num_classes, image_size):
    """The Budget of the search flags, or None without --flops_limit / --params_limit. `num_classes` and
    `image_size` (H, W) are the searched dataset's: those of the cifar network."""
    if args.flops_limit is None and args.params_limit is None:
        return None
    if args.budget_network not in space.budget_shapes:
        raise UserError(f'--budget_network {args.budget_network} is not available in the {space.name} space; pass '
                        f'--budget_network {" or ".join(space.budget_shapes)}')
    channels, layers = space.budget_shapes[args.budget_network]
    channels, layers = args.budget_channels or channels, args.budget_layers or layers
    require([(ok, message.replace('--init_channels', '--budget_channels').replace('--layers', '--budget_layers'))
             for ok, message in space.check_shape(channels, layers)])      # the space's rules, named by our flags
    imagenet = args.budget_network == 'imagenet'
    return Budget(space, args.budget_network, channels, layers, IMAGENET_CLASSES if imagenet else num_classes,
                  IMAGENET_INPUT if imagenet else (3, *image_size), args.flops_limit, args.params_limit)
