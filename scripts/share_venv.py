"""Hard-link distributions installed in this venv into another venv's site-packages, so pip finds them installed.

    <source venv>/bin/python scripts/share_venv.py <target venv> torch torchvision

Run by scripts/setup.sh before the Jazzy venv's ``pip install``: torch, torchvision and what they require (CUDA
libraries, triton, ...) are 5.3 GB per venv, the same pinned files in both, and a second copy filled the CI
machine's disk. Each named distribution and everything it requires (by name, whatever is installed here) is
linked, unless the target already has a distribution of that name; pip then keeps the linked ones where their
versions satisfy the target's requirements, and replaces them where not (removing a link never touches the other
venv's file). Files outside site-packages (console scripts) are copied with their ``#!`` line pointed at the
target's Python. A distribution's ``.dist-info`` is linked last, so one cut short by an error is not taken for
installed. Where hard links cannot be made (another file system), nothing more is linked and pip installs as usual.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement  # installed with torch's requirements (via pytest, matplotlib)


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions named, and recursively every installed one they require on this platform,
    with the extras they ask for (torch asks for ``cuda-toolkit[cublas,...]``)."""
    installed = {_key(d.metadata["Name"]): d for d in md.distributions()}
    todo = [(_key(n), "") for n in names]
    seen, found = set(), {}
    while todo:
        key, extra = todo.pop()
        if (key, extra) in seen or key not in installed:
            continue
        seen.add((key, extra))
        found[key] = dist = installed[key]
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo.extend((_key(req.name), e) for e in ["", *req.extras])
    return found


def _share(dist: md.Distribution, target: Path, python: Path) -> int:
    """Links (or, for scripts, copies) one distribution's files into ``target``; returns the bytes linked."""
    source = Path(dist.locate_file(""))
    files = sorted(dist.files or [], key=lambda f: ".dist-info" in f.parts[0])  # dist-info last
    done: list[Path] = []
    size = 0
    try:
        for f in files:
            src = source / f
            if not src.is_file():
                continue  # RECORD lists __pycache__ entries that may not exist
            dst = Path(os.path.normpath(target / f))
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.parts[0] == "..":  # a console script in bin/
                text = src.read_bytes()
                if text.startswith(b"#!"):
                    text = b"#!" + bytes(python) + text[text.index(b"\n"):]
                dst.write_bytes(text)
                dst.chmod(src.stat().st_mode)
            else:
                os.link(src, dst)
                size += src.stat().st_size
            done.append(dst)
    except OSError:
        for dst in done:
            dst.unlink(missing_ok=True)
        raise
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="the venv to link into")
    parser.add_argument("names", nargs="+", help="distributions to share, with what they require")
    args = parser.parse_args(argv)
    python = args.target.resolve() / "bin" / "python"
    sites = list((args.target / "lib").glob("python*/site-packages"))
    if len(sites) != 1:
        parser.error(f"{args.target} has no single lib/python*/site-packages")
    target = sites[0].resolve()
    present = {_key(d.metadata["Name"]) for d in md.distributions(path=[str(target)])}
    shared, size = [], 0
    for key, dist in sorted(_closure(args.names).items()):
        if key in present:
            continue
        try:
            size += _share(dist, target, python)
        except OSError as e:
            print(f"share_venv: not sharing {key} and the rest ({e}); pip installs them", file=sys.stderr)
            break
        shared.append(f"{key}=={dist.version}")
    print(f"{len(shared)} distributions ({size / 2**30:.1f} GiB) hard-linked from {sys.prefix}: {' '.join(shared)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
