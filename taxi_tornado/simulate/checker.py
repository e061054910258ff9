"""The checker's side of the Jepsen split: after the run, it judges what every phone
recorded (and what the server's store says, read over the HTTP API) and names each
broken invariant with an example. Nothing here runs during the simulation.

Invariants (each must count 0):
- `double_claims`: trips for which two drivers each got a successful claim reply;
- `requested_past_max_wait`: (nearest) trips still REQUESTED in the store past
  `dispatch.max_wait` (and a grace);
- `final_status_unseen`: trips that ended in the store whose rider never saw that end
  (as an event, a reply, or a reload over HTTP);
- `events_missed`: within a span the client says is continuous (per phone, group and
  epoch; a resume that could not recover a group starts a new span), an offset the
  phone was never handed, unless the phone itself caused that send (the server leaves
  the sender out: the event's origin says so, or, when no phone heard it, the phone
  changed that group just then);
- `events_twice`: an offset handed to one phone twice in one group and epoch;
- `requests_acted_twice`: trips in the store beyond the trip requests their rider sent
  (a keyed request resent after a drop must not make a second trip).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taxi_tornado.simulate.recorder import FINAL_STATUSES, Event, PhoneLog

#: Wall seconds either side of a gap in which the phone's own change of that group
#: counts as the reason it never heard that offset.
OWN_SEND_WINDOW = 2.0
#: Requests that never left the phone: they cannot have acted at all.
NEVER_SENT = frozenset({"closed", "queue_full"})
INVARIANTS = ("double_claims", "requested_past_max_wait", "final_status_unseen",
              "events_missed", "events_twice", "requests_acted_twice")


@dataclass
class History:
    """Everything the checker judges: the phones' logs, and the store's trips of the run
    as their riders see them over the HTTP API."""

    phones: list[PhoneLog]
    trips: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "broadcast"
    max_wait: float | None = None  # wall seconds (nearest)
    grace: float = 2.0  # wall seconds past max_wait before a REQUESTED trip is late
    checked_at: float = 0.0  # Unix time at which `trips` was read
    speed: float = 1.0


def check(history: History) -> dict[str, Any]:
    """The report: trip counts, invariants with an example each, and the figures."""
    invariants: dict[str, int] = {}
    examples: dict[str, Any] = {}
    for name, (count, example) in (
        ("double_claims", double_claims(history)),
        ("requested_past_max_wait", requested_past_max_wait(history)),
        ("final_status_unseen", final_status_unseen(history)),
        ("requests_acted_twice", requests_acted_twice(history)),
    ):
        invariants[name] = count
        if example is not None:
            examples[name] = example
    (missed, missed_example), (twice, twice_example) = delivery(history)
    invariants["events_missed"], invariants["events_twice"] = missed, twice
    for name, example in (("events_missed", missed_example), ("events_twice", twice_example)):
        if example is not None:
            examples[name] = example
    invariants = {name: invariants[name] for name in INVARIANTS}
    return {
        "trips": trip_counts(history),
        "invariants": invariants,
        "examples": examples,
        "ok": not any(invariants.values()),
        **figures(history),
    }


# --- invariants ---------------------------------------------------------------------

Verdict = tuple[int, Any]


def double_claims(history: History) -> Verdict:
    claimers: dict[str, set[str]] = defaultdict(set)
    for phone in drivers(history):
        for request in phone.requests:
            if request.type == "trip.update" and request.outcome == "ok" and request.trip:
                claimers[request.trip].add(phone.user_id)
    doubled = {trip: sorted(who) for trip, who in claimers.items() if len(who) > 1}
    example = next(({"trip": trip, "drivers": who} for trip, who in doubled.items()), None)
    return len(doubled), example


def requested_past_max_wait(history: History) -> Verdict:
    if history.mode != "nearest" or history.max_wait is None:
        return 0, None
    late = []
    for trip in history.trips.values():
        if trip.get("status") != "REQUESTED":
            continue
        age = history.checked_at - _unix(trip.get("created"))
        if age > history.max_wait + history.grace:
            late.append({"trip": trip["id"], "age_s": round(age, 2),
                         "max_wait_s": history.max_wait})
    return len(late), (late[0] if late else None)


def final_status_unseen(history: History) -> Verdict:
    riders = {phone.user_id: phone for phone in history.phones if phone.role == "rider"}
    seen_by = {rider: _statuses_seen(phone) for rider, phone in riders.items()}
    unseen = []
    for trip in history.trips.values():
        status, rider = trip.get("status"), _user_id(trip.get("rider")) or ""
        if status not in FINAL_STATUSES or rider not in riders:
            continue
        seen = seen_by[rider].get(trip["id"], set())
        if status not in seen:
            unseen.append({"trip": trip["id"], "rider": riders[rider].username,
                           "status": status, "seen": sorted(seen)})
    return len(unseen), (unseen[0] if unseen else None)


def requests_acted_twice(history: History) -> Verdict:
    made: Counter[str] = Counter()
    for phone in history.phones:
        made[phone.user_id] += sum(1 for request in phone.requests
                                   if request.type == "trip.request"
                                   and request.outcome not in NEVER_SENT)
    stored: Counter[str] = Counter(_user_id(trip.get("rider")) or ""
                                   for trip in history.trips.values())
    extra = {rider: stored[rider] - made[rider] for rider in stored
             if rider in made and stored[rider] > made[rider]}
    example = next(({"rider": rider, "trips_stored": stored[rider],
                     "trip_requests_sent": made[rider]} for rider in extra), None)
    return sum(extra.values()), example


def delivery(history: History) -> tuple[Verdict, Verdict]:
    """(events_missed, events_twice), per the module's docstring."""
    copies = _copies(history)
    missed = twice = 0
    missed_example: Any = None
    twice_example: Any = None
    for phone in history.phones:
        sends = _sends_by_group(phone)
        for (group, epoch), spans in _spans(phone).items():
            offsets = [offset for span in spans for offset, _ in span]
            doubled = [offset for offset, n in Counter(offsets).items() if n > 1]
            twice += len(doubled)
            if doubled and twice_example is None:
                twice_example = {"phone": phone.username, "group": group, "epoch": epoch,
                                 "offset": doubled[0]}
            for span in spans:
                for offset, before, after in _gaps(span):
                    if _excused(phone, (group, epoch, offset), copies, sends.get(group, []),
                                before, after):
                        continue
                    missed += 1
                    if missed_example is None:
                        missed_example = {"phone": phone.username, "group": group,
                                          "epoch": epoch, "offset": offset,
                                          "span": [span[0][0], span[-1][0]]}
    return (missed, missed_example), (twice, twice_example)


