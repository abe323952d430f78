"""Vendor transports: how a study gets to an AI vendor.

One module per transport, each registered by name as an entry point of
``radbridge.transports`` (see :mod:`broker.model.vendor`):

- ``dicom`` (:mod:`.dicom`): C-STORE push to the vendor's AE;
- ``dicomweb`` (:mod:`.dicomweb`): STOW-RS push to the vendor's DICOMweb root;
- ``http`` (:mod:`.http`): a JSON manifest POSTed to the vendor's API, which
  pulls the study from radbridge by WADO-RS.

``broker.model.vendor.TRANSPORTS.get("dicom")`` is the ``dicom`` transport's
settings model; an unknown name fails with the closest known one: "no such
vendor transport 'dicomweb2'; did you mean 'dicomweb'?".
"""
