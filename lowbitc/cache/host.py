"""What LLVM calls this host (CPU name, features, LLVM version), remembered per host fingerprint.

Cache keys name the target as LLVM sees it. Asking LLVM means importing llvmlite (30-40 ms,
most of a cache hit), so the answer is recorded in the cache directory under a fingerprint of
everything it depends on: the CPU as the kernel reports it (/proc/cpuinfo: vendor, family,
model, stepping, flags) and the llvmlite install (version, path, size, mtime and inode of its
shared library). A changed CPU or llvmlite changes the fingerprint, so LLVM is asked again. A
record that fails its checksum is ignored and rewritten; a host without /proc/cpuinfo, or with
the cache turned off, asks LLVM every time.

`LOWBITC_TARGET_CPU` names a CPU to compile for instead (a subset of this host's, so the code
still runs here): the host's features less those that CPU lacks (TARGET_CPUS), applied after
the record is read, so the record keeps the real host and cache keys separate the two.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lowbitc.cache.fsutil import atomic_write, default_cache_dir, ensure_private_dir
from lowbitc.errors import CacheError, UserArgumentError

# /proc/cpuinfo fields that vary between cores or over time and do not change what LLVM sees
_VOLATILE = frozenset({
    "processor", "cpu MHz", "bogomips", "BogoMIPS", "core id", "apicid", "initial apicid",
    "physical id", "siblings", "cpu cores", "microcode", "power management",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class LLVMHost:
    """LLVM's host CPU name, its feature string (`flatten()`, LLVM's order) and LLVM version."""

    cpu: str
    features: str
    llvm: str


def _first_cpu(text: str) -> list[str]:
    """The stable `key: value` lines of the first processor in /proc/cpuinfo text."""
    block = text.split("\n\n", 1)[0]
    lines = []
    for line in block.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() not in _VOLATILE:
            lines.append(f"{name.strip()}:{value.strip()}")
    return lines


def _llvmlite_library() -> list[str] | None:
    """Path, version, size, mtime and inode of llvmlite's shared library, or None if unseen."""
    spec = importlib.util.find_spec("llvmlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    binding = Path(next(iter(spec.submodule_search_locations))) / "binding"
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(binding), key=lambda e: e.name):
            if entry.name.startswith("libllvmlite") or entry.name.startswith("llvmlite."):
                st = entry.stat()
                return [entry.path, str(st.st_size), str(st.st_mtime_ns), str(st.st_ino)]
    return None


@functools.lru_cache(maxsize=1)
def fingerprint() -> str | None:
    """A digest of the CPU and the llvmlite install, or None where it cannot be taken cheaply."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = _first_cpu(f.read(65536))
    except OSError:
        return None
    library = _llvmlite_library()
    if not cpu or library is None:
        return None
    parts = [sys.platform, platform.machine(), *cpu, *library]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def query_llvm() -> LLVMHost:
    """Ask LLVM (imports llvmlite)."""
    import llvmlite.binding as llvm  # ~30 ms: only when no record answers

    return LLVMHost(
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        llvm=".".join(map(str, llvm.llvm_version_info)),
    )


def _checksum(host: dict, fp: str) -> str:
    return hashlib.sha256(json.dumps([fp, host], sort_keys=True).encode()).hexdigest()


def _read_record(path: Path, fp: str) -> LLVMHost | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        host = LLVMHost(**data["host"])
        if not all(isinstance(v, str) for v in asdict(host).values()):
            return None
        if data["fingerprint"] != fp or data["sha256"] != _checksum(asdict(host), fp):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return host


def record_path(fp: str) -> Path | None:
    """Where the record for fingerprint `fp` lives, or None with the cache off or unsafe."""
    if os.environ.get("LOWBITC_NO_CACHE", "") not in ("", "0"):
        return None
    try:
        root = ensure_private_dir(default_cache_dir())
    except CacheError:
        return None
    return root / "hosts" / f"{fp}.json"


def real_host() -> LLVMHost:
    """LLVM's view of this host: from the record for this host's fingerprint, else from LLVM
    (and then recorded). Not cached: `llvm_host` is."""
    fp = fingerprint()
    path = record_path(fp) if fp is not None else None
    if path is None:
        return query_llvm()
    host = _read_record(path, fp)
    if host is None:
        host = query_llvm()
        record = {"fingerprint": fp, "host": asdict(host), "sha256": _checksum(asdict(host), fp)}
        with contextlib.suppress(OSError):  # a read-only cache only costs asking LLVM again
            atomic_write(path, json.dumps(record, sort_keys=True).encode())
    return host


# Prefixes of the LLVM feature names of AVX-512 and of the vector extensions after it
# (AVX-VNNI and AVX-IFMA came with Alder Lake; AMX and AVX10 later).
_NO_AVX512 = ("avx512", "amx", "avx10", "avxvnni", "avxifma", "avxneconvert", "evex512")
# and of what LLVM also uses on 256-bit vectors that older CPUs lack
_NO_GFNI = (*_NO_AVX512, "gfni")
_NO_VAES = (*_NO_GFNI, "vaes", "vpclmulqdq")
# Named CPUs the backend can target (LOWBITC_TARGET_CPU) by LLVM CPU name -> the prefixes of
# the host features it lacks. CPUs with AVX-512 keep the host's features: only the name
# changes (the per-CPU tables in backends/llvm/target.py and LLVM's scheduling model).
TARGET_CPUS: dict[str, tuple[str, ...]] = {
    "haswell": _NO_VAES, "broadwell": _NO_VAES, "skylake": _NO_VAES,
    "znver1": _NO_VAES, "znver2": _NO_VAES, "znver3": _NO_GFNI,
    # Alder Lake has AVX-VNNI, not its int8/int16 forms
    "alderlake": ("avx512", "amx", "avx10", "avxvnniint", "avxifma", "avxneconvert", "evex512"),
    "znver4": (), "znver5": (), "skylake-avx512": (), "cascadelake": (), "icelake-server": (),
    "sapphirerapids": (), "emeraldrapids": (), "graniterapids": (),
}  # fmt: skip


def for_target(host: LLVMHost, cpu: str) -> LLVMHost:
    """`host` as compiled for the named CPU `cpu` ("" = `host` itself): its name, and every
    feature of `host` whose name starts with a prefix the CPU lacks turned off."""
    if not cpu:
        return host
    if cpu not in TARGET_CPUS:
        raise UserArgumentError(
            f"LOWBITC_TARGET_CPU: expected one of {', '.join(sorted(TARGET_CPUS))} (or unset "
            f"for this host), got {cpu!r}")
    lacks = TARGET_CPUS[cpu]
    features = ",".join(f"-{f[1:]}" if f[1:].startswith(lacks) else f
                        for f in host.features.split(",") if f)
    return LLVMHost(cpu=cpu, features=features, llvm=host.llvm)


@functools.lru_cache(maxsize=1)
def llvm_host() -> LLVMHost:
    """The CPU the backend compiles for: this host (`real_host`), or the CPU named by
    LOWBITC_TARGET_CPU with the features it lacks turned off (`for_target`)."""
    return for_target(real_host(), os.environ.get("LOWBITC_TARGET_CPU", "").strip())
