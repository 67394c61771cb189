"""Thread pools for grid launches; the default one is LLVM IR, JIT-compiled on first use.

Python-level pools pay several GIL hand-offs per launch (about 20-30 us here); this pool
costs one ctypes call (~1-3 us more than a single-threaded call). Workers are pthreads that
spin on their own wake word for a short while after each job (so back-to-back launches find
them awake), then sleep on it with a futex; a launch bumps the words of the workers it wants.
All threads, the launching one included, claim parts from one atomic counter, so a worker
that is slow to wake costs parallelism, never latency. Linux x86-64 only; elsewhere
`available()` is False and callers fall back to the Python pool.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

from lowbitc.backends.llvm import native
from lowbitc.errors import BackendError, LowbitcError, UserArgumentError

__all__ = [
    "KERNEL_CFUNC",
    "MAX_WORKERS",
    "NativePool",
    "PythonPool",
    "available",
    "get_pool",
    "pool_kind",
    "split_blocks",
]

MAX_WORKERS = 255
SPIN_CYCLES = 200_000  # ~60 us of spinning (timestamp counter) before a worker sleeps
_SYS_FUTEX, _SYS_SCHED_YIELD, _SYS_GETTID = 202, 24, 186
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_SLOT = f"[{MAX_WORKERS} x [16 x i32]]"  # per worker, one cache line: {wake, sleeping, pad}

_POOL_IR = f"""
@slots = internal global {_SLOT} zeroinitializer, align 64
@claim = internal global i64 0, align 64
@done = internal global i64 0, align 64
@nworkers = internal global i64 0, align 64
@job_fn = internal global ptr null, align 64
@job_args = internal global ptr null
@job_nblocks = internal global i64 0
@spin_cycles = internal global i64 {SPIN_CYCLES}
@threads = internal global [{MAX_WORKERS} x i64] zeroinitializer
@tids = internal global [{MAX_WORKERS} x i64] zeroinitializer

declare i64 @syscall(i64, ...)
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i64 @llvm.readcyclecounter()
declare void @llvm.x86.sse2.pause()

; blocks [nblocks*p/nparts, nblocks*(p+1)/nparts) of the current job
define internal void @run_part(i64 %p, i64 %k) {{
  %fn = load ptr, ptr @job_fn
  %args = load ptr, ptr @job_args
  %n = load i64, ptr @job_nblocks
  %p1 = add i64 %p, 1
  %lo.x = mul i64 %n, %p
  %lo = udiv i64 %lo.x, %k
  %hi.x = mul i64 %n, %p1
  %hi = udiv i64 %hi.x, %k
  call void %fn(ptr %args, i64 %lo, i64 %hi)
  ret void
}}

; Claim and run parts until none is left. @claim = (nparts << 32) | next part, so a claim
; made late (after its launch finished) can never run a part of the wrong launch.
define internal void @run_parts() {{
entry:
  br label %claim
claim:
  %word = atomicrmw add ptr @claim, i64 1 acq_rel
  %p = and i64 %word, 4294967295
  %k = lshr i64 %word, 32
  %left = icmp ult i64 %p, %k
  br i1 %left, label %run, label %out
run:
  call void @run_part(i64 %p, i64 %k)
  %d = atomicrmw add ptr @done, i64 1 acq_rel
  br label %claim
out:
  ret void
}}

