"""README.md and the reference pages under docs/: relative links resolve, the README is short."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250

#: [text](target), [text](target "title") or [text](target 'title'); images match too.
LINK = re.compile(r"""\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)""")
FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_files():
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def strip_code(text):
    """The text without fenced code blocks and inline code spans, whose brackets are not links."""
    kept, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def relative_links(text):
    """Relative link targets of a markdown text, without their #anchor; external links and
    pure anchors are left out."""
    targets = []
    for target in LINK.findall(strip_code(text)):
        if re.match(r"^(https?://|mailto:)", target, re.IGNORECASE) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def broken_links(path):
    """Relative links of the markdown file at `path` that name no existing file or folder."""
    return [t for t in relative_links(path.read_text(encoding="utf-8"))
            if not (path.parent / t).exists()]


def test_link_extraction():
    text = (
        "See [formats](docs/formats.md), [outputs](outputs.md#qc-flags 'x'),\n"
        "[site](https://example.org/a.md), [mail](mailto:a@b.c), [here](#top),\n"
        "`[not](a-link.md)` and\n```\n[nor](this.md)\n```\n![img](pic.png)\n"
    )
    assert relative_links(text) == ["docs/formats.md", "outputs.md", "pic.png"]


def test_broken_link_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#there) [gone](missing.md) [up](../nowhere/x.md)\n")
    assert broken_links(page) == ["missing.md", "../nowhere/x.md"]


def test_docs_pages_exist():
    names = {p.name for p in markdown_files()}
    assert "README.md" in names
    assert len(names) > 1, "no reference pages under docs/"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_links_to_docs():
    linked = {Path(t).as_posix() for t in relative_links(README.read_text(encoding="utf-8"))}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "reference pages the README does not link to"


def test_readme_length():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
