"""Bookkeeping of a scenario in play: which fault takes the next request (counting ``after``,
``times`` and time windows per fault), when outages begin and end, and the counters and log
the proxy publishes. Pure: the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .faults import ExpiredTokenFor, Fault, Outage, Scenario
from .kinds import Kind


@dataclass
class Counts:
    """Per kind: requests seen, forwarded upstream (faulted or not), and faults injected."""

    seen: int = 0
    forwarded: int = 0
    injected: int = 0


class Seen(NamedTuple):
    """One request the proxy saw (``FaultProxy.requests``): header names lower-cased."""

    kind: Kind
    method: str
    target: str
    headers: dict[str, str]


class Injection(NamedTuple):
    """One injected fault: request kind, fault name, method, and path (with its query)."""

    kind: Kind
    fault: str
    method: str
    path: str


class Armed:
    """A fault's progress within the current scenario."""

    def __init__(self, fault: Fault, set_at: float) -> None:
        self.fault = fault
        self.seen = 0
        self.hits = 0
        self.opened_at: float | None = None  # ExpiredTokenFor / Outage windows
        if isinstance(fault, Outage) and fault.immediate:
            self.opened_at = set_at + fault.start
            self.hits = 1


class ScenarioState:
    def __init__(self, scenario: Scenario, set_at: float) -> None:
        self.scenario = scenario
        self.set_at = set_at
        self.armed = [Armed(f, set_at) for f in scenario.faults]

    def match(self, kind: Kind, now: float) -> Fault | None:
        elapsed = now - self.set_at
        for armed in self.armed:
            fault = armed.fault
            if not fault.matches_kind(kind):
                continue
            if isinstance(fault, ExpiredTokenFor) and armed.opened_at is not None:
                if now < armed.opened_at + fault.seconds and (
                    fault.times is None or armed.hits < fault.times
                ):
                    armed.hits += 1
                    return fault
                continue
            if isinstance(fault, Outage) and armed.opened_at is not None:
                continue
            if elapsed < fault.start:
                continue
            if fault.duration is not None and elapsed >= fault.start + fault.duration:
                continue
            if fault.times is not None and armed.hits >= fault.times:
                continue
            armed.seen += 1
            if armed.seen <= fault.after:
                continue
            armed.hits += 1
            if isinstance(fault, ExpiredTokenFor | Outage):
                armed.opened_at = now
            return fault
        return None

    def outage(self, now: float) -> tuple[Outage, float] | None:
        """The outage in effect now, and when it ends."""
        for armed in self.armed:
            fault = armed.fault
            if isinstance(fault, Outage) and armed.opened_at is not None:
                end = armed.opened_at + fault.seconds
                if armed.opened_at <= now < end:
                    return fault, end
        return None

    def next_outage(self, now: float) -> float | None:
        starts = [a.opened_at for a in self.armed
                  if isinstance(a.fault, Outage) and a.opened_at is not None and a.opened_at > now]
        return min(starts, default=None)

