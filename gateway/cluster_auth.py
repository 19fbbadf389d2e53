"""The key the gateway's mutating cluster routes need (`Authorization: Bearer <key>`).

One of the gateway's API keys when API keys are configured (gateway/api_keys.py), otherwise the
cluster token of the gateway's home (services/platform/auth.py): whoever may change what the cluster
serves holds one or the other. A refusal is a 401 with OpenAI's error JSON (gateway/errors.py).
"""

import hmac
from collections.abc import Callable
from pathlib import Path

from fastapi import Request
from starlette.exceptions import HTTPException

from services.platform.auth import read_cluster_token

MISSING_KEY = "This route changes the cluster: send an API key, or the cluster token, as `Authorization: Bearer <key>`."
WRONG_KEY = "Incorrect API key or cluster token provided."


def cluster_key_check(api_keys: tuple[bytes, ...], home: Path) -> Callable[[Request], None]:
    """A FastAPI dependency that refuses a request without an accepted key with 401."""

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip().encode() if header[:7].lower() == "bearer " else None
        token = read_cluster_token(home)
        # Read per request: `strata join` may write the token after the gateway started.
        accepted = api_keys or ((token.encode(),) if token else ())
        if presented is None:
            raise HTTPException(401, MISSING_KEY, headers={"WWW-Authenticate": "Bearer"})
        # Compare with every key, in constant time each.
        matches = [hmac.compare_digest(presented, key) for key in accepted]
        if not any(matches):
            raise HTTPException(401, WRONG_KEY, headers={"WWW-Authenticate": "Bearer"})

    return check
