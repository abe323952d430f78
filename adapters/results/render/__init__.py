"""Renderings of a result for PACS, RIS and EMR that cannot show an SR or a SEG.

Many PACS in use cannot display a TID 1500 structured report or a
segmentation; then the AI's result is there and no radiologist sees it. A
write-back target may therefore ask for renderings, besides the original
objects or instead of them (``render``, ``originals``; see
:mod:`.settings`):

- ``sc_summary``: the summary page (:mod:`.page`: product, version, findings
  table with probabilities and measurements, key images with the result's
  marks, the statement that this is an AI result for review) as secondary
  capture images, one per page, in a series of their own in the original study;
- ``kos``: a Key Object Selection document of the key images;
- ``seg_overlay``: every image a segment covers, copied as a secondary capture
  with the segments drawn on it;
- ``pdf``: the summary page as an Encapsulated PDF; an ``hl7`` target embeds
  it in the ORU (OBX type ED), a ``fhir`` target sends a DocumentReference.

Everything is made at delivery time from the result's objects and findings
and the study's images in the spool (:func:`.make.render`), with UIDs fixed by the
result (a retry stores the same instances), in the site's language.

The target settings import :mod:`.settings` only; the renderers (fpdf2, PDFium,
highdicom) are imported when a delivery renders.
"""
