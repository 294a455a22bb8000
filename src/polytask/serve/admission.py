"""Admission: decide whether a request may come in before its body is read.

Why: under overload a request that will be refused must cost nearly nothing. When the
refusal came only after reading and parsing the body (at :meth:`MicroBatcher.submit`), the
server spent its CPU parsing requests it then refused: throughput fell about 4x at 2x
overload and accepted requests waited seconds. So each request is admitted or refused (503
with ``Retry-After``) from its headers alone, on two budgets:

* rows: the rows already waiting for the model plus those of the requests admitted but not
  yet queued (counted at the mean request size seen so far) must stay below
  ``max_queue_rows``; the batcher still checks the exact count when the request is queued;
* body bytes: the bodies of admitted requests still in the server (their declared length,
  or the body limit when they declare none) must stay within ``max_body_bytes_in_flight``.
  Every admitted request holds its bytes until answered, so this bounds the server's memory
  with many concurrent large bodies, whatever they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from polytask.serve.batching import BatchStats, Overloaded


@dataclass
class Ticket:
    """One admitted request: its byte reservation, and whether its rows are still unqueued."""

    reserved_bytes: int
    unqueued: bool = True


@dataclass
class Admission:
    """The two budgets above; ``stats`` are the batcher's (rows waiting, request sizes)."""

    stats: BatchStats
    max_queue_rows: int
    max_body_bytes: int
    max_body_bytes_in_flight: int
    unqueued: int = 0  # admitted requests whose rows are not in the queue yet
    bytes_in_flight: int = 0
    refused: int = 0

    def mean_request_rows(self) -> float:
        return self.stats.rows / self.stats.requests if self.stats.requests else 1.0

    def admit(self, declared_bytes: int | None) -> Ticket:
        """A ticket for a request declaring ``declared_bytes`` (None: unknown), or
        :class:`Overloaded` when either budget is spent."""
        expected_rows = self.stats.pending_rows + self.unqueued * self.mean_request_rows()
        if expected_rows >= self.max_queue_rows:
            self.refused += 1
            raise Overloaded(
                f"overloaded: {self.stats.pending_rows} rows are waiting and {self.unqueued} "
                f"requests are being read (limit {self.max_queue_rows} rows); retry shortly"
            )
        reserved = min(declared_bytes or self.max_body_bytes, self.max_body_bytes)
        if self.bytes_in_flight + reserved > self.max_body_bytes_in_flight:
            self.refused += 1
            raise Overloaded(
                f"overloaded: {self.bytes_in_flight} bytes of request bodies are in the server "
                f"(limit {self.max_body_bytes_in_flight}); retry shortly"
            )
        self.unqueued += 1
        self.bytes_in_flight += reserved
        return Ticket(reserved)

    def queued(self, ticket: Ticket) -> None:
        """The request's rows have joined the queue (or it failed before): the batcher
        counts them from now on."""
        if ticket.unqueued:
            ticket.unqueued = False
            self.unqueued -= 1

    def release(self, ticket: Ticket) -> None:
        """The request has been answered."""
        self.queued(ticket)
        self.bytes_in_flight -= ticket.reserved_bytes
        ticket.reserved_bytes = 0
