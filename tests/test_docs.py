"""The README and docs/: the README stays short, and every relative link in them names a file that exists."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The targets of the page's markdown links that point into the repository (no scheme, no bare anchor)."""
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_the_readme_stays_under_ten_kilobytes():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_an_existing_file(page):
    missing = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert missing == []


def test_the_link_check_sees_links_and_skips_urls_and_anchors():
    text = "[a](docs/x.md) [b](https://e.org/y) [c](#top) [d](../z.md#part) `[e](not-a-link`"
    assert relative_links(text) == ["docs/x.md", "../z.md"]
