"""Writes find-links pages for a folder of wheels, so pip picks a variant from it.

    python tools/wheel_index.py dist

``dist/index.html`` links every wheel; ``dist/<variant>.html`` (``pt214cpu.html``,
``pt214cu130.html``, one per local version label found) links that variant's wheels and the
unlabelled ones (the pure-Python plugins), for ``pip install fusedembed -f dist/pt214cpu.html``
where several variants share the folder. Each link carries a ``#sha256=`` fragment, which pip
checks against the file it downloads. Standard library only: it runs without the project's
environment, on any folder collected from the build machines.
"""

import argparse
import hashlib
import html
import sys
import urllib.parse
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>{title}</h1>
{links}
</body>
</html>
"""


def local_label(wheel: Path):
    """'fusedembed-0.1.0+pt214cpu-cp311-cp311-linux_x86_64.whl' -> 'pt214cpu'; None without one."""
    parts = wheel.name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{wheel}: expected a wheel file name NAME-VERSION[-BUILD]-PY-ABI-PLATFORM.whl")
    _, _, label = parts[1].partition("+")
    return label or None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_page(path: Path, title: str, wheels: list, digests: dict) -> None:
    links = "\n".join(f'<a href="{html.escape(urllib.parse.quote(w.name))}#sha256={digests[w]}">'
                      f"{html.escape(w.name)}</a><br>" for w in wheels)
    path.write_text(PAGE.format(title=html.escape(title), links=links), encoding="utf-8")


def write_index(folder: Path) -> list:
    """Writes the pages; returns their paths, index.html first."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"folder: expected wheels (*.whl) in {folder}, found none (run `make wheel` first)")
    digests = {w: sha256(w) for w in wheels}
    labels = {w: local_label(w) for w in wheels}
    pages = [folder / "index.html"]
    write_page(pages[0], "fusedembed wheels", wheels, digests)
    for label in sorted({lab for lab in labels.values() if lab}):
        page = folder / f"{label}.html"
        write_page(page, f"fusedembed wheels: {label}", [w for w in wheels if labels[w] in (label, None)], digests)
        pages.append(page)
    return pages


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder holding the wheels (dist/)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"folder: expected a directory of wheels, got {args.folder} (not a directory)")
    for page in write_index(args.folder):
        print(page)


if __name__ == "__main__":
    sys.exit(main())
