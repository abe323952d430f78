"""What a log line says of a request's path: the route's template, never the path as sent.

A path as sent names studies and orders (``/api/v1/studies/1.2.840…``,
``/fhir/ServiceRequest/ACC123``); the template (``/api/v1/studies/{study_uid}``) says
which endpoint was asked without them.
"""

from __future__ import annotations

from starlette.requests import Request

NO_ROUTE = "(no route)"


def route_path(request: Request) -> str:
    """The template of the route that matched ``request``, behind the prefix of the app it is
    mounted in (``/api/v1`` + ``/studies/{study_uid}``), or ``(no route)``."""
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return NO_ROUTE
    try:
        concrete = template.format(**request.path_params)
    except (KeyError, IndexError, ValueError):
        return template
    path = request.url.path
    return path.removesuffix(concrete) + template if path.endswith(concrete) else template
