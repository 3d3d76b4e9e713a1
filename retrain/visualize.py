"""Draw a genotype's normal and reduction cells as DARTS-style DAGs.

    python3 retrain/visualize.py --arch GENAS_FLATNESS_CIFAR100 --out cells/genas_flatness_c100
    python3 retrain/visualize.py --arch runs/search-wlm/genotype.json

Always writes <out>_normal.dot and <out>_reduce.dot (Graphviz text); where the `dot` program is
installed (Debian: graphviz) also renders .png and .pdf next to them. The folder of <out> holds drawings: it
is locked while they are written, and the folder of another kind of run (a retrain run draws its own cells)
is refused.
"""
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import genotypes  # noqa: E402
import inputs  # noqa: E402
from retrain.drawing import plot_genotype  # noqa: E402
from utils import ArgumentParser, lock_run_dir, locks_released, run_cli  # noqa: E402

KIND = 'drawings'           # what the folder of --out holds (utils.RUN_KINDS)


def get_args_parser():
    p = ArgumentParser(description='Draw the cells of a genotype.')
    p.add_argument('--arch', required=True, help='named genotype or genotype .json')
    p.add_argument('--save', '--out', dest='out', default=None, metavar='STEM',
                   help='output path stem (STEM_normal.png, ...); None means cells/<arch name>')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.out is None:
        args.out = os.path.join('cells', Path(args.arch).stem if args.arch.endswith('.json') else args.arch)
    return args


@locks_released
def main(args):
    genotype = genotypes.resolve_genotype(args.arch)
    folder = inputs.writable_dir('--out', Path(args.out).parent)
    lock_run_dir(folder, KIND)
    written = plot_genotype(genotype, args.out)
    for paths in written.values():
        for p in paths:
            print(p)
    if not shutil.which('dot'):
        print('graphviz `dot` not found: wrote .dot files only (apt-get install -y graphviz to render)',
              file=sys.stderr)
    return written


if __name__ == '__main__':
    run_cli(main, parse_args)
