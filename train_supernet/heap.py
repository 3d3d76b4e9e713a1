"""Returning freed heap memory to the OS during stage-1 training on a CPU (glibc's malloc_trim).

Only the supernet needs it: its path changes every step, so glibc keeps freed activation blocks of many
sizes; a fixed stage-3 network reuses the same blocks and does not grow.
"""
import os

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
            try:
                import ctypes
                self._trim = ctypes.CDLL('libc.so.6').malloc_trim
            except (OSError, AttributeError):     # not glibc (macOS, musl)
                pass
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
