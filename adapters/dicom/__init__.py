"""DICOM edge: the C-STORE/C-ECHO listener and the translation of datasets to the domain."""
