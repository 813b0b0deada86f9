"""The package index comes from uv's configuration: `make pin` and `make apply` run
against a local index (a folder laid out as a PEP 503 simple index) named only through
UV_DEFAULT_INDEX or a uv.toml, and the pins record a wheel by file name and sha256, no host."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import ORIGINAL, REPO, VERSION, Upstream  # noqa: E402
from test_apply_pipeline import one_line_error  # noqa: E402
from scripts import lint  # noqa: E402

NEW = "1.1.0"


@pytest.fixture
def up(tmp_path):
    up = Upstream(tmp_path)
    up.env_dir = up.make_env_dir()
    up.new_wheel = up.build_wheel(NEW, {**ORIGINAL, "sglang/__init__.py": f"VERSION = '{NEW}'\n"})
    up.publish(up.new_wheel)  # on the index, not pinned yet
    return up


def make(up, *args, env=None):
    return up.make(*args, env={"SGLANG_SERIES_ENV": str(up.env_dir), **(env or {})})


def test_pin_and_apply_through_the_configured_index(up):
    proc = make(up, "pin")  # no version: the newest release the index has
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pinned sglang {NEW}: {up.new_wheel.name} (the index gives no upload date" in proc.stdout
    assert f"downloading {up.new_wheel.name}" in proc.stdout  # through the index, sha256-checked
    pin = json.loads(up.releases.read_text())["releases"][NEW]
    assert pin == {"wheel": up.new_wheel.name, "sha256": hashlib.sha256(up.new_wheel.read_bytes()).hexdigest(),
                   "exclude_newer": None}
    assert (up.env_dir / f"{NEW}.in").read_text() == f"# the test environment of sglang {NEW}\nsglang=={NEW}\n"
    assert (up.env_dir / f"{NEW}.lock").exists()
    # nothing written names where the index is
    for written in (up.releases, up.env_dir / f"{NEW}.in", up.env_dir / f"{NEW}.lock"):
        assert "://" not in written.read_text() and str(up.index) not in written.read_text(), written

    lines = up.patches / "lines"  # a pinned release other than the base is applied through its line
    lines.mkdir(exist_ok=True)
    (lines / f"{NEW}.series").write_text(f"# no patches: sglang {NEW} needs none here\n")
    proc = make(up, "apply", f"UPSTREAM_VERSION={NEW}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = list((up.build / NEW / "dist").glob("*.whl"))
    assert [w.name for w in built] == [f"sglang-{NEW}+dsv4fix.0-py3-none-any.whl"]


@pytest.mark.parametrize("setting", ["uv.toml", "PIP_INDEX_URL"])
def test_the_index_from_uv_toml_or_from_pip(up, tmp_path, setting):
    """A uv.toml names the index; or only pip is configured (PIP_INDEX_URL), and uv is given pip's."""
    config = tmp_path / "uv.toml"
    config.write_text(f'[[index]]\nurl = "{up.index.as_uri()}"\ndefault = true\n')
    env = {k: v for k, v in up.env.items() if k != "UV_DEFAULT_INDEX" and not k.startswith("MAKE")}
    env.update({"UV_CONFIG_FILE": str(config)} if setting == "uv.toml" else {"PIP_INDEX_URL": up.index.as_uri()})
    proc = subprocess.run(["make", "pin", f"UPSTREAM_VERSION={NEW}"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "SGLANG_SERIES_ENV": str(up.env_dir)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(up.releases.read_text())["releases"][NEW]["wheel"] == up.new_wheel.name


def test_release_the_index_lacks(up):
    line = one_line_error(up.run("pin", "--upstream", "9.9.9", env={"SGLANG_SERIES_ENV": str(up.env_dir)}))
    assert line.startswith("error: the package index has no sglang release with a cp311 manylinux x86_64 wheel "
                           "for `sglang==9.9.9`")
    assert "9.9.9" not in up.releases.read_text()


def test_index_that_lists_a_wheel_it_does_not_serve_names_the_release(up):
    (up.index / "sglang" / up.wheel.name).unlink()  # listed in index.html, the file is gone
    line = one_line_error(up.run("apply", "--no-env"))
    assert line.startswith(f"error: the package index lists {up.wheel.name}, the wheel of sglang {VERSION}, but has no file at ")


def test_http_404_names_the_release(up, tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(up.index.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (up.index / "sglang" / up.wheel.name).unlink()
        index = f"http://127.0.0.1:{server.server_address[1]}/simple"
        line = one_line_error(up.run("apply", "--no-env", env={"UV_DEFAULT_INDEX": index}))
    finally:
        server.shutdown()
    assert line.startswith(f"error: the package index answered HTTP 404 (File not found) for {up.wheel.name}, "
                           f"the wheel of sglang {VERSION}, at {index}/sglang/{up.wheel.name}")


def test_no_index_host_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    hosts = lint.INDEX_HOSTS  # the lint's list: it checks patches/ on every run
    found = [name.decode() for name in tracked if name and (REPO / name.decode()).is_file()
             and any(h in (REPO / name.decode()).read_bytes().lower() for h in hosts)]
    assert found == []


def test_the_rebase_watch_lists_every_newer_release_of_the_index(up):
    up.publish(up.build_wheel("1.2.0", ORIGINAL))
    proc = up.run("watch")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [NEW, "1.2.0"]  # oldest first, the base itself left out
