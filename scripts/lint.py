"""make lint: check the lines and the tests for the mistakes that make a green run lie.

- every line's entries exist, none twice; every patch file is on a line, in the folder
  of the release it was written on; every line names what the evidence asks of it
  (lib/lines.py derive: the fixes docs/matrix.json says the release lacks, each from its
  newest port at or below the release, and a `# lacks` line for a fix with no port);
- every patch every line names has the DEP-3 style headers, and the tests it names exist;
- every revert in tests/reverts names guard tests that exist;
- tests/fixes.toml names tests that exist, and every patch's `Tests:` is exactly one
  fix's tests there (so a fix keeps its evidence when its patch is dropped);
- every test file under tests/registered registers itself (register_*_ci);
- no test function has an empty body (`pass`, `...` or a docstring only), the trap
  that silently disabled inherited checks in upstream's #25477.
"""

import ast
import sys
from collections import Counter
from pathlib import Path

from scripts.lib import config, fixes, hints, lines, readme, series
from scripts.lib.errors import SeriesError, run_main


def check_lines(paths: config.Paths, tests_root: Path) -> list[str]:
    """Every release's line loads and names what the evidence asks (lines.derive), every
    patch file is on some line and lies in a release's folder, and the README's table of
    lines says what the series files say."""
    problems, listed = [], set()
    pinned = set(config.load_releases(paths)["releases"]) if paths.releases.exists() else set()
    for file in lines.all_files(paths):
        label = series.display(paths.patches, file)
        version = file.name[: -len(".series")]
        try:
            entries = series.entries(paths.patches, file)
            listed |= {(paths.patches / e).resolve() for e in entries}
            found = [f"{label} lists {n} more than once" for n, c in Counter(entries).items() if c > 1]
            found += [f"{label} lists {e}, which does not exist" for e in entries if not (paths.patches / e).is_file()]
            if not found:
                series.load(paths.patches, file)
        except SeriesError as exc:
            found = [str(exc)]
        if found:
            problems += found
            continue
        if version not in pinned:
            problems.append(f"{label} is the line of sglang {version}, which upstream/releases.json does not pin; "
                            f"pin it with {hints.command('pin', version)} or remove the line")
            continue
        differs = lines.differs(paths, version, tests_root)
        if differs:
            problems.append(f"{label} {differs}; rewrite it from the evidence with `make lines WRITE=1`")
    if not lines.exists(paths, config.base_version(paths)) and paths.releases.exists():
        problems.append(f"the base, sglang {config.base_version(paths)}, has no line ({lines.label(paths, config.base_version(paths))})")
    stray = sorted(p for p in paths.patches.rglob("*.patch") if p.parent.parent != paths.patches / lines.LINES)
    problems += [f"patches/{p.relative_to(paths.patches)} lies outside a release's folder; move it to "
                 "patches/lines/<the release it was written on>/" for p in stray]
    patch_files = list((paths.patches / lines.LINES).glob("*/*.patch"))
    problems += [f"patches/{p.relative_to(paths.patches)} is on no line (patches/lines/*.series)"
                 for p in sorted(patch_files) if p.resolve() not in listed]
    readme_file = paths.root / "README.md"
    text = readme_file.read_text() if paths.patches == paths.root / "patches" and readme_file.exists() else ""
    if "<!-- lines:begin -->" in text and readme.replace_block(text, "lines", readme.lines_table(paths)) != text:
        problems.append("README.md's table of lines is not what patches/ says; regenerate it with `make lines PUBLISH=1`")
    if "<!-- fixes:begin -->" in text and readme.replace_block(text, "fixes", readme.fixes_table(paths)) != text:
        problems.append("README.md's table of fixes is not what tests/fixes.toml says; regenerate it with `make lines PUBLISH=1`")
    return problems


def line_patches(paths: config.Paths) -> list[Path]:
    """Every patch file some line names, once (a file shared by lines is checked once)."""
    found = {}
    for file in lines.all_files(paths):
        try:
            for entry in series.entries(paths.patches, file):
                found.setdefault((paths.patches / entry).resolve(), paths.patches / entry)
        except SeriesError:
            continue  # check_lines names it
    return [p for p in found.values() if p.is_file()]


def check_series(paths: config.Paths) -> list[str]:
    """Every patch every line names has the DEP-3 headers, and the tests it names exist."""
    problems = check_lines(paths, paths.root)
    for path in line_patches(paths):
        name = path.relative_to(paths.patches).as_posix()
        try:
            patch = series.parse(path)
        except SeriesError as exc:
            problems.append(f"{name}: {exc}")
            continue
        missing = [h for h in series.REQUIRED_HEADERS if not patch.headers.get(h)]
        if missing:
            problems.append(f"{name}: missing header(s) {', '.join(missing)}")
        problems += [f"{name}: Tests names {t}, which does not exist" for t in patch.tests if not test_exists(paths.root, t)]
    return problems