; Worker i helps with the current launch each time its wake word changes; the launcher bumps
; the words of the workers it wants, so the others are never disturbed.
define internal ptr @worker(ptr %arg) {{
entry:
  %idx = ptrtoint ptr %arg to i64
  %wake = getelementptr inbounds {_SLOT}, ptr @slots, i64 0, i64 %idx, i64 0
  %sleeping = getelementptr inbounds {_SLOT}, ptr @slots, i64 0, i64 %idx, i64 1
  %tid = call i64 (i64, ...) @syscall(i64 {_SYS_GETTID})
  %tid.at = getelementptr inbounds [{MAX_WORKERS} x i64], ptr @tids, i64 0, i64 %idx
  store atomic i64 %tid, ptr %tid.at release, align 8
  br label %wait
wait:
  %seen = phi i32 [0, %entry], [%cur, %run]
  %t0 = call i64 @llvm.readcyclecounter()
  %budget = load i64, ptr @spin_cycles
  br label %spin
spin:
  %cur = load atomic i32, ptr %wake acquire, align 4
  %changed = icmp ne i32 %cur, %seen
  br i1 %changed, label %run, label %spin.more
spin.more:
  call void @llvm.x86.sse2.pause()
  %t = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %t, %t0
  %tired = icmp ugt i64 %spent, %budget
  br i1 %tired, label %sleep, label %spin
sleep:
  store atomic i32 1, ptr %sleeping seq_cst, align 4
  %seen64 = zext i32 %seen to i64
  %r = call i64 (i64, ...) @syscall(i64 {_SYS_FUTEX}, ptr %wake, i64 {_FUTEX_WAIT_PRIVATE},
                                    i64 %seen64, ptr null)
  store atomic i32 0, ptr %sleeping seq_cst, align 4
  br label %spin
run:
  call void @run_parts()
  br label %wait
}}

; start workers until there are `n`; returns 0 or the first pthread_create error
define i32 @lowbitc_pool_grow(i64 %n) {{
entry:
  %have = load i64, ptr @nworkers
  br label %loop
loop:
  %i = phi i64 [%have, %entry], [%i.next, %made]
  %more = icmp ult i64 %i, %n
  br i1 %more, label %make, label %done
make:
  %arg = inttoptr i64 %i to ptr
  %slot = getelementptr inbounds [{MAX_WORKERS} x i64], ptr @threads, i64 0, i64 %i
  %err = call i32 @pthread_create(ptr %slot, ptr null, ptr @worker, ptr %arg)
  %bad = icmp ne i32 %err, 0
  br i1 %bad, label %fail, label %made
made:
  %i.next = add i64 %i, 1
  store i64 %i.next, ptr @nworkers
  br label %loop
fail:
  ret i32 %err
done:
  ret i32 0
}}

; the kernel thread id of worker i (0 until it has started)
define i64 @lowbitc_pool_tid(i64 %i) {{
  %at = getelementptr inbounds [{MAX_WORKERS} x i64], ptr @tids, i64 0, i64 %i
  %t = load atomic i64, ptr %at acquire, align 8
  ret i64 %t
}}

define i64 @lowbitc_pool_workers() {{
  %n = load i64, ptr @nworkers
  ret i64 %n
}}

