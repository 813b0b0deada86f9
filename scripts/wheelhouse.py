"""make wheelhouse: the patched wheel of every pinned release's line (or of
UPSTREAM_VERSION only) in one folder, for a serving image to install from:

  <folder>/sglang-X+dsv4fix.N-....whl   the wheels, side by side (pip/uv --find-links <folder>)
  <folder>/index.html, sglang/index.html  a PEP 503 simple index over them (--index-url file://<folder>)
  <folder>/SHA256SUMS                   `sha256sum -c SHA256SUMS` checks them

Each wheel is what `make apply UPSTREAM_VERSION=X` builds (its line applied, the wheel
re-packed); no test venv is prepared. A release without a line is named, with the command
that makes its line, and skipped. Wheels already in the folder stay (a team's own, other
releases'), but a rebuilt release's older sglang wheels go; the index and the sums cover
every wheel there.
"""

import argparse
import html
import re
import shutil
import urllib.parse
from pathlib import Path

from scripts.lib import build, config, envs, hints, lines, pins, scratch
from scripts.lib.applying import apply_series
from scripts.lib.errors import SeriesError, run_main
from scripts.lib.wheels import sha256_of

SUMS = "SHA256SUMS"


def project(wheel_name: str) -> str:
    """The PEP 503 normalized project name of a wheel file (its first dash-separated field)."""
    return re.sub(r"[-_.]+", "-", wheel_name.split("-", 1)[0]).lower()


def build_release(paths: config.Paths, rel: config.Release, tools: envs.Tools) -> Path:
    """The release's patched wheel, as `make apply` builds it (reused when up to date)."""
    with scratch.exclusive(paths, rel.version):
        if not scratch.tree(paths, rel.version).exists():  # the slow steps say so before they start
            print("  making the scratch tree from the upstream wheel ...", flush=True)
        apply_series(paths, rel, tools)
        try:
            return build.patched_wheel(paths, rel.version)
        except SeriesError:
            print("  packing the patched wheel ...", flush=True)
        return build.build(paths, rel, tools)


def put(wheel: Path, folder: Path, version: str) -> Path:
    """Copy `wheel` into `folder` in place of the release's earlier sglang wheels."""
    for old in folder.glob(f"sglang-{version}+*.whl"):
        if old.name != wheel.name:
            old.unlink()
    dest = folder / wheel.name
    part = folder / f".{wheel.name}.part"
    shutil.copyfile(wheel, part)
    part.replace(dest)  # never a half-copied wheel under the final name
    return dest


def write_index(folder: Path) -> list[Path]:
    """The simple index and SHA256SUMS over every wheel in `folder`; returns the wheels."""
    wheels = sorted(folder.glob("*.whl"))
    digests = {w.name: sha256_of(w) for w in wheels}
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        projects.setdefault(project(wheel.name), []).append(wheel)
    for name, files in projects.items():
        page = folder / name
        page.mkdir(exist_ok=True)
        links = "".join(f'    <a href="../{urllib.parse.quote(w.name)}#sha256={digests[w.name]}">{html.escape(w.name)}</a><br>\n'
                        for w in files)
        _write(page / "index.html", _page(f"Links for {name}", links))
    root_links = "".join(f'    <a href="{n}/">{n}</a><br>\n' for n in sorted(projects))
    _write(folder / "index.html", _page("Simple index", root_links))
    _write(folder / SUMS, "".join(f"{digests[w.name]}  {w.name}\n" for w in wheels))
    return wheels


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html>\n  <head><meta name="pypi:repository-version" content="1.0">'
            f"<title>{title}</title></head>\n  <body>\n{body}  </body>\n</html>\n")


def _write(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    part.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="only this pinned release (default: every pinned release with a line)")
    parser.add_argument("--dest", help="the folder (default: build/wheelhouse)")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    folder = Path(args.dest).resolve() if args.dest else paths.build / "wheelhouse"
    if args.upstream:
        lines.load(paths, config.release(paths, args.upstream).version)  # no line: the one-line error naming the command
        versions = [args.upstream]
    else:
        versions = pins.pinned_versions(paths)
    if folder.exists() and not folder.is_dir():
        raise SeriesError(f"{folder} is a file, not a folder; give WHEELHOUSE=<a folder> or remove it")
    folder.mkdir(parents=True, exist_ok=True)
    tools = envs.tools(paths)
    built, skipped = [], []
    for number, version in enumerate(versions, 1):
        if not lines.exists(paths, version):
            print(f"[{number}/{len(versions)}] sglang {version}: skipped, it has no line yet "
                  f"({hints.command('rebase', version, WRITE='1', LINE='1')} writes it)", flush=True)
            skipped.append(version)
            continue
        print(f"[{number}/{len(versions)}] sglang {version}: {lines.label(paths, version)}", flush=True)
        wheel = put(build_release(paths, config.release(paths, version), tools), folder, version)
        print(f"  {wheel.name}", flush=True)
        built.append(wheel)
    if not built:
        raise SeriesError(f"no pinned release has a line (skipped: {', '.join(skipped)}); "
                          "write one with `make rebase UPSTREAM_VERSION=X WRITE=1 LINE=1`")
    wheels = write_index(folder)
    example = built[-1].name.split("-")[1]
    print(f"\nwrote {len(built)} wheel(s) into {folder} ({len(wheels)} there, index.html and {SUMS} over them); "
          f"install one with\n  pip install --find-links {folder} 'sglang=={example}'")
    if skipped:
        print(f"skipped for lack of a line: {', '.join(skipped)}")


if __name__ == "__main__":
    run_main(main)
