"""Write-back targets: how a result gets back to the PACS, the RIS or an EMR.

One module per target type, each registered by name as an entry point of
``radbridge.targets`` (see :mod:`broker.model.target`):

- ``dicom`` (:mod:`.dicom`): C-STORE of the result's objects;
- ``dicomweb`` (:mod:`.dicomweb`): STOW-RS of the result's objects;
- ``hl7`` (:mod:`.hl7`): ORU^R01 over MLLP, and ORM^O01 order-status updates;
- ``fhir`` (:mod:`.fhir`): DiagnosticReport and Observations in a transaction Bundle;
- ``webhook`` (:mod:`.webhook`): JSON notifications (``notifications.webhook``).

``broker.model.target.TARGETS.get("hl7")`` is the ``hl7`` type's settings
model; an unknown name fails with the closest known one: "no such write-back
target 'hl8'; did you mean 'hl7'?".
"""