# --- figures ------------------------------------------------------------------------

def trip_counts(history: History) -> dict[str, int]:
    canceled_by_rider = _canceled_by_rider(history)
    gave_up = {trip for phone in history.phones for trip in phone.gave_up}
    counts = Counter(requested=len(history.trips))
    for trip_id, trip in history.trips.items():
        status, driver = trip.get("status"), trip.get("driver")
        counts["matched"] += driver is not None
        if status == "COMPLETED":
            counts["completed"] += 1
        elif status == "CANCELED" and (trip_id in gave_up or (
                driver is None and trip_id not in canceled_by_rider)):
            counts["unmatched"] += 1
        elif status == "CANCELED":
            counts["canceled"] += 1
        else:
            counts["open"] += 1
    return {name: counts[name] for name in
            ("requested", "matched", "completed", "canceled", "unmatched", "open")}


def figures(history: History) -> dict[str, Any]:
    requested_at = {request.trip: request.done for phone in history.phones
                    for request in phone.requests
                    if request.type == "trip.request" and request.outcome == "ok"}
    to_match, distances = [], []
    for phone in drivers(history):
        for request in phone.requests:
            if not (request.type == "trip.update" and request.outcome == "ok"
                    and request.status == "STARTED" and request.trip in requested_at):
                continue
            to_match.append((request.done - requested_at[request.trip]) * history.speed)
            if request.distance_m is not None:
                distances.append(request.distance_m)
    offers: Counter[str] = Counter()
    for phone in drivers(history):
        for event in phone.events:
            if event.type == "trip.offer" or (event.type == "trip.updated"
                                              and event.status == "REQUESTED"):
                offers[event.trip or ""] += 1
    errors: Counter[str] = Counter()
    for phone in history.phones:
        errors.update(phone.errors)
    return {
        "time_to_match_s": summary(to_match),
        "pickup_distance_m": summary(distances),
        "offers_per_trip": summary([offers[trip] for trip in history.trips]),
        "connections": {
            "reconnects": sum(phone.disconnects for phone in history.phones),
            "resumes": sum(phone.resumes for phone in history.phones),
            "groups_not_recovered": sum(phone.groups_lost for phone in history.phones),
        },
        "errors": dict(sorted(errors.items())),
        "events_recorded": sum(len(phone.events) for phone in history.phones),
    }


