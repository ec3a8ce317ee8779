"""The documentation site: built strictly (a broken link or an unresolved API reference fails it),
its command reference is each command's --help, every command any page or the README shows is one
the parser takes, and the tutorial's and the how-to guides' shell examples run as they are shown."""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import search_command

from search.cli import build_parser
from search.docs import HELP_WIDTH, commands

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The pages whose shell blocks run, in the site's order: each in a folder of its own.
RUNNABLE = ["tutorial.md", *(f"how-to/{p.name}" for p in sorted((DOCS / "how-to").glob("*.md")))]
NOT_RUN = re.compile(r"<!-- not run: [^>]+ -->\s*$")
BLOCK = re.compile(r"^```(sh|bash|console)\n(.*?)^```", re.S | re.M)


def _mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by the documented command."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [*search_command(), "docs", "--site", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"built {out}/index.html" in built.stdout
    return out


def test_the_site_has_every_page(site: Path) -> None:
    for page in ("tutorial", "reference/cli", "reference/api", "benchmarks", "performance"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("search.api.run", "search.runner.RunSettings", "search.train.fit"):
        assert f'id="{name}"' in api, name  # generated from the docstrings


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("[a page that is not there](nowhere.md)", "nowhere.md"),
        ("[a section that is not there](#nowhere)", "#nowhere"),
        ("::: search.train.no_such_function", "no_such_function"),
    ],
)
def test_a_broken_link_or_api_reference_fails_the_build(tmp_path: Path, change, says) -> None:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the files pages include
    page = tmp_path / "docs" / "tutorial.md"
    page.write_text(page.read_text() + f"\n{change}\n")
    result = _mkdocs("build", "--site-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode != 0
    assert says in result.stdout + result.stderr


def _sections(page: str) -> dict[str, str]:
    """Each ``## `search ...` `` section's first code block, as text."""
    found = {}
    for part in re.split(r"<h2 ", page)[1:]:
        name = re.search(r"<code>(search[^<]*)</code>", part)
        block = re.search(r"<pre[^>]*>(.*?)</pre>", part, re.S)
        if name and block:
            found[name.group(1)] = html.unescape(re.sub(r"<[^>]+>", "", block.group(1)))
    return found


def test_the_command_reference_is_each_commands_help(site: Path) -> None:
    shown = _sections((site / "reference" / "cli" / "index.html").read_text())
    expected = dict(commands(build_parser()))
    assert set(shown) == set(expected) and len(shown) >= 14, sorted(shown)
    env = {**os.environ, "COLUMNS": str(HELP_WIDTH)}
    for name in expected:
        helped = subprocess.run(
            [*search_command(), *name.split()[1:], "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert helped.returncode == 0, name
        assert shown[name].strip() == helped.stdout.strip(), name


def _command_lines(text: str) -> list[str]:
    """Every ``search ...`` invocation in the shell blocks of a page."""
    found = []
    for _, block in BLOCK.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|;", line):
                words = part.strip().split()
                if words[:1] == ["srun"]:
                    words = words[1:]
                if words[:1] == ["search"]:
                    found.append(" ".join(words))
    return found


def test_every_command_the_pages_show_is_one_the_parser_takes() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    checked = 0
    for page in pages:
        for line in _command_lines(page.read_text()):
            try:
                build_parser().parse_args(shlex.split(line)[1:])
            except SystemExit as exit_:
                pytest.fail(f"{page.relative_to(ROOT)}: {line!r} is refused ({exit_.code})")
            checked += 1
    assert checked > 40


def _runnable_blocks(page: Path) -> list[str]:
    text = page.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()[-1:] or [""]
        if not NOT_RUN.match(before[0]):
            blocks.append(match.group(2))
    return blocks


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_tutorial_and_how_to_examples_run_as_shown(tmp_path: Path, page: str) -> None:
    """Each page's shell blocks, in order, in a folder that holds the project's examples and
    spaces, as a clone does; a page with nothing to run marks each block with why."""
    blocks = _runnable_blocks(DOCS / page)
    text = (DOCS / page).read_text()
    if not blocks:
        assert not BLOCK.search(text) or "not run:" in text
        return
    shutil.copytree(
        ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("images")
    )
    shutil.copytree(ROOT / "spaces", tmp_path / "spaces")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in blocks:
        result = subprocess.run(
            ["bash", "-e", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{page}:\n{block}\n{result.stdout}\n{result.stderr}"
