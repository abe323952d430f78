"""Rendering: the Jinja2 templates, the filters they use, and what a viewer may see.

Viewers see no patient name, patient ID or birth date anywhere: :func:`patient_view`
gives ``—`` for them, accession and order numbers become pseudonyms
(:func:`broker.model.logging.pseudonym`, the same stand-ins as in the logs), and
:func:`scrub` takes the study's patient values out of free text (errors,
routing explanations, findings) before it is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from adapters.console.state import ConsoleState, console_state
from broker import i18n
from broker.model.domain import VERDICT_ROLE, Patient, Role
from broker.model.jobs import FINAL, RETRYABLE, JobState
from broker.model.logging import pseudonym
from broker.model.phi import HIDDEN, without_phi
from broker.model.version import VERSION
from broker.store.users import Session

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.add_extension("jinja2.ext.i18n")
TEMPLATES.env.globals["version"] = VERSION  # every page's footer
#: Job states whose row refreshes itself (htmx) until it settles.
MOVING: frozenset[JobState] = frozenset(
    {
        JobState.PENDING,
        JobState.SENDING,
        JobState.SENT,
        JobState.FAILED,
        JobState.RESULT_RECEIVED,
        JobState.WRITING_BACK,
    }
)


def sees_phi(who: Session | None) -> bool:
    """Operators and admins see patient data; viewers do not (:attr:`Role.sees_phi`)."""
    return who is not None and who.role.sees_phi


@dataclass(frozen=True, slots=True)
class PatientView:
    name: str
    patient_id: str
    birth_date: str
    sex: str


def patient_view(patient: Patient, who: Session | None) -> PatientView:
    """The patient as ``who`` may see it."""
    if not sees_phi(who):
        return PatientView(HIDDEN, HIDDEN, HIDDEN, patient.sex or HIDDEN)
    return PatientView(
        name=(patient.name or HIDDEN).replace("^", " ").strip() or HIDDEN,
        patient_id=patient.patient_id or HIDDEN,
        birth_date=patient.birth_date or HIDDEN,
        sex=patient.sex or HIDDEN,
    )


def identifier(value: str | None, who: Session | None) -> str:
    """An accession or order number: itself for operators, a pseudonym for viewers."""
    if not value:
        return HIDDEN
    return value if sees_phi(who) else pseudonym(value)


def scrub(text: str | None, who: Session | None, values: Iterable[str]) -> str:
    """``text`` with the patient ``values`` replaced by ``—`` for a viewer."""
    if not text:
        return ""
    if sees_phi(who):
        return text
    return without_phi(text, values)


@pass_context
def _gettext(context: Context, message: str) -> str:
    """The page's language (``_translations`` of :func:`render`) translates ``message``."""
    found = context.get("_translations")
    return found.gettext(message) if found is not None else message


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    found = context.get("_translations")
    if found is None:
        return singular if n == 1 else plural
    return str(found.ngettext(singular, plural, n))


# install_gettext_callables is added by jinja2.ext.i18n
TEMPLATES.env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]


def language_of(request: Request, console: ConsoleState | None = None) -> str:
    """The signed-in user's language, else (login page) ``Accept-Language``'s, else the site's."""
    console = console or console_state(request)
    site = console.settings.site.language
    who: Session | None = getattr(request.state, "session", None)
    if who is not None:
        return who.language or site
    return i18n.from_accept_language(request.headers.get("Accept-Language"), default=site)


def translator(request: Request) -> Callable[[str], str]:
    """``_`` for a handler's messages, in the request's language (:func:`language_of`)."""
    return i18n.translations(language_of(request)).gettext


def ago(value: datetime | None, _: Callable[[str], str] = str) -> str:
    """``3 min ago``: how long before now."""
    if value is None:
        return _("never")
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 60:
        return _("{n} s ago").format(n=max(int(seconds), 0))
    if seconds < 3600:
        return _("{n} min ago").format(n=int(seconds // 60))
    if seconds < 86400:
        return _("{n} h ago").format(n=f"{seconds / 3600:.1f}")
    return _("{n} d ago").format(n=int(seconds // 86400))


def size(value: int | None) -> str:
    if not value:
        return "0"
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def short_uid(uid: str | None, keep: int = 14) -> str:
    """The end of a long UID (the part that differs between studies)."""
    if not uid:
        return ""
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


TEMPLATES.env.filters["size"] = size
TEMPLATES.env.filters["short_uid"] = short_uid
TEMPLATES.env.globals["RETRYABLE"] = RETRYABLE
TEMPLATES.env.globals["FINAL"] = FINAL
TEMPLATES.env.globals["MOVING"] = MOVING
TEMPLATES.env.globals["HIDDEN"] = HIDDEN


def _here(request: Request) -> str:
    """The page a form should come back to: for htmx, the page the browser shows."""
    current = request.headers.get("HX-Current-URL")
    if current:
        parts = urlsplit(current)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A template with what every page needs: who is signed in, their CSRF token, the site."""
    console = console_state(request)
    who: Session | None = getattr(request.state, "session", None)
    tz = console.tz
    language = language_of(request, console)
    translations = i18n.translations(language)
    base = {
        "_translations": translations,
        "lang": language,
        "lang_html": language.replace("_", "-"),
        "languages": i18n.NAMES,
        "ago": partial(ago, _=translations.gettext),
        "root": str(request.scope.get("root_path", "")).rstrip("/"),
        "who": who,
        "csrf": who.csrf if who is not None else "",
        "can_act": who is not None and who.role.allows(Role.OPERATOR),
        "can_judge": who is not None and who.role.allows(VERDICT_ROLE),
        "is_admin": who is not None and who.role.allows(Role.ADMIN),
        "phi": sees_phi(who),
        "site": console.settings.site.name,
        "tz_name": console.settings.site.timezone,
        "local": lambda value, fmt=i18n.TIME_FORMAT, ms=False: i18n.local_time(
            value, tz, fmt, ms=ms
        ),
        "ident": lambda value: identifier(value, who),
        "path": request.url.path,
        "here": _here(request),
        "disk_alarm": console.disk_alarm(translations.gettext),
    }
    response: HTMLResponse = TEMPLATES.TemplateResponse(
        request, name, {**base, **(context or {})}, status_code=status, headers=headers
    )
    return response
