"""The house's import direction, read from the source with ast (imports inside functions count too):

  on top:       demo.py  benchmarks/  proxy_study/     import logic modules, never a CLI script
  stages:       train_supernet/  evolutionary_search/  retrain/      none imports another stage
  shared:       utils.py and its siblings, data.py, spaces/      import only shared modules and leaves
  leaves:       genotypes.py  operations.py  imagenet_reference.py   import nothing of the project
"""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

LEAVES = {'genotypes', 'operations', 'imagenet_reference'}
STAGES = {'train_supernet', 'evolutionary_search', 'retrain'}
TOP = {'demo', 'benchmarks', 'proxy_study', 'docs'}


def project_modules(root=ROOT):
    """{dotted module name: path} of every project .py file outside tests/."""
    mods = {}
    for path in sorted(root.rglob('*.py')):
        rel = path.relative_to(root)
        if rel.parts[0] in ('tests', '.git', 'runs', 'data') or rel.parts[0].startswith('.'):
            continue
        parts = list(rel.with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        mods['.'.join(parts)] = path
    return mods


def imported(tree, mods):
    """The project modules a module's source imports (`from pkg import mod` counts as pkg.mod)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
        else:
            continue
        found |= {n for n in names if n in mods}
    return found


def is_cli(tree):
    """A script: it has an `if __name__ == '__main__':` block at the top level."""
    return any(isinstance(n, ast.If) and isinstance(n.test, ast.Compare) and isinstance(n.test.left, ast.Name)
               and n.test.left.id == '__name__' for n in tree.body)


def layer(module):
    top = module.split('.')[0]
    if top in LEAVES:
        return 'leaf'
    if top in STAGES:
        return 'stage'
    if top in TOP:
        return 'top'
    return 'shared'


def violations(root=ROOT):
    """One line per import that goes against the direction above."""
    mods = project_modules(root)
    trees = {m: ast.parse(p.read_text(), str(p)) for m, p in mods.items()}
    clis = {m for m, t in trees.items() if is_cli(t)}
    bad = []
    for m, tree in trees.items():
        for dep in sorted(imported(tree, mods) - {m}):
            mine, theirs = layer(m), layer(dep)
            if dep in clis:
                bad.append(f'{m} imports the CLI script {dep}')
            elif mine == 'leaf':
                bad.append(f'leaf {m} imports {dep}')
            elif mine == 'shared' and theirs in ('stage', 'top'):
                bad.append(f'shared module {m} imports the {theirs} module {dep}')
            elif mine == 'stage' and theirs == 'stage' and dep.split('.')[0] != m.split('.')[0]:
                bad.append(f'stage module {m} imports {dep} of another stage')
            elif mine == 'stage' and theirs == 'top':
                bad.append(f'stage module {m} imports the top-level module {dep}')
    return bad


def test_imports_only_go_downward():
    bad = violations()
    assert not bad, 'imports against the layout:\n' + '\n'.join(bad)


@pytest.mark.parametrize('source, expected', [
    ('from evolutionary_search import metrics\n', 'shared module spaces.fake imports the stage module'),
    ('from retrain.train_loop import evaluate\n', 'shared module spaces.fake imports the stage module'),
    ('def f():\n    import proxy_study.stats\n', 'shared module spaces.fake imports the top module'),
])
def test_an_upward_import_is_caught(tmp_path, source, expected):
    """The checker itself: a copy of the tree with one upward import added fails it."""
    for m, path in project_modules().items():
        dest = tmp_path / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())
    (tmp_path / 'spaces' / 'fake.py').write_text(source)
    assert any(expected in line for line in violations(tmp_path))


def test_a_cross_stage_and_a_cli_import_are_caught(tmp_path):
    for m, path in project_modules().items():
        dest = tmp_path / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())
    (tmp_path / 'retrain' / 'fake.py').write_text('from train_supernet import supernet_training\n')
    (tmp_path / 'proxy_study' / 'fake.py').write_text('from evolutionary_search import search\n')
    bad = violations(tmp_path)
    assert 'stage module retrain.fake imports train_supernet.supernet_training of another stage' in bad
    assert 'proxy_study.fake imports the CLI script evolutionary_search.search' in bad


def test_no_function_is_longer_than_50_lines():
    """Functions (and methods) of the project's code stay short enough to read at once."""
    long = []
    for m, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 50:
                    long.append(f'{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)')
    assert not long, 'functions over 50 lines:\n' + '\n'.join(long)