def test_exists(root: Path, node_id: str) -> bool:
    """A pytest node id (file, file::Class or file::Class::method) that is really there;
    a method may come from a base class defined in the file or imported from a sibling module."""
    file, *names = node_id.split("::")
    path = root / file
    if not path.is_file() or not file.startswith("tests/"):
        return False
    if not names:
        return True
    cls = _find_class(path, names[0])
    return cls is not None and (len(names) == 1 or _has_method(path, cls, names[1]))


def _find_class(path: Path, name: str) -> ast.ClassDef | None:
    return next((n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _has_method(path: Path, cls: ast.ClassDef, method: str, depth: int = 0) -> bool:
    if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == method for n in cls.body):
        return True
    if depth > 8:
        return False
    imports = {a.asname or a.name: n.module for n in ast.parse(path.read_text()).body
               if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
    for base in (b.id for b in cls.bases if isinstance(b, ast.Name)):
        where = path.with_name(imports[base].split(".")[-1] + ".py") if base in imports else path
        found = _find_class(where, base) if where.is_file() else None
        if found is not None and _has_method(where, found, method, depth + 1):
            return True
    return False


def empty_tests(tests_dir: Path) -> list[str]:
    problems = []
    for path in sorted(tests_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                if all(isinstance(s, ast.Pass) for s in body):
                    problems.append(f"{path}:{node.lineno} {node.name} has an empty body: it passes without checking anything")
    return problems


def unregistered(registered_dir: Path) -> list[str]:
    problems = []
    for path in sorted(registered_dir.rglob("test_*.py")):
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if not any(c.startswith("register_") and c.endswith("_ci") for c in calls):
            problems.append(f"{path}: registered test file without a register_*_ci(...) call")
    return problems


def check_reverts(paths: config.Paths) -> list[str]:
    """tests/reverts: each revert exists and names guard tests that exist."""
    reverts = paths.root / "tests" / "reverts"
    if not (reverts / "series").exists():
        return []
    try:
        loaded = series.load(reverts, reverts / "series", allow_empty=True)
    except SeriesError as exc:
        return [f"tests/reverts: {exc}"]
    problems = [f"tests/reverts/{r.name}: no Tests header" for r in loaded if not r.tests]
    problems += [f"tests/reverts/{r.name}: Tests names {t}, which does not exist"
                 for r in loaded for t in r.tests if not test_exists(paths.root, t)]
    # A copy of a revert for a later release must guard with the same tests.
    named = {r.name: set(r.tests) for r in loaded}
    for copy in sorted(reverts.glob("*/*.patch")):
        where = copy.relative_to(paths.root)
        if copy.name not in named:
            problems.append(f"{where}: not in tests/reverts/series")
        elif set(series.parse(copy).tests) != named[copy.name]:
            problems.append(f"{where}: its Tests differ from tests/reverts/{copy.name}'s")
    return problems


def check_fixes(paths: config.Paths) -> list[str]:
    try:
        registry = fixes.load(paths.root)
    except SeriesError as exc:
        return [str(exc)]
    where = fixes.REGISTRY
    problems = [f"{where}: {f.pr} names no tests" for f in registry if not f.tests]
    problems += [f"{where}: {f.pr} names {t}, which does not exist" for f in registry for t in f.tests if not test_exists(paths.root, t)]
    problems += [f"{where}: {pr} appears more than once" for pr, c in Counter(f.pr for f in registry).items() if c > 1]
    for path in line_patches(paths):
        try:
            patch = series.parse(path)
        except SeriesError:
            continue  # check_series names it
        if patch.tests and fixes.carried_by(registry, patch.tests) is None:
            problems.append(f"{path.relative_to(paths.patches).as_posix()}: its Tests are not exactly the tests of "
                            f"one fix in {where}; add or update the fix there")
    return problems


def problems(paths: config.Paths) -> list[str]:
    tests = paths.root / "tests"
    return (check_series(paths) + check_reverts(paths) + check_fixes(paths) + index_hosts(paths.patches)
            + empty_tests(tests) + unregistered(tests / "registered"))


# The package index comes from uv's and pip's configuration, never from a file here
# (spelt apart, so this file names none either).
INDEX_HOSTS = (b"python" + b"hosted", b"pypi" + b".org")


def index_hosts(folder: Path) -> list[str]:
    """The series' files that name a package-index host (tests/tooling checks every other file)."""
    return [f"{path.relative_to(folder.parent)} names a package-index host; take it out: the index comes "
            "from uv's and pip's configuration"
            for path in sorted(folder.rglob("*")) if path.is_file()
            and any(host in path.read_bytes().lower() for host in INDEX_HOSTS)]


def main() -> None:
    paths = config.Paths.from_env()
    found = problems(paths)
    for problem in found:
        print(f"lint: {problem}", file=sys.stderr)
    if found:
        raise SeriesError(f"{len(found)} lint problem(s), listed above")
    print(f"lint: the {len(lines.all_files(paths))} lines of patches/lines/, the {len(line_patches(paths))} patch files "
          "they name and tests/ are consistent")


if __name__ == "__main__":
    run_main(main)