def summary(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None}

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 2),
            "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99)}


# --- helpers ------------------------------------------------------------------------

Place = tuple[str, str, int]  # group, epoch, offset


def drivers(history: History) -> list[PhoneLog]:
    return [phone for phone in history.phones if phone.role == "driver"]


def _spans(phone: PhoneLog) -> dict[tuple[str, str], list[list[tuple[int, float]]]]:
    """Per (group, epoch), the continuous spans of (offset, time) as handed over."""
    breaks: dict[int, set[str]] = defaultdict(set)
    for index, group in phone.breaks:
        breaks[index].add(group)
    spans: dict[tuple[str, str], list[list[tuple[int, float]]]] = defaultdict(list)
    broken: set[str] = set()
    for index, event in enumerate(phone.events):
        broken |= breaks.get(index, set())
        if event.group is None or event.epoch is None or event.offset is None:
            continue
        runs = spans[(event.group, event.epoch)]
        if not runs or event.group in broken:
            runs.append([])
            broken.discard(event.group)
        runs[-1].append((event.offset, event.t))
    return spans


def _gaps(span: list[tuple[int, float]]) -> Iterable[tuple[int, float, float]]:
    """Each offset missing between the first and the last of a span, with the times of
    the offsets handed over just before and after it."""
    received = sorted({offset: t for offset, t in span}.items())
    for (low, t_low), (high, t_high) in itertools.pairwise(received):
        for offset in range(low + 1, high):
            yield offset, t_low, t_high


def _excused(phone: PhoneLog, place: Place, copies: dict[Place, Event],
             sends: list[float], before: float, after: float) -> bool:
    copy = copies.get(place)
    if copy is not None:
        return copy.origin == phone.user_id
    start = bisect.bisect_left(sends, before - OWN_SEND_WINDOW)
    return start < len(sends) and sends[start] <= after + OWN_SEND_WINDOW


def _copies(history: History) -> dict[Place, Event]:
    """One copy of every event any phone was handed, with its origin filled in for
    cancels (the rider's, when the rider's own trip.cancel succeeded)."""
    canceled_by = _canceled_by_rider(history)
    copies: dict[Place, Event] = {}
    for phone in history.phones:
        for event in phone.events:
            if event.group is None or event.epoch is None or event.offset is None:
                continue
            place = (event.group, event.epoch, event.offset)
            if place in copies:
                continue
            if event.status == "CANCELED" and event.origin is None and event.trip:
                event = event._replace(origin=canceled_by.get(event.trip))
            copies[place] = event
    return copies


def _sends_by_group(phone: PhoneLog) -> dict[str, list[float]]:
    sends: dict[str, list[float]] = defaultdict(list)
    for send in phone.sends:
        sends[send.group].append(send.t)
    for times in sends.values():
        times.sort()
    return sends


def _canceled_by_rider(history: History) -> dict[str, str]:
    return {request.trip: phone.user_id for phone in history.phones
            for request in phone.requests
            if request.type == "trip.cancel" and request.outcome == "ok" and request.trip}


def _statuses_seen(phone: PhoneLog) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for event in phone.events:
        if event.type == "trip.updated" and event.trip and event.status:
            seen[event.trip].add(event.status)
    for request in phone.requests:
        if request.outcome == "ok" and request.trip and request.status:
            seen[request.trip].add(request.status)
    for _, trips in phone.reloads:
        for trip_id, status in trips.items():
            seen[trip_id].add(status)
    return seen


def _user_id(user: Any) -> str | None:
    return str(user["id"]) if isinstance(user, dict) and "id" in user else None


def _unix(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
