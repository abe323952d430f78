"""The FHIR R4 edge: ServiceRequest (+ Patient) orders in, OperationOutcome for errors.

- :mod:`adapters.fhir.server`: the ``/fhir`` routes (FastAPI) on radbridge's HTTP server;
- :mod:`adapters.fhir.mapping`: ServiceRequest ↔ :class:`broker.model.domain.Order`;
- :mod:`adapters.fhir.resources`: reading bodies, validation with fhir.resources (R4B models);
- :mod:`adapters.fhir.outcome`: OperationOutcome and :class:`~adapters.fhir.outcome.FhirError`;
- :mod:`adapters.fhir.capability`: the CapabilityStatement.
"""
