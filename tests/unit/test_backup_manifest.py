"""The backup's manifest of the spool (:func:`broker.store.backup.spool_files`) on a real folder."""

from __future__ import annotations

from pathlib import Path

from broker.store.backup import spool_files


def test_the_manifest_lists_kept_renderings_not_those_still_being_made(tmp_path: Path) -> None:
    """A result's folder of renderings placed whole is listed with the studies' and results'
    objects and the canary studies; one still being made (a dot folder beside it) and the
    spool's other folders (``tmp``, a node's ``tmp``, ``priors``) are not."""
    kept = {
        "studies/1.2/1.2.3/1.2.3.4.dcm": b"image",
        "results/1.2/1.2.9.dcm": b"sr",
        "canary/run3/1.4/1.4.1.dcm": b"canary image",
        "rendered/7/pacs.site.0123456789abcdef/1.2.8.dcm": b"page",
        "rendered/7/pacs.site.0123456789abcdef/made.json": b'{"notes": []}',
    }
    elsewhere = {
        "rendered/7/.pacs_en.en.fedcba9876543210.x1y2/1.2.7.dcm": b"half a page",
        "tmp/arriving.dcm": b"half an image",
        "nodes/b/tmp/arriving.dcm": b"half an image on node b",
        "priors/1.5/1.5.1.dcm": b"prior",
    }
    for relative, data in (kept | elsewhere).items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    listed = list(spool_files(tmp_path))
    assert [f.path for f in listed] == list(kept)  # by folder, then name
    assert {f.path: f.size for f in listed} == {p: len(d) for p, d in kept.items()}
    assert all(f.sha256 is not None and len(f.sha256) == 64 for f in listed)
    assert all(f.sha256 is None for f in spool_files(tmp_path, checksums=False))
