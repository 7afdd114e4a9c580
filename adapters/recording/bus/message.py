"""A message for the bus, as the sink makes it and the publisher (or its outbox) keeps it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Outgoing"]


@dataclass(slots=True)
class Outgoing:
    """One message for the bus. ``kind``: ``init``, ``fragment``, ``end`` or ``event``.
    ``also``: another subject that gets the same payload once this one is stored (the init
    subject, kept one per subject). ``headers`` carry ``Nats-Msg-Id``."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    kind: str
    also: str | None = None
    queued_at: float = 0.0
