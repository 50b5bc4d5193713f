"""The one way to destructive work: a request, checked, becomes an `Authorization` that issues
the fences every drop needs, or is refused (README, Safety).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Protocol

from .config import Settings
from .errors import RefusedError, RequestError, TransientError
from .model import DeclaredState
from .request import BootstrapRequest

if TYPE_CHECKING:  # the ledger (and the storage client) load only for destructive work
    from .ledger import Entry, Ledger

DATASET_STEP = "(dataset)"  # the ledger's name of a dataset recreation
RECREATED_LABEL = "bootstrap-recreated-by"


class Progress(Protocol):
    """What a destructive run records as it goes: the request ledger's claim, or `Unrecorded`."""

    @property
    def done(self) -> frozenset[str]: ...

    @property
    def backups(self) -> list[dict[str, Any]]: ...

    def renew(self) -> int: ...

    def record_backup(self, backup: dict[str, Any]) -> None: ...

    def record(self, step: str) -> None: ...


@dataclass
class Unrecorded:
    """Progress kept in memory only: a CLI run without BOOTSTRAP_STATE_BUCKET. Nothing stops
    the same command from being run twice."""

    generation: int = 0
    recreated: set[str] = field(default_factory=set)
    taken: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> frozenset[str]:
        with self.lock:
            return frozenset(self.recreated)

    @property
    def backups(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.taken)

    def renew(self) -> int:
        with self.lock:
            self.generation += 1
            return self.generation

    def record_backup(self, backup: dict[str, Any]) -> None:
        with self.lock:
            self.taken.append(backup)

    def record(self, step: str) -> None:
        with self.lock:
            self.recreated.add(step)


class DeadlinePassed(TransientError):
    """The invocation is past its deadline: no destructive step starts; a redelivery resumes."""


@dataclass(frozen=True)
class Fence:
    """Proof that this delivery owned the request when it wrote ledger generation `generation`,
    issued for one step right before it, and good until the invocation's end (`valid_until`,
    monotonic): the ledger's lease outlives the invocation, so no other delivery can take the
    request over before then."""

    step: str
    generation: int
    valid_until: float

    def check(self) -> None:
        """Called by the adapter immediately before it sends the destructive request."""
        if time.monotonic() > self.valid_until:
            raise DeadlinePassed(f"the invocation's time ran out before {self.step} was sent; stopping")


@dataclass(frozen=True)
class Authorization:
    """A destructive request that passed the gate: what it may destroy, and the fence for it."""

    request: BootstrapRequest
    progress: Progress
    deadline: float  # monotonic: no destructive step starts after it
    ends: float  # monotonic: the invocation's timeout; nothing destructive is sent after it

    def fence(self, step: str) -> Fence:
        if time.monotonic() > self.deadline:
            raise DeadlinePassed(
                f"the invocation reached its deadline before {step}; stopping here so that a "
                "redelivery resumes (the steps already done are recorded)"
            )
        return Fence(step, self.progress.renew(), self.ends)

    def wait(self, at_least: float) -> float:
        """How long a job (a copy of a large table) may be waited for: as long as the invocation
        may still start destructive steps, and never less than `at_least`."""
        return max(at_least, self.deadline - time.monotonic())

    @property
    def done(self) -> frozenset[str]:
        return self.progress.done

    @property
    def mark(self) -> dict[str, str]:
        """The label a table or dataset recreated by this request carries. A delivery that took
        the request over finds it on what the last owner recreated but could not record, and
        records it instead of dropping it a second time."""
        return {RECREATED_LABEL: hashlib.sha256(self.request.request_id.encode()).hexdigest()[:40]}

    def made(self, labels: dict[str, str] | None) -> bool:
        """Did this request make the table or dataset carrying `labels`?"""
        return (labels or {}).get(RECREATED_LABEL) == self.mark[RECREATED_LABEL]


@dataclass(frozen=True)
class Wording:
    """How a refusal names the consents: a request's fields, or the CLI's flags."""

    confirm: str
    allow: str


REQUEST_WORDS = Wording(
    confirm='set "confirm": "{dataset}" (the dataset id) to confirm what it destroys',
    allow="this deployment does not allow destructive requests (ALLOW_DESTRUCTIVE is not true)",
)
CLI_WORDS = Wording(
    confirm="pass --confirm {dataset} (the dataset id) to confirm it",
    allow="pass --allow-destructive to give this run the deployment's consent (or set ALLOW_DESTRUCTIVE=true)",
)


def check_consents(request: BootstrapRequest, settings: Settings, words: Wording = REQUEST_WORDS) -> None:
    """A forced recreation, or a drop of columns, needs three consents: the request's flag, the
    deployment's ALLOW_DESTRUCTIVE, and `confirm` equal to the dataset id. A dry run only plans,
    so it does not need the deployment's consent."""
    if not request.destructive:
        return
    problems = []
    if request.confirm != settings.dataset:
        problems.append(words.confirm.format(dataset=settings.dataset))
    if not settings.allow_destructive and not request.dry_run:
        problems.append(words.allow)
    if problems:
        what = (
            "recreate anything"
            if request.force_recreate_tables or request.force_recreate_dataset
            else "drop any column"
        )
        raise RefusedError(f"refused to {what}: " + "; ".join(problems) + ". Nothing was changed.")


def select_tables(declared: DeclaredState, wanted: tuple[str, ...] | None) -> list[str]:
    if wanted is None:
        return sorted(declared.tables)
    unknown = [t for t in wanted if t not in declared.tables]
    if unknown:
        guesses = [
            f"{t} (did you mean {close[0]}?)" if (close := get_close_matches(t, declared.tables, 1)) else t
            for t in unknown
        ]
        raise RequestError(
            f"unknown table(s) {', '.join(guesses)}; the schema source declares: {', '.join(sorted(declared.tables))}"
        )
    return list(wanted)


def authorize(
    request: BootstrapRequest,
    declared: DeclaredState | None,
    settings: Settings,
    ledger: Ledger | None,
    *,
    started: float,
) -> Authorization | Entry:
    """Check a destructive request, claim it in the ledger, and return its Authorization, or
    the ledger's done Entry when the request already ran (its recorded answer). Raises
    RefusedError or RequestError (nothing is claimed then), RequestConflict (the id was used for
    another body), InProgress (another delivery owns it).

    `ledger` None is the CLI without BOOTSTRAP_STATE_BUCKET: progress is kept in memory only.
    `started` is the monotonic time the invocation began: destructive steps start only until
    its timeout, less one retry deadline so the last step can finish."""
    if not request.destructive or request.dry_run:
        raise RefusedError("only a destructive request that is not a dry run needs authorising")
    if declared is not None:  # None: a restore, which names its one target itself
        select_tables(declared, request.tables)
    check_consents(request, settings)
    progress: Progress
    if ledger is None:
        progress = Unrecorded()
    else:
        from .ledger import Claim

        claimed = ledger.claim_when_free(request)
        if not isinstance(claimed, Claim):
            return claimed
        progress = claimed
    timeout = settings.timeout
    deadline = started + max(timeout / 2, timeout - settings.retry_deadline)
    return Authorization(request, progress, deadline, ends=started + timeout)
