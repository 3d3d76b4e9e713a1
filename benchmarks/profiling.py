"""One round of a workload under torch.profiler: the top ops by self CPU time and the top-level modules by
their forward's CPU time (a record_function range around each call of a module's forward methods)."""
import contextlib
import functools

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MODULE_PREFIX = 'module::'
_MISSING = object()


def top_level_modules(model):
    """(name, module) of the model's children, a ModuleList's or ModuleDict's items in its place (the supernet's
    cells are called one by one, never the list)."""
    for name, child in model.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            yield from ((f'{name}.{k}', m) for k, m in child.named_children())
        else:
            yield name, child


def _ranged(method, name, active):
    """method inside record_function('module::<name>'), unless a range of that module is open already (a forward
    that calls another of its forward methods counts once)."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        if active[0]:
            return method(*args, **kwargs)
        active[0] += 1
        try:
            with record_function(MODULE_PREFIX + name):
                return method(*args, **kwargs)
        finally:
            active[0] -= 1
    return call


@contextlib.contextmanager
def module_ranges(model):
    """Every call of a top-level module's forward methods (forward, and those a parent calls directly, such as
    the supernet cells' forward_relu) runs inside record_function('module::<name>'); the methods are wrapped on
    the instances and restored afterwards."""
    patched = []
    for name, module in top_level_modules(model):
        active = [0]
        for attr in sorted(a for a in dir(type(module)) if a.startswith('forward')):
            method = getattr(module, attr)
            if callable(method):
                patched.append((module, attr, module.__dict__.get(attr, _MISSING)))
                object.__setattr__(module, attr, _ranged(method, name, active))
    try:
        yield
    finally:
        for module, attr, old in reversed(patched):
            if old is _MISSING:
                object.__delattr__(module, attr)
            else:
                object.__setattr__(module, attr, old)


def _row(e, device_type):
    row = {'name': e.key, 'calls': e.count, 'self_cpu_ms': e.self_cpu_time_total / 1e3,
           'cpu_total_ms': e.cpu_time_total / 1e3}
    if device_type == 'cuda':
        row['self_cuda_ms'] = getattr(e, 'self_device_time_total', getattr(e, 'self_cuda_time_total', 0)) / 1e3
    return row


def profile_round(run, model, device, top=10):
    """{'by_op': [...], 'by_module': [...]} of one call of run(): ops by self CPU time, modules (forward only;
    their backward runs outside the ranges) by total CPU time, `top` of each."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with module_ranges(model), profile(activities=activities) as prof:
        run()
    events = prof.key_averages()
    ops = sorted((e for e in events if not e.key.startswith(MODULE_PREFIX)), key=lambda e: -e.self_cpu_time_total)
    mods = sorted((e for e in events if e.key.startswith(MODULE_PREFIX)), key=lambda e: -e.cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    return {'by_op': [_row(e, device.type) for e in ops[:top]],
            'by_module': [dict(_row(e, device.type), name=e.key[len(MODULE_PREFIX):]) for e in mods[:top]],
            'self_cpu_total_ms': total}


def format_profile(name, prof):
    """The readable table of a profile_round result."""
    lines = [f'== profile of {name}: self CPU total {prof["self_cpu_total_ms"]:.1f} ms']
    for title, rows, key in (('op', prof['by_op'], 'self_cpu_ms'), ('module (forward)', prof['by_module'],
                                                                     'cpu_total_ms')):
        lines.append(f'{"top " + title:<48} {"calls":>7} {key:>14}')
        lines += [f'{r["name"][:48]:<48} {r["calls"]:>7} {r[key]:>14.2f}' for r in rows]
    return '\n'.join(lines)
