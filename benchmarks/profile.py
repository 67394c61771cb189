"""Where a compiled kernel spends its time: `perf record` (software cpu-clock samples) of one
thread calling a kernel in cache, the samples that fall in the kernel's JIT code mapped onto
its disassembly (objdump of the code's bytes). No symbols are needed: the kernel's address
comes from the compiled module. Needs `perf` (Debian's linux-perf) and `objdump` (binutils).

    python -m benchmarks.profile ops u4 --act i8          # ops.matmul's kernel, N = K = 4096
    python -m benchmarks.profile user gptq_act --M 1      # a user kernel of examples/user

prints the share of samples per 256-byte stretch of the code and the hottest instructions,
and writes every instruction with its sample count to `--out` (default
/tmp/lowbitc_profile.txt)."""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

CODE_BYTES = 65536  # bytes of the kernel's code read back (its function and what follows)


def _ops_case(fmt: str, act: str, group: int, m: int) -> tuple[object, Callable[[], object]]:
    from benchmarks.ab import case
    from lowbitc import ops

    qw, x = case(fmt, group, m, 4096)
    ops._PLANS.clear()
    ops.matmul(x, qw, act=act)
    kernel = list(ops._PLANS.values())[-1]  # the matmul itself (after any quantize_a8)
    return kernel, lambda: ops.matmul(x, qw, act=act)


def _user_case(which: str, m: int) -> tuple[object, Callable[[], object]]:
    import lowbitc
    from benchmarks.user_cases import user_case

    made = []
    compile_ = lowbitc.compile

    def keep(*a, **kw):
        made.append(compile_(*a, **kw))
        return made[-1]

    lowbitc.compile = keep
    try:
        timed, _, _ = user_case("profile", which, 4096, m, seed=0)
    finally:
        lowbitc.compile = compile_
    return made[-1], timed.fn


def _readable(addr: int, most: int) -> int:
    """How many bytes from `addr` (at most `most`) lie in the anonymous mappings (JIT
    memory) that contain it and follow it without a gap: reading past them faults, and a
    file mapped right after may end before its mapping does."""
    end = addr
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "0" and len(fields) == 5:  # no file behind it
                spans.append(tuple(int(x, 16) for x in fields[0].split("-")))
    for lo, hi in sorted(spans):
        if lo <= end < hi:
            end = hi
    return max(0, min(most, end - addr))


def profile(kernel, call: Callable[[], object], seconds: float, out: str) -> dict:
    """{"calls", "us_per_call", "samples", "in_kernel", "regions": {offset: share},
    "hottest": [(share, offset, instruction)]} of `call` run for `seconds` under perf."""
    if not (shutil.which("perf") and shutil.which("objdump")):
        raise RuntimeError("benchmarks.profile needs perf (linux-perf) and objdump (binutils)")
    module = kernel._exe.module
    name = f"lbk_{kernel.name}"
    addr = module.address(name)
    code = bytes((ctypes.c_ubyte * _readable(addr, CODE_BYTES)).from_address(addr))
    with tempfile.TemporaryDirectory() as tmp:
        data, binary = os.path.join(tmp, "perf.data"), os.path.join(tmp, "code.bin")
        with open(binary, "wb") as f:
            f.write(code)
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "10000", "-p",
                                 str(os.getpid()), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attached
        t0, calls = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            call()
            calls += 1
        wall = time.perf_counter() - t0
        perf.send_signal(2)
        perf.wait()
        ips = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], capture_output=True,
                             text=True, check=True).stdout.split()
        listing = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64",
                                  "--no-show-raw-insn", binary], capture_output=True, text=True,
                                 check=True).stdout
    counts = collections.Counter(int(ip, 16) for ip in ips)
    total = max(1, sum(counts.values()))
    inside = {ip - addr: c for ip, c in counts.items() if addr <= ip < addr + CODE_BYTES}
    rows = []
    for line in listing.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s*(.*)", line)
        if m:
            off = int(m.group(1), 16)
            rows.append((inside.get(off, 0), off, m.group(2).strip()))
    with open(out, "w") as f:
        f.write(f"# {name}: {calls} calls, {wall / max(1, calls) * 1e6:.1f} us a call; "
                f"samples per instruction (of {total})\n")
        for c, off, ins in rows:
            f.write(f"{c:7d} {off:6x}  {ins}\n")
    regions = collections.Counter()
    for off, c in inside.items():
        regions[off // 256 * 256] += c
    return {"calls": calls, "us_per_call": wall / max(1, calls) * 1e6, "samples": total,
            "in_kernel": sum(inside.values()) / total,
            "regions": {off: c / total for off, c in sorted(regions.items())},
            "hottest": [(c / total, off, ins) for c, off, ins in sorted(rows, reverse=True)[:20]
                        if c]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("ops", "user"), help="ops.matmul or a user kernel")
    ap.add_argument("name", help="ops: a format (formats joined by '+': a mixture, or an "
                    "interop format); user: a kernel of benchmarks.user_cases.USER_KERNELS")
    ap.add_argument("--act", default="f32", choices=("f32", "i8"))
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "lowbitc_profile.txt"))
    args = ap.parse_args(argv)
    os.environ["LOWBITC_NUM_THREADS"] = "1"  # one thread: the samples are one core's
    os.environ["LOWBITC_NO_CACHE"] = "1"  # JIT code, whose address the module knows
    kernel, call = (_ops_case(args.name, args.act, args.group, args.M) if args.what == "ops"
                    else _user_case(args.name, args.M))
    res = profile(kernel, call, args.seconds, args.out)
    print(f"{kernel.name}: {res['calls']} calls, {res['us_per_call']:.1f} us a call (one "
          f"thread, in cache); {res['in_kernel']:.0%} of {res['samples']} samples in its code")
    for off, share in res["regions"].items():
        if share >= 0.005:
            print(f"  {off:6x}-{off + 255:6x}  {share:6.1%}")
    print("hottest instructions:")
    for share, off, ins in res["hottest"][:12]:
        print(f"  {share:6.2%} {off:6x}  {ins}")
    print(f"every instruction with its samples: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
