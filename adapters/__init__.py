"""Edge adapters: one subpackage per wire format (dicom, hl7, fhir, vendors)."""
