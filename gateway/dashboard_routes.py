"""The dashboard: static files (no build step) from `gateway/dashboard/`, `/` and `/dashboard/*`.

The files ship as package data, so an installed gateway serves them. The page reads only the
gateway's own routes: `/v1/cluster/events` (EventSource), `/v1/cluster/models`, `/v1/cluster/pulls`,
the serve/unserve/pull routes, and `/v1/chat/completions`.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

DASHBOARD_DIRECTORY = Path(__file__).parent / "dashboard"
DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def dashboard_router() -> APIRouter:
    router = APIRouter()

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIRECTORY / "index.html", media_type=DASHBOARD_FILES["index.html"])

    @router.get("/dashboard/{name}")
    async def dashboard_file(name: str) -> FileResponse:
        # Only the named files: a request can never reach another path on disk.
        media_type = DASHBOARD_FILES.get(name)
        if media_type is None:
            raise HTTPException(404, f"Unknown URL: GET /dashboard/{name}")
        return FileResponse(DASHBOARD_DIRECTORY / name, media_type=media_type)

    return router
