"""make lock / make lock-tools: regenerate a hashed lock with uv.

The test lock of a release resolves env/<version>.in with packages uploaded no
later than the release's `exclude_newer` date (upstream/releases.json), so the
dependencies that drifted since the release stay at their contemporaneous versions.
uv resolves through the package index it is configured with (UV_DEFAULT_INDEX /
UV_INDEX_URL, uv.toml).
"""

import argparse
import subprocess

from scripts.lib import config, envs
from scripts.lib.errors import SeriesError, run_main


def compile_lock(paths: config.Paths, source, target, extra: list[str], command: str) -> None:
    tools = envs.tools(paths)
    cmd = [str(tools.uv), "pip", "compile", str(source), "-o", str(target), "-q", "--generate-hashes",
           "--python-version", "3.11", "--custom-compile-command", command, *extra]
    proc = subprocess.run(cmd, cwd=paths.root, env=envs.uv_env(paths), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"uv pip compile {source.name} failed: {envs.uv_reason(proc.stderr)}; fix {source}, then run `{command}`")
    print(f"wrote {target}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    parser.add_argument("--tools", action="store_true", help="regenerate env/tools.lock instead")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    if args.tools:
        compile_lock(paths, paths.env / "tools.in", paths.env / "tools.lock", [], "make lock-tools")
        return
    rel = config.release(paths, args.upstream)
    source = paths.env / f"{rel.version}.in"
    if not source.exists():
        raise SeriesError(f"{source} is missing; copy env/{config.base_version(paths)}.in and set sglang=={rel.version}")
    # no cut-off when the package index did not say when the release was uploaded
    cutoff = ["--exclude-newer", rel.exclude_newer] if rel.exclude_newer else []
    # env/X.overrides replaces a pin of sglang's own that cannot be installed from the index
    overrides = paths.env / f"{rel.version}.overrides"
    override = ["--overrides", str(overrides)] if overrides.exists() else []
    compile_lock(
        paths, source, paths.env / f"{rel.version}.lock",
        ["--python-platform", "x86_64-manylinux_2_34", *cutoff, *override, "--no-emit-package", "sglang"],
        f"make lock UPSTREAM_VERSION={rel.version}",
    )


if __name__ == "__main__":
    run_main(main)