; run fn(args, lo, hi) over nparts ranges of [0, nblocks), waking `helpers` workers; the
; calling thread claims parts too, so a slow-to-wake worker only costs parallelism, and with
; more parts than threads a thread slowed by other work on its core runs fewer of them.
; helpers must be 0..nworkers; launches must not overlap (the caller serialises them).
define void @lowbitc_pool_launch(ptr %fn, ptr %args, i64 %nblocks, i64 %nparts,
                                 i64 %helpers) {{
entry:
  store ptr %fn, ptr @job_fn
  store ptr %args, ptr @job_args
  store i64 %nblocks, ptr @job_nblocks
  store atomic i64 0, ptr @done seq_cst, align 8
  %k.hi = shl i64 %nparts, 32
  store atomic i64 %k.hi, ptr @claim seq_cst, align 8
  br label %notify
notify:
  %i = phi i64 [0, %entry], [%i.next, %notified]
  %go = icmp ult i64 %i, %helpers
  br i1 %go, label %bump, label %mine
bump:
  %wake = getelementptr inbounds {_SLOT}, ptr @slots, i64 0, i64 %i, i64 0
  %sleeping = getelementptr inbounds {_SLOT}, ptr @slots, i64 0, i64 %i, i64 1
  %old = load atomic i32, ptr %wake monotonic, align 4
  %new = add i32 %old, 1
  store atomic i32 %new, ptr %wake seq_cst, align 4
  %asleep = load atomic i32, ptr %sleeping seq_cst, align 4
  %must = icmp ne i32 %asleep, 0
  br i1 %must, label %wakeup, label %notified
wakeup:
  %w = call i64 (i64, ...) @syscall(i64 {_SYS_FUTEX}, ptr %wake, i64 {_FUTEX_WAKE_PRIVATE}, i64 1)
  br label %notified
notified:
  %i.next = add i64 %i, 1
  br label %notify
mine:
  call void @run_parts()
  br label %join
join:
  %tries = phi i64 [0, %mine], [%tries.next, %pause], [%tries.next, %yield]
  %finished.n = load atomic i64, ptr @done acquire, align 8
  %finished = icmp uge i64 %finished.n, %nparts
  br i1 %finished, label %done, label %again
again:
  %tries.next = add i64 %tries, 1
  %patient = icmp ult i64 %tries, 4096
  br i1 %patient, label %pause, label %yield
pause:
  call void @llvm.x86.sse2.pause()
  br label %join
yield:
  %y = call i64 (i64, ...) @syscall(i64 {_SYS_SCHED_YIELD})
  br label %join
done:
  ret void
}}

