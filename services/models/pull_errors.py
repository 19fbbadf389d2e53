"""Why `strata models pull` stopped: refused (nothing stored), or the Hub could not be reached."""


class PullError(Exception):
    """The model could not be pulled; the message says why (nothing was stored)."""


class HubUnreachableError(PullError):
    """The network failed, not the request: trying again later can succeed."""
