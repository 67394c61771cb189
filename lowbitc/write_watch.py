"""Which watched host arrays were written since they were last checked, from the kernel's own
page tables (Linux >= 6.7: userfaultfd asynchronous write-protection + the PAGEMAP_SCAN ioctl,
the mechanism Wine uses for Windows' write watches).

`WATCH.watch(array)` registers the pages under an array's bytes for write tracking and
write-protects them; any later write to one of those pages (numpy, torch, a `read()` into the
buffer, another thread) is resolved by the kernel on the spot and leaves the page marked
written. `WATCH.written(handle)` asks the kernel, in one ioctl that walks the page table (about
10 us for 16 MiB), whether any of the array's pages was written since the last ask, and
protects them again. A page shared with a neighbouring allocation may report the neighbour's
writes too (a false alarm: the caller then compares contents). Writes through another mapping
of the same memory (another process, a second `mmap` of a shared file) are not seen; nor is
memory the kernel cannot track (file-backed mappings other than shmem): `watch` then returns
None and the caller falls back to comparing contents on every call.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

MIN_BYTES = 1 << 18  # smaller arrays are cheaper to compare than to register
_PAGE = mmap.PAGESIZE
_SYS_USERFAULTFD = 323  # x86_64
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_FEATURE_WP_UNPOPULATED = 1 << 13
_FEATURE_WP_ASYNC = 1 << 15
_MODE_WP = 1 << 1
_SCAN_WP_MATCHING = 1 << 0
_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


class _Api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _Register(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Scan(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


_UFFDIO_API = _iowr(_UFFD_API, 0x3F, ctypes.sizeof(_Api))
_UFFDIO_REGISTER = _iowr(_UFFD_API, 0x00, ctypes.sizeof(_Register))
_UFFDIO_UNREGISTER = (2 << 30) | (ctypes.sizeof(_Range) << 16) | (_UFFD_API << 8) | 0x01
_PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_Scan))


@dataclass(eq=False)
class Watched:
    """The pages [start, end) of one watched array; `dirty` collects the address ranges in
    it that a scan of any watched range found written."""

    start: int
    end: int
    dirty: list[tuple[int, int]] = field(default_factory=list)


class WriteWatch:
    """Write tracking of host arrays' pages; every method is thread-safe and never raises for
    an unsupported system (`watch` returns None, `written` the whole range)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = -1
        self._uffd = self._pagemap = -1
        self._ranges: list[Watched] = []
        self._regions = (_Region * 64)()
        self._libc = None

    def _open(self) -> bool:
        """Opens (once per process) the userfaultfd and /proc/self/pagemap; False if the
        system cannot track writes."""
        if self._pid == os.getpid():
            return self._uffd >= 0
        self._pid, self._uffd, self._ranges = os.getpid(), -1, []  # a forked child starts over
        if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        for flags in (os.O_CLOEXEC | os.O_NONBLOCK,
                      os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY):
            fd = libc.syscall(_SYS_USERFAULTFD, flags)
            if fd >= 0:
                break
        else:
            return False
        api = _Api(_UFFD_API, _FEATURE_WP_ASYNC | _FEATURE_WP_UNPOPULATED, 0)
        try:
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            return False
        if libc.ioctl(fd, _UFFDIO_API, ctypes.byref(api)) < 0:
            os.close(fd)
            os.close(pagemap)
            return False
        self._libc, self._uffd, self._pagemap = libc, fd, pagemap
        return True

    def available(self) -> bool:
        """Whether this process can track writes (Linux >= 6.7 on x86_64, userfaultfd
        allowed)."""
        with self._lock:
            return self._open()

    def watch(self, array: np.ndarray) -> Watched | None:
        """Starts tracking writes to `array`'s pages (C-contiguous, at least MIN_BYTES);
        None if they cannot be tracked."""
        if array.nbytes < MIN_BYTES or not array.flags.c_contiguous:
            return None
        start = array.ctypes.data // _PAGE * _PAGE
        end = -(-(array.ctypes.data + array.nbytes) // _PAGE) * _PAGE
        with self._lock:
            if not self._open():
                return None
            reg = _Register(start, end - start, _MODE_WP, 0)
            if self._libc.ioctl(self._uffd, _UFFDIO_REGISTER, ctypes.byref(reg)) < 0:
                if ctypes.get_errno() != errno.EBUSY:  # EBUSY: already registered (overlap)
                    return None
            w = Watched(start, end)
            if not self._scan(w):  # protects every page; the first answer is discarded
                return None
            w.dirty.clear()
            self._ranges.append(w)
            return w

    def written(self, w: Watched) -> list[tuple[int, int]]:
        """The address ranges of `w`'s pages written since the last call (or since `watch`):
        empty if none was."""
        with self._lock:
            if self._pid != os.getpid() or not self._scan(w):
                return [(w.start, w.end)]
            got, w.dirty = w.dirty, []
            return got

    def forget(self, w: Watched) -> None:
        """Stops tracking `w` (its array died); pages no other watched range covers are
        unregistered (errors ignored: the memory may be unmapped already)."""
        with self._lock:
            if w not in self._ranges or self._pid != os.getpid():
                return
            self._ranges.remove(w)
            if not any(r.start < w.end and w.start < r.end for r in self._ranges):
                rng = _Range(w.start, w.end - w.start)
                self._libc.ioctl(self._uffd, _UFFDIO_UNREGISTER, ctypes.byref(rng))

    def _scan(self, w: Watched) -> bool:
        """PAGEMAP_SCAN over w's pages: finds the written ones, protects them again and marks
        every watched range that holds one (w too) dirty. False if the kernel refused."""
        start = w.start
        while start < w.end:
            arg = _Scan(ctypes.sizeof(_Scan), _SCAN_WP_MATCHING | _SCAN_CHECK_WPASYNC, start,
                        w.end, 0, ctypes.addressof(self._regions), len(self._regions), 0, 0,
                        _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN)
            n = self._libc.ioctl(self._pagemap, _PAGEMAP_SCAN, ctypes.byref(arg))
            if n < 0 or arg.walk_end <= start:
                return False
            for reg in self._regions[:n]:
                for r in {id(r): r for r in (w, *self._ranges)}.values():
                    if r.start < reg.end and reg.start < r.end:
                        r.dirty.append((max(r.start, reg.start), min(r.end, reg.end)))
            start = arg.walk_end
        return True

WATCH = WriteWatch()
