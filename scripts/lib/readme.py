"""The generated parts of README.md: its title, the table of fixes (tests/fixes.toml) and
the table release -> the patches it gets, each between `<!-- name:begin -->` and
`<!-- name:end -->` markers (the matrix table is written the same way by
`make matrix PUBLISH=1`)."""

import re

from . import config, fixes, hints, lines, pins, series
from .errors import SeriesError

TITLE = "# sglang DSV4 / HiCache fix series for sglang {base}"


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SeriesError(f"README.md lacks the {begin} ... {end} block; add it where the {name} belongs")
    return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{body}{end}", text, flags=re.S)


def lines_table(paths: config.Paths) -> str:
    """Every pinned release, its series file and the patches it gets."""
    base = config.base_version(paths)
    rows = ["| release | line | patches it gets | fixes it lacks a port of |", "|---|---|---|---|"]
    for version in sorted(config.load_releases(paths)["releases"], key=pins.version_key):
        name = f"{version} (base)" if version == base else version
        if not lines.exists(paths, version):
            rows.append(f"| {name} | none yet | not judged: {hints.command('rebase', version)} | |")
            continue
        file = lines.series_file(paths, version)
        patches = series.load(paths.patches, file)
        # a patch written on another release names that release's folder
        gets = ", ".join(p.name.split("-", 1)[0] + ("" if p.entry.startswith(f"{lines.LINES}/{version}/")
                                                    else f" ({p.entry.split('/')[1]})") for p in patches)
        if not patches:
            gets = "none: " + (series.declared_empty(file) or "no patch listed")
        lacks = ", ".join(lines.lacking(file)) or "none"
        rows.append(f"| {name} | `{lines.label(paths, version)}` | {gets} | {lacks} |")
    return "\n".join(rows) + "\n"


def fixes_table(paths: config.Paths) -> str:
    """Every fix of tests/fixes.toml: where it comes from, the checks that judge it, and
    the patch files that carry it (by the release each was written on)."""
    registry = fixes.load(paths.root, required=False)
    carried = lines.ports(paths, registry)
    rows = ["| fix | what a user sees fixed | checks (tests/registered/...) | ports (written on) |", "|---|---|---|---|"]
    for fix in registry:
        by_file = {}
        for test in fix.tests:
            file, _, rest = test.removeprefix("tests/registered/").partition("::")
            by_file.setdefault(file, []).append(rest.split("::")[-1] if rest else "")
        tests = "<br>".join(f"`{f}`" + (": " + ", ".join(n for n in names if n) if any(names) else "")
                            for f, names in by_file.items())
        ports = ", ".join(f"{e.split('/')[2].split('-', 1)[0]} ({lines.port_release(e)})" for e in carried.get(fix.pr, []))
        origin = "downstream" if fix.upstream == fixes.DOWNSTREAM else f"upstream, first released in {fix.upstream}" \
            if fix.upstream else "upstream"
        rows.append(f"| {fix.pr} ({origin}) | {fix.title} | {tests} | {ports or 'none: a guard'} |")
    return "\n".join(rows) + "\n"


def refresh(paths: config.Paths) -> bool:
    """Rewrite the README's title and lines table from the pins and the series; False when
    this checkout has no README with the markers (a synthetic upstream in the tooling tests)."""
    readme = paths.root / "README.md"
    if paths.patches != paths.root / "patches" or not readme.exists():
        return False
    text = readme.read_text()
    text = replace_block(text, "title", TITLE.format(base=config.base_version(paths)) + "\n")
    text = replace_block(text, "lines", lines_table(paths))
    text = replace_block(text, "fixes", fixes_table(paths))
    readme.write_text(text)
    return True
