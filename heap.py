"""The CPU heap between training steps (glibc): keep freed memory for the next step, or hand it back to the OS.

A training step allocates hundreds of MB of activations in its forward pass and frees them in its backward
pass. By default glibc then returns the top of its heap to the OS whenever more than its trim threshold (at
most 64 MB) lies free there, so the next step takes those pages back from the OS one page fault at a time:
about 40,000 faults (160 MB) per NetworkCIFAR step at C=16, 8 layers, batch 64. keep_freed_memory() stops that
(the peak resident memory, reached in every step anyway, stays the same). The supernet's varying paths leave
freed blocks of many sizes, so stage 1 also trims on purpose when its resident memory grows (HeapTrimmer).
"""
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3          # mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 32 << 20       # glibc's own ceiling for the threshold it adjusts as the program runs
_NEVER = 2 ** 31 - 1             # mallopt takes an int


def _libc():
    try:
        import ctypes
        return ctypes.CDLL('libc.so.6')
    except OSError:              # not glibc (macOS, musl)
        return None


def keep_freed_memory():
    """From now on glibc keeps freed heap memory in the process instead of returning the top of the heap to the
    OS (no trim threshold); blocks from 32 MB up still come and go as their own mappings, as glibc's adaptive
    threshold would do by then. Only malloc_trim (HeapTrimmer) returns memory. Returns whether it took effect
    (False without glibc). Results do not depend on it, only the time spent in page faults."""
    libc = _libc()
    if libc is None or not hasattr(libc, 'mallopt'):
        return False
    # Setting either parameter ends glibc's adaptation of both, so both are set.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER))


# --rss_headroom's default: trim when the RSS exceeds 1.2x that after the first step.
DEFAULT_HEADROOM = 0.2


def resident_bytes():
    """This process's resident set size in bytes (Linux), or None."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Call after every training step. On a CPU, as the SPOS paths vary, glibc keeps freed activation
    blocks of many sizes and the RSS of supernet training climbs to about 1.9x its live memory. When
    the RSS exceeds (1 + headroom) x the RSS after the first step, hand the freed memory back to the OS
    (glibc's malloc_trim). headroom 0: after every step (lowest memory, slowest: every step page-faults
    its activations anew); negative: never. Does nothing on GPUs or without glibc. Results do not
    depend on it."""

    def __init__(self, device, headroom):
        self._trim = None
        if device.type == 'cpu' and headroom >= 0 and resident_bytes() is not None:
            self._trim = getattr(_libc(), 'malloc_trim', None)
        self.headroom = headroom if self._trim is not None else -1.0
        self.limit = None
        self.trims = 0

    def __call__(self):
        if self.headroom < 0:
            return
        rss = resident_bytes()
        if self.limit is None:
            self.limit = rss * (1 + self.headroom)
        if self.headroom == 0 or rss > self.limit:
            self._trim(0)
            self.trims += 1
