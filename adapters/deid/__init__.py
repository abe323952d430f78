"""De-identification of what radbridge sends a vendor, re-identification of what comes back.

- :mod:`.table`: the action of PS3.15 Annex E Table E.1-1 for each attribute —
  the Basic profile's column from ``dicom-anonymizer``'s copy of the table
  (kept current with the standard's editions), the options' columns here;
- :mod:`.dataset`: the actions applied to one data set, nested sequences
  included, with keyed pseudonyms (:class:`broker.model.deid.Pseudonyms`);
- :mod:`.pixels`: images that may carry burned-in text, masked or withheld;
- :mod:`.study`: a job's files de-identified into a folder
  (``deidentify_study`` of ``radbridge.registries``), and an HTTP manifest;
- :mod:`.reidentify`: a vendor's result object mapped back to the original
  study, series, instances, patient and accession.
"""
