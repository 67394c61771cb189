"""`lowbitc cache info|clear`: inspect or empty the persistent compile cache."""

from __future__ import annotations

import argparse
import json

from lowbitc.cache import Cache

NAME = "cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("info", "clear"), help="what to do")
    parser.add_argument("--dir", default=None, help="cache directory (default: the usual one)")
    parser.add_argument("--json", action="store_true", help="print `info` as JSON")


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def run(args: argparse.Namespace) -> int:
    cache = Cache(args.dir)
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.path}")
        return 0
    info = cache.info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"path:         {info['path']}")
    print(f"entries:      {info['entries']}")
    print(f"size:         {_size(info['bytes'])} of {_size(info['max_bytes'])}")
    for kind, row in info["by_kind"].items():
        print(f"  {kind + ':':<12}{row['entries']} entries, {_size(row['bytes'])}")
    print(f"codegen hash: {info['codegen_hash'][:16]}")
    return 0
