"""make pin UPSTREAM_VERSION=X: pin sglang X (default: the newest on the package index)
for the rebase tools.

Records X's cp311 manylinux x86_64 wheel (file name, sha256) and a dependency cut-off
date in upstream/releases.json, writes env/X.in from the base's and compiles the
hashed env/X.lock. Everything goes through the package index uv is configured with
(UV_DEFAULT_INDEX / UV_INDEX_URL, uv.toml; uv's default otherwise).
"""

import argparse
import re
import zipfile

from scripts.lib import config, envs, pins, scratch
from scripts.lib.errors import SeriesError, run_main


def requirements_for(paths: config.Paths, version: str) -> str:
    """env/<base>.in with sglang==version: the same tools and constraints for every release."""
    base = config.base_version(paths)
    source = paths.env / f"{base}.in"
    if not source.exists():
        raise SeriesError(f"{source} is missing; restore it with `git checkout -- env/{base}.in`")
    text, count = re.subn(rf"(?m)^sglang=={re.escape(base)}[ \t]*$", f"sglang=={version}", source.read_text())
    if count != 1:
        raise SeriesError(f"{source} has no single `sglang=={base}` line; fix it, then run `make pin` again")
    # the header comment names the release too; the pin line is already replaced above
    return re.sub(rf"sglang {re.escape(base)}(?![\w.])", f"sglang {version}", text, count=1)


_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*([<>=!~][^;]*)?")


def declared_bounds(wheel) -> dict:
    """{package: specifier} for the unconditional, version-bounded requirements in a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(meta).decode().splitlines()
    bounds = {}
    for line in lines:
        if line.startswith("Requires-Dist:") and ";" not in line:
            m = _NAME.match(line.split(":", 1)[1].strip())
            if m and m.group(2):
                bounds[m.group(1).lower().replace("_", "-")] = m.group(2).strip()
    return bounds


def drop_redundant(text: str, bounds: dict, version: str) -> tuple[str, list[str]]:
    """Drop our version constraints (with the comment block above them) on packages that
    sglang `version` bounds itself: upstream took the fix over, the resolver keeps honouring it."""
    out, block, dropped = [], [], []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#") or not line.strip():
            block.append(line)
            continue
        m = _NAME.match(line.strip())
        name = m.group(1).lower().replace("_", "-") if m else ""
        if m and m.group(2) and name != "sglang" and name in bounds:
            out.append(f"# {name}: not constrained here, sglang {version} requires {name}{bounds[name]} itself.\n")
            dropped.append(name)
        else:
            out += block + [line]
        block = []
    return "".join(out + block), dropped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release to pin (default: the newest sglang on the package index)")
    parser.add_argument("--show-newest", action="store_true", help="print the newest version on the index and stop")
    parser.add_argument("--keep-in", action="store_true", help="keep an existing env/X.in (a maintainer adjusted it)")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    if args.show_newest:
        print(pins.newest_version(paths))
        return
    version = config.check_version(args.upstream) if args.upstream else pins.newest_version(paths)
    pin = pins.wheel_pin(paths, version)
    changed = pins.record(paths, version, pin)
    cutoff = (f"deps uploaded up to {pin['exclude_newer']}" if pin["exclude_newer"]
              else "the index gives no upload date: deps not cut off by date")
    print(f"{'pinned' if changed else 'already pinned'} sglang {version}: {pin['wheel']} ({cutoff})", flush=True)
    source = paths.env / f"{version}.in"
    if not (args.keep_in and source.exists()) and version != config.base_version(paths):
        wheel = scratch.upstream_wheel(paths, config.release(paths, version))  # sha256-checked
        text, dropped = drop_redundant(requirements_for(paths, version), declared_bounds(wheel), version)
        source.write_text(text)
        print(f"wrote {source}" + (f" (dropped constraints sglang {version} declares itself: {', '.join(dropped)})" if dropped else ""))
    envs.lock_release(paths, config.release(paths, version))


if __name__ == "__main__":
    run_main(main)