; two launches in one call (e.g. quantize the activations, then the GEMV that reads them):
; each runs inline when it has one part, else over the pool as lowbitc_pool_launch does
define void @lowbitc_pool_launch2(ptr %f1, ptr %a1, i64 %n1, i64 %p1, i64 %h1,
                                  ptr %f2, ptr %a2, i64 %n2, i64 %p2, i64 %h2) {{
entry:
  %one1 = icmp ule i64 %p1, 1
  br i1 %one1, label %inline1, label %pool1
inline1:
  call void %f1(ptr %a1, i64 0, i64 %n1)
  br label %second
pool1:
  call void @lowbitc_pool_launch(ptr %f1, ptr %a1, i64 %n1, i64 %p1, i64 %h1)
  br label %second
second:
  %one2 = icmp ule i64 %p2, 1
  br i1 %one2, label %inline2, label %pool2
inline2:
  call void %f2(ptr %a2, i64 0, i64 %n2)
  ret void
pool2:
  call void @lowbitc_pool_launch(ptr %f2, ptr %a2, i64 %n2, i64 %p2, i64 %h2)
  ret void
}}
"""

# Pin each worker off the launching thread's CPU (NativePool._place); False leaves placement
# to the kernel's scheduler.
PLACE_WORKERS = True


def _libc_getcpu():
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return lambda: -1
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


_getcpu = _libc_getcpu()

KERNEL_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_LAUNCH = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_int64)
_LAUNCH2 = ctypes.CFUNCTYPE(None, *(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_int64) * 2)
_GROW = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64)
_WORKERS = ctypes.CFUNCTYPE(ctypes.c_int64)
_TID = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)


def available() -> bool:
    """Whether this platform can run the native pool (Linux on x86-64)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def split_blocks(nblocks: int, parts: int) -> list[tuple[int, int]]:
    """[0, nblocks) cut into `parts` contiguous ranges whose sizes differ by at most one."""
    parts = max(1, min(parts, nblocks))
    return [(nblocks * p // parts, nblocks * (p + 1) // parts) for p in range(parts)]


def _cut(nblocks: int, nparts: int, threads: int | None) -> tuple[int, int]:
    """(parts, helper workers) of a launch: 1..nblocks parts, and one thread per part (at
    most `threads`, the caller one of them)."""
    nparts = max(1, min(nparts, nblocks))
    return nparts, min(nparts if threads is None else threads, nparts) - 1


def _pool_module():
    """The pool's machine code, from the persistent compile cache when there is one (a shared
    library where a linker is found: then no llvmlite)."""
    name = "lowbitc_thread_pool"
    try:
        return native.module(_POOL_IR, name, fresh=True)  # each pool has its own globals
    except (LowbitcError, OSError):
        pass  # an unusable cache only costs the compile below
    from lowbitc.backends.llvm import jit

    return jit.compile_ir(_POOL_IR, name)


class NativePool:
    """The native pool: pthread workers; launches from Python threads are serialised."""

    kind = "native"

    def __init__(self) -> None:
        module = _pool_module()
        self.launch = _LAUNCH(module.address("lowbitc_pool_launch"))
        self._launch2 = _LAUNCH2(module.address("lowbitc_pool_launch2"))
        self._grow = _GROW(module.address("lowbitc_pool_grow"))
        self._workers = _WORKERS(module.address("lowbitc_pool_workers"))
        self._tid = _TID(module.address("lowbitc_pool_tid"))
        self.busy = threading.Lock()
        self._module = module
        self._placed: tuple[int, int] | None = None  # (caller's CPU, workers) last placed
        self._have = 0  # workers started (they never exit)

    @property
    def workers(self) -> int:
        return int(self._workers())

    def _ensure_workers(self, n: int) -> int:
        """At least min(n, MAX_WORKERS) workers started (they never exit); returns how many."""
        n = min(n, MAX_WORKERS)
        if n <= self._have:
            return self._have
        have = self._workers()
        if n > have:
            err = self._grow(n)
            if err:
                raise BackendError(f"cannot start thread-pool workers: pthread_create error {err}")
            have = self._workers()
        self._have = have
        return have

    def _ready(self, helpers: int) -> int:
        """Start and place the workers a launch with `helpers` of them needs; how many run."""
        have = self._ensure_workers(helpers)
        if have and PLACE_WORKERS:
            self._place(have)
        return have

    def run(self, fn_address: int, args: ctypes.Array, nblocks: int, nparts: int,
            threads: int | None = None) -> bool:
        """Run `nparts` ranges of the grid on `threads` threads (default one per part; the
        caller is one of them) claiming parts as they go; False (nothing run) if busy."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            nparts, helpers = _cut(nblocks, nparts, threads)
            have = self._ready(helpers)
            self.launch(fn_address, args, nblocks, nparts, min(helpers, have))
        finally:
            self.busy.release()
        return True

    def run2(self, first: tuple, second: tuple) -> bool:
        """Two launches in one native call, `second` after `first`: each (fn_address, args,
        nblocks, nparts, threads) as `run` takes them, a launch of one part run inline. False
        (nothing run) if busy."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            fn1, args1, n1, p1, t1 = first
            fn2, args2, n2, p2, t2 = second
            (p1, h1), (p2, h2) = _cut(n1, p1, t1), _cut(n2, p2, t2)
            have = self._ready(max(h1, h2))
            self._launch2(fn1, args1, n1, p1, min(h1, have), fn2, args2, n2, p2, min(h2, have))
        finally:
            self.busy.release()
        return True

    def _place(self, workers: int) -> None:
        """Keep the workers off the launching thread's CPU: each worker may run only on its
        own one of the process's other CPUs (while there are enough of them). Linux woke a
        worker that had slept for more than ~10 ms onto the launcher's own CPU and left it
        there, beside the launcher, for whole bursts of calls while the other CPU idled (AMD
        EPYC Zen 4 VM, 2 CPUs: a u2 int8 GEMV called after 20 ms idle ran at 1.00 CPUs per
        wall second, 265 us a call, against 1.95 and 133 us after 2 ms idle). A syscall per
        worker, only when the launcher's CPU (or the worker count) changed."""
        cpu = _getcpu()
        if cpu < 0 or (cpu, workers) == self._placed:
            return
        self._placed = (cpu, workers)
        try:
            allowed = sorted(os.sched_getaffinity(0))
            # the CPUs after the launcher's, in turn: processes launching from different
            # CPUs place their workers on different ones
            others = [c for c in allowed if c > cpu] + [c for c in allowed if c < cpu]
            if workers > len(others):  # more threads than CPUs: let the kernel share them
                masks = [set(allowed)] * workers
            else:
                masks = [{others[i]} for i in range(workers)]
            for i, mask in enumerate(masks):
                tid = self._worker_tid(i)
                if tid:
                    os.sched_setaffinity(tid, mask)
        except OSError:  # a cpuset that forbids it, a worker that exited: leave placement be
            pass

    def _worker_tid(self, i: int) -> int:
        """Worker i's thread id, once it has started (it stores it first thing)."""
        for _ in range(100_000):
            tid = int(self._tid(i))
            if tid:
                return tid
            os.sched_yield()
        return 0


class _PyWorker:
    """A daemon thread that runs one block range per `go` release and then releases `done`."""

    def __init__(self, index: int):
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.job: tuple = ()
        self.error: BaseException | None = None
        name = f"lowbitc-grid-{index}"
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        go, done = self.go, self.done
        while True:
            go.acquire()
            try:
                fn, args, begin, end = self.job
                fn(args, begin, end)
            except BaseException as exc:  # handed back to the launching thread
                self.error = exc
            finally:
                self.job = ()
                done.release()


class PythonPool:
    """Portable fallback: Python threads (ctypes drops the GIL); ~20-30 us per launch here."""

    kind = "python"

    def __init__(self) -> None:
        self.workers_: list[_PyWorker] = []
        self.busy = threading.Lock()
        self._cfuncs: dict[int, object] = {}

    @property
    def workers(self) -> int:
        return len(self.workers_)

    def run(self, fn_address: int, args: ctypes.Array, nblocks: int, nparts: int,
            threads: int | None = None) -> bool:
        """Run the grid in parallel on min(`nparts`, `threads`) threads, one contiguous range
        each; False (nothing run) if busy."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            fn = self._cfuncs.get(fn_address)
            if fn is None:
                fn = self._cfuncs.setdefault(fn_address, KERNEL_CFUNC(fn_address))
            nparts = nparts if threads is None else min(nparts, threads)
            ranges = split_blocks(nblocks, min(nparts, MAX_WORKERS + 1))
            while len(self.workers_) < len(ranges) - 1:
                self.workers_.append(_PyWorker(len(self.workers_)))
            used = self.workers_[: len(ranges) - 1]
            for worker, (begin, end) in zip(used, ranges[1:], strict=True):
                worker.job = (fn, args, begin, end)
                worker.go.release()
            try:
                fn(args, *ranges[0])
            finally:
                for worker in used:
                    worker.done.acquire()
            for worker in used:
                if worker.error is not None:
                    error, worker.error = worker.error, None
                    raise error
        finally:
            self.busy.release()
        return True


_POOL: NativePool | PythonPool | None = None
_POOL_LOCK = threading.Lock()


def pool_kind() -> str:
    """ "native" or "python": LOWBITC_THREAD_POOL if set, else native where available."""
    kind = os.environ.get("LOWBITC_THREAD_POOL", "").strip().lower() or (
        "native" if available() else "python"
    )
    if kind not in ("native", "python"):
        raise UserArgumentError(f"LOWBITC_THREAD_POOL: expected 'native' or 'python', got {kind!r}")
    if kind == "native" and not available():
        raise UserArgumentError(
            f"LOWBITC_THREAD_POOL=native: no native pool on {sys.platform}/{platform.machine()}"
        )
    return kind


def get_pool() -> NativePool | PythonPool:
    """The process's thread pool (kind from `pool_kind()`), built on first use."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = NativePool() if pool_kind() == "native" else PythonPool()
    return _POOL


def _forget_pool_after_fork() -> None:
    # The child has none of the parent's worker threads: build a fresh pool when needed.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
