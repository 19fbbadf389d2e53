"""Ask a gateway the capital of France until it answers (bounded), for cluster tests.

Runnable inside a test's network namespace: `python -m tests.discovery.ask URL [SECONDS]` prints the
answer, or exits 1 with the last error.
"""

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from services.models.embedded_model import EMBEDDED_MODEL_ID

QUESTION = "What is the capital of France?"


def ask_once(gateway_url: str, timeout_seconds: float = 120.0) -> str:
    body = {
        "model": EMBEDDED_MODEL_ID,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 24,
    }
    request = urllib.request.Request(
        f"{gateway_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
        text = response.read().decode()
    if '"choices"' not in text:
        raise ValueError(f"unexpected reply {text!r}")
    return text


def ask_until_answered(
    gateway_url: str, deadline_seconds: float, problem: Callable[[], str | None] = lambda: None
) -> str:
    """The first answer the gateway gives within `deadline_seconds` (it says 503 until ready).

    `problem` is checked between attempts (e.g. a service exited); when it says something, give up.
    """
    deadline = time.monotonic() + deadline_seconds
    last_error = "no attempt"
    while time.monotonic() < deadline:
        trouble = problem()
        if trouble is not None:
            raise RuntimeError(trouble)
        try:
            return ask_once(gateway_url)
        except (urllib.error.URLError, OSError, ValueError) as error:
            last_error = str(error)
        time.sleep(1.0)
    raise TimeoutError(f"{gateway_url} did not answer in {deadline_seconds:.0f} s: {last_error}")


def main() -> int:
    url = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 180.0
    try:
        print(ask_until_answered(url, seconds))
    except TimeoutError as error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
