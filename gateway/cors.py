"""Cross-origin access for browser apps: the origins allowed to call the gateway from a web page.

None by default: a page served by another origin cannot read the gateway's replies (the dashboard,
served by the gateway itself, needs no CORS). `strata gateway --cors-origin ORIGIN` (repeatable) or
`$STRATA_CORS_ORIGINS` (comma- or space-separated; `strata run` passes its environment on) allow
origins such as `http://localhost:3000`; `*` allows any. Preflight requests are answered before the
API key check (browsers send them without credentials); the real request still needs its key.
"""

import re
from collections.abc import Mapping, Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

CORS_ENVIRONMENT_VARIABLE = "STRATA_CORS_ORIGINS"
_ORIGIN = re.compile(r"\*|https?://[^\s/,]+")


def cors_origins(flags: Sequence[str] | None, environment: Mapping[str, str]) -> tuple[str, ...]:
    """The flags' origins, else the environment's; raises ValueError for one that is not an origin."""
    given = list(flags) if flags else re.split(r"[\s,]+", environment.get(CORS_ENVIRONMENT_VARIABLE, "").strip())
    origins = tuple(origin.rstrip("/") for origin in given if origin)
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"CORS origin {origin!r} must be '*' or scheme://host[:port], such as http://localhost:3000"
            )
    return origins


def with_cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-Id", "Retry-After"],
        max_age=600,
    )
