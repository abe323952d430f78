"""One way to end a "no such …" message: the closest valid word, or the valid ones."""

from __future__ import annotations

from broker.model.errors import did_you_mean


def test_the_closest_word_is_suggested() -> None:
    """A typo gets the closest valid word."""
    assert did_you_mean("dicomweb2", ["dicom", "dicomweb", "http"]) == "; did you mean 'dicomweb'?"


def test_a_word_in_another_case_is_suggested_as_written() -> None:
    """A word that differs only in case is suggested in its valid spelling."""
    assert did_you_mean("MODALITY", ["modality", "body_part"]) == "; did you mean 'modality'?"


def test_nothing_close_says_nothing_unless_asked_for_the_list() -> None:
    """Without a close word the hint is empty, or lists every valid word in order."""
    assert did_you_mean("zzz", ["pacs", "ris"]) == ""
    assert did_you_mean("zzz", ["ris", "pacs"], or_list=True) == "; valid: pacs, ris"


def test_no_valid_words_says_nothing() -> None:
    """An empty vocabulary gives no hint, not an empty list."""
    assert did_you_mean("pacs", [], or_list=True) == ""
