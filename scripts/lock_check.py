"""Compare the running environment with a lock file (requirements/lock.txt).

    python scripts/lock_check.py requirements/lock.txt           fail if a locked package has another version
    python scripts/lock_check.py --header requirements/lock.txt  only warn if this Python/platform is not the lock's
    python scripts/lock_check.py --environment                   print this environment's header lines

The lock is ``name==version`` lines (pip freeze) under a header of ``# key: value`` comments that
scripts/lock.sh writes; the header names the Python and platform the set was tested on.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import sysconfig
from importlib import metadata


def canonical(name: str) -> str:
    # PEP 503: case, '-', '_' and '.' do not distinguish package names.
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_header() -> dict[str, str]:
    """What scripts/lock.sh records of the environment a lock was made in."""
    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "platform": sysconfig.get_platform(),
    }


def read_lock(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header, {canonical name: version}) of a lock file."""
    header: dict[str, str] = {}
    pins: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        lines = [raw.strip() for raw in f]
    for line in lines:
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: not a 'name==version' line: {line!r}")
        pins[canonical(name)] = version.strip()
    return header, pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?")
    parser.add_argument("--header", action="store_true", help="only compare the Python version and platform")
    parser.add_argument("--environment", action="store_true",
                        help="print the '# key: value' header lines of this environment (scripts/lock_write.sh)")
    args = parser.parse_args(argv)
    if args.environment:
        print("\n".join(f"# {k}: {v}" for k, v in environment_header().items()))
        return 0
    if args.lock is None:
        parser.error("the lock file is required")
    header, pins = read_lock(args.lock)
    here = environment_header()
    differs = [f"{k} {header.get(k)} (lock) vs {v} (here)" for k, v in here.items() if header.get(k) != v]
    if differs:
        print(f"lock_check: warning: {args.lock} was tested on another environment: {'; '.join(differs)}. "
              "Installing its versions anyway; if that fails, `bash scripts/setup.sh --latest` installs the "
              "newest versions the ranges allow.", file=sys.stderr)
    if args.header:
        return 0
    have = installed()
    wrong = sorted(f"{n} {have[n]} (lock: {v})" for n, v in pins.items() if n in have and have[n] != v)
    if wrong:
        print(f"lock_check: installed versions differ from {args.lock}: " + ", ".join(wrong), file=sys.stderr)
        return 1
    # heta_fast itself is installed editable after this check; the venv's pip is not locked.
    extra = sorted(n for n in have if n not in pins and n not in ("heta-fast", "pip"))
    if extra:
        print(f"lock_check: note: installed but not in the lock (left by an earlier setup?): {', '.join(extra)}",
              file=sys.stderr)
    print(f"lock_check: {len(pins)} locked packages, every installed one at its locked version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
