"""Process settings that keep step timings honest.

glibc returns a freed block of more than 32 MiB (the CNN's ~48 MB of activations) to the kernel
and maps it again on the next step: ~12k page faults per step, which made CNN backprop 1.6x
slower and its timings noisy (CV 41% -> 3.5%; see BENCHMARKS.md). Raising malloc's mmap and trim
thresholds keeps those blocks in the heap. Both must be raised: either one alone is worse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30
_done = False


def keep_large_allocations() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where not glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _done = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    return _done
