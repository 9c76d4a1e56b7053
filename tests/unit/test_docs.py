"""The docs cannot go stale: README.md and docs/*.md are what their templates render from the
committed reports (`make docs`), and every rendered figure names the report it came from."""

import subprocess
import sys

from tests.conftest import REPO


def test_committed_docs_are_what_the_reports_render():
    proc = subprocess.run([sys.executable, "docs/build.py", "--check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_the_readme_is_short_and_shows_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
