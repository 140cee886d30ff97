"""A naive reference model of the ledger, written apart from `ledger.domain`, for tests.

It keeps each member's balance, reserved and owed points, lots (keyed by the command that
created them) and holds, and answers each command with its refusal code, if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

MEMBERS = ["m1", "m2", "m3"]


@dataclass
class RefLot:
    key: str  # the command that created it
    points: int
    remaining: int
    expires_at: datetime | None
    earned_at: datetime
    order: int


@dataclass
class RefMember:
    balance: int = 0
    reserved: int = 0
    owed: int = 0
    lots: list[RefLot] = field(default_factory=list)
    holds: dict[str, list[Any]] = field(default_factory=dict)  # id -> [points, status, expires]


@dataclass
class RefMove:
    member: str
    kind: str
    size: int  # how much can be reversed
    reversed: int = 0
    own_lot: str | None = None
    taken: list[tuple[str, int]] = field(default_factory=list)


class Model:
    def __init__(self, members: list[str] = MEMBERS) -> None:
        self.members = {m: RefMember() for m in members}
        self.moves: dict[str, RefMove] = {}
        self.order = 0

    def _lot(self, m: RefMember, key: str, points: int, expires: datetime | None,
             at: datetime) -> None:
        self.order += 1
        m.lots.append(RefLot(key, points, points, expires, at, self.order))

    def _take(self, m: RefMember, points: int, first: str | None = None) -> list[tuple[str, int]]:
        lots = sorted((lot for lot in m.lots if lot.remaining > 0),
                      key=lambda lot: (lot.key != first, lot.expires_at is None,
                                       lot.expires_at or lot.earned_at, lot.earned_at,
                                       lot.order))
        taken = []
        for lot in lots:
            if points == 0:
                break
            n = min(points, lot.remaining)
            lot.remaining -= n
            m.balance -= n
            points -= n
            taken.append((lot.key, n))
        assert points == 0
        return taken

    def time_out(self, m: RefMember, now: datetime) -> None:
        for hold in m.holds.values():
            if hold[1] == "active" and hold[2] <= now:
                hold[1] = "expired"
                m.reserved -= hold[0]

    def apply(self, c: dict[str, Any], now: datetime) -> str | None:
        """Apply a command; return the refusal code, if any."""
        m = self.members[c["member_id"]]
        self.time_out(m, now)
        kind, cid, at = c["type"], c["command_id"], datetime.fromisoformat(c["occurred_at"])
        available = m.balance - m.reserved
        if kind == "credit":
            settle = min(m.owed, c["points"])
            m.owed -= settle
            m.balance += c["points"] - settle
            expires = datetime.fromisoformat(c["expires_at"]) if c["expires_at"] else None
            if c["points"] > settle:
                self._lot(m, cid, c["points"] - settle, expires, at)
            self.moves[cid] = RefMove(c["member_id"], "credit", c["points"],
                                      own_lot=cid if c["points"] > settle else None)
        elif kind == "debit":
            if c["points"] > available and not c["allow_owed"]:
                return "insufficient_points"
            take = min(c["points"], available)
            m.owed += c["points"] - take
            self.moves[cid] = RefMove(c["member_id"], "spend", c["points"],
                                      taken=self._take(m, take))
        elif kind == "reserve":
            if c["points"] > available:
                return "insufficient_points"
            m.reserved += c["points"]
            m.holds[cid] = [c["points"], "active", now + timedelta(seconds=c["timeout_s"])]
        elif kind in ("capture", "release"):
            hold = m.holds.get(c["hold_id"])
            if hold is None:
                return "unknown_hold"
            if hold[1] == "expired":
                return "hold_expired"
            if hold[1] != "active":
                return "hold_not_active"
            m.reserved -= hold[0]
            hold[1] = "captured" if kind == "capture" else "released"
            if kind == "capture":
                self.moves[cid] = RefMove(c["member_id"], "spend", hold[0],
                                          taken=self._take(m, hold[0]))
        elif kind == "expire":
            budget, taken = available, []
            for item in c["lots"]:
                lot = next(lot for lot in m.lots if lot.key == item["key"])
                if lot.expires_at is None or lot.expires_at > at:
                    continue
                n = min(lot.remaining, budget)
                if n:
                    lot.remaining -= n
                    m.balance -= n
                    budget -= n
                    taken.append((lot.key, n))
            self.moves[cid] = RefMove(c["member_id"], "spend", sum(n for _, n in taken),
                                      taken=taken)
        elif kind == "reverse":
            target = self.moves.get(c["target_id"])
            if target is None or target.member != c["member_id"]:
                return "unknown_command"
            if target.kind == "reverse":
                return "not_reversible"
            room = target.size - target.reversed
            points = c["points"] or room
            if room == 0 or points > room:
                return "reversal_exceeds_original"
            before = target.reversed
            target.reversed += points
            self.moves[cid] = RefMove(c["member_id"], "reverse", 0)
            if target.kind == "credit":
                take = min(points, available)
                m.owed += points - take
                self._take(m, take, first=target.own_lot)
            else:
                self._give_back(m, target, before, points, cid, at)
        return None

    def _give_back(self, m: RefMember, target: RefMove, before: int, points: int, cid: str,
                   at: datetime) -> None:
        taken_total = sum(n for _, n in target.taken)
        skip = min(before, taken_total)
        restore = min(points, taken_total - skip)
        left = restore
        for key, n in target.taken:
            already = min(skip, n)
            skip -= already
            give = min(n - already, left)
            if give:
                lot = next(lot for lot in m.lots if lot.key == key)
                lot.remaining += give
                m.balance += give
                left -= give
        rest = points - restore
        forgiven = min(rest, m.owed)
        m.owed -= forgiven
        if rest - forgiven:
            m.balance += rest - forgiven
            self._lot(m, cid, rest - forgiven, None, at)


