"""CLI helpers: names from the network print without controlling or hidden characters; the heap is settled."""

from __future__ import annotations

import pytest

from overdrive.cli.options import markup_safe, settle_heap, shown


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("esc\x1b[2Jclear.txt", "esc\\x1b[2Jclear.txt"),  # a terminal control sequence
        ("\u202etxt.exe", "\\u202etxt.exe"),  # a bidi override
        ("a\u200eb", "a\\u200eb"),  # left-to-right mark
        ("a\u061cb", "a\\u061cb"),  # Arabic letter mark
        ("a\u200bb", "a\\u200bb"),  # zero-width space: 'ab' and 'a\u200bb' must not print alike
        ("x\u2028y", "x\\u2028y"),  # line separator
        ("a\xa0b", "a\\xa0b"),  # no-break space passing for a space
        ("week 1/notes.txt", "week 1/notes.txt"),
        ("Лекции/日本語/ملف/😀.mp4", "Лекции/日本語/ملف/😀.mp4"),
        ("e\u0301te\u0301.txt", "e\u0301te\u0301.txt"),  # combining accents are printable
    ],
)
def test_names_from_the_network_print_without_hidden_or_controlling_characters(name: str, printed: str) -> None:
    assert shown(name) == printed


def test_markup_in_a_name_prints_as_itself() -> None:
    assert markup_safe("[b]x[/b]\x07") == "\\[b]x\\[/b]\\x07"


def test_settle_heap_freezes_what_start_up_left() -> None:
    """Long-running commands call it before their loop: start-up's objects then leave the collector's full passes."""
    import gc

    gc.unfreeze()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
