"""What a viewer may not see, for the console and the REST API alike.

Who sees patient data is :attr:`broker.model.domain.Role.sees_phi`; for the others,
:func:`phi_values` lists a record's patient values and :func:`without_phi` takes them
out of free text (errors, explanations, findings, identity conflicts).
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.model.domain import Patient

#: What stands in for a hidden value.
HIDDEN = "—"


def phi_values(patients: Iterable[Patient], extra: Iterable[str | None] = ()) -> list[str]:
    """The patient values free text must not show a viewer, longest first."""
    found: set[str] = set()
    for p in patients:
        if p.name:
            found.add(p.name)
            found.update(part.strip() for part in p.name.replace("^", " ").split())
        found.update(v for v in (p.patient_id, p.birth_date) if v)
    found.update(v for v in extra if v)
    found = {v.strip() for v in found if len(v.strip()) >= 2}
    return sorted(found, key=len, reverse=True)


def without_phi(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (longest first, see :func:`phi_values`) as ``—``."""
    for value in values:
        text = text.replace(value, HIDDEN)
    return text
