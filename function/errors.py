"""The kinds of failure the contract distinguishes (README, "Errors: what gets retried"):
permanent ones are acknowledged, transient and deployment ones raised for redelivery."""


class PermanentError(Exception):
    """Bad input or a refused request: delivering it again cannot help."""


class RequestError(PermanentError):
    """The bootstrap request (or the event carrying it) is malformed."""


class RefusedError(PermanentError):
    """A destructive request without all three consents (flag, deployment, confirm)."""


class TransientError(RuntimeError):
    """A dependency kept failing transiently past the retry deadline; delivering again may work."""


class DeploymentError(Exception):
    """The deployment is broken (a setting, a missing or unreadable bucket it names): the event
    is not answered `failed` but raised, so it waits for the fix (then dead-letters)."""
