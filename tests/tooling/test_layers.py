"""The verbs stand on one floor: each scripts/<verb>.py imports scripts.lib only, never
another verb, so a verb's behaviour is read in its own file and the library below it."""

import ast
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} if node.module != "scripts" else {f"scripts.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "scripts" or m.startswith("scripts.")}


def test_no_verb_imports_another_verb():
    verbs = sorted(p for p in SCRIPTS.glob("*.py") if p.name != "__init__.py")
    assert len(verbs) > 10  # the glob saw the verbs
    wrong = {p.name: sorted(m for m in _imported(p) if not m.startswith("scripts.lib")) for p in verbs}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_library_imports_no_verb():
    wrong = {p.name: sorted(m for m in _imported(p) if not m.startswith("scripts.lib"))
             for p in (SCRIPTS / "lib").glob("*.py")}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_check_sees_a_verb_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from scripts import build\nfrom scripts.queue import up_of\nimport scripts.lib.git\n")
    assert _imported(bad) == {"scripts.build", "scripts.queue", "scripts.lib.git"}
