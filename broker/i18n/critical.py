"""The words of a critical-result notification, in the site's language (``site.language``)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from broker.i18n import local_time, translations


def notice_text(
    language: str,
    *,
    summary: str,
    accession: str | None,
    route: str | None,
    deadline: datetime,
    timezone: str,
    contact: str,
    link: str | None,
) -> str:
    """One line a person reads on a phone: what, which exam, by when, and how to acknowledge."""
    tr = translations(language)
    text = tr.gettext(
        "Critical result for {contact}: {summary}. Accession {accession}, {route}. "
        "Acknowledge by {deadline}."
    ).format(
        contact=contact,
        summary=summary,
        accession=accession or "-",
        route=route or "-",
        deadline=local_time(deadline, ZoneInfo(timezone), "%H:%M"),
    )
    if link:
        text += " " + tr.gettext("Acknowledge: {link}").format(link=link)
    return text
