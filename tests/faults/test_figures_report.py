"""RELIABILITY.md is rendered from the suite's figures: the renderer, and the published file."""

from __future__ import annotations

from tests.faults.figures import SECTIONS, render_markdown
from tests.reference import REPO


def test_sections_come_in_the_published_order_with_their_test_and_escaped_cells() -> None:
    text = render_markdown({
        "zeta extra": {"a": 1},
        "hostile rows": {"s3-pipe": "key 'a|b' -> UnsafePath: bad\nname"},
        "crashes": {"Downloaded with wrong content": 0},
    })
    assert text.index("### crashes") < text.index("### hostile rows") < text.index("### zeta extra")
    assert "Measured by `tests/faults/test_crashes.py`." in text
    assert "| Downloaded with wrong content | 0 |" in text
    assert "| s3-pipe | key 'a\\|b' -> UnsafePath: bad name |" in text
    assert "| row | input → outcome |" in text


def test_reliability_report_has_every_section_of_the_suite() -> None:
    published = (REPO / "RELIABILITY.md").read_text()
    for section in SECTIONS:
        assert f"### {section}\n" in published, section
