"""Results from AI vendors: the JSON findings schema and the DICOM SR made from findings."""
