"""The documentation runs: every ```python block of README.md and docs/*.md, and every relative link.

Each block runs on its own, in a fresh namespace, with a temporary directory as the working
directory (blocks may write files such as checkpoints). README's blocks are in the fast tier;
the docs pages' blocks in the slow tier (each takes a few seconds of compilation). Links: every
relative link and image must name an existing file; a ``#anchor`` into a Markdown file must name
one of its headings (GitHub's slug rule).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


CASES = [
    pytest.param(
        page,
        i,
        id=f"{page.relative_to(ROOT)}-{i}",
        marks=() if page.name == "README.md" else pytest.mark.slow,
    )
    for page in PAGES
    for i in range(len(blocks(page)))
]


def test_readme_and_docs_have_examples():
    assert blocks(ROOT / "README.md"), "README has python examples"
    assert len(PAGES) > 1, "docs/*.md exist"


@pytest.mark.parametrize(("page", "i"), CASES)
def test_python_block_runs(page, i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(blocks(page)[i], f"{page.relative_to(ROOT)} (python block {i})", "exec")
    module = types.ModuleType("__docs__")  # a real module: dataclasses resolve string annotations there
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(code, module.__dict__)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(
                f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_slug_rule():
    assert slug("The training loop: scanned epoch against a Python loop") == (
        "the-training-loop-scanned-epoch-against-a-python-loop"
    )
    assert slug("Checking a `jax.grad` backward") == "checking-a-jaxgrad-backward"
