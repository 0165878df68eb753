"""ScorePlacement's answers per candidate, for one set of scoring inputs.

A candidate's score (feasible, reason, headroom, prediction, score) is a pure
function of the candidate (its intent and session budget; not its id) and of the
scoring inputs: the room left, the stall percent, the capacity, the predictor and
the node window it predicts from. Schedulers score the same few intents over and
over (every pending pod or tool call against every node, every cycle), while the
inputs change a few times a second at most. So each answer is kept, serialized
without its candidate id, until any input changes; a call then costs a lookup and a
byte join per candidate instead of parsing, a model call and building messages
(~0.1 ms per candidate).

Exact, not approximate: the inputs are compared by value (room, stall, capacity) and
by identity (the predictor, and the NodeWindow object PlacementPredictor hands out:
a new window is a new object), so an answer from the cache is byte-for-byte the one
the full computation gives for the same inputs (tests/unit/test_score_cache.py).
A predictor that cannot say what its answer depends on (no `window()`) turns the
cache off.

Rejected: caching whole responses keyed on the request's bytes (wins a benchmark
that repeats one request; a scheduler's candidate lists vary while the candidates
repeat); a time-to-live (an answer could then outlive a change of the inputs).
"""

from __future__ import annotations

from typing import Any

from agentd.v1 import node_pb2 as pb

#: Distinct candidates kept per set of inputs; past it the table starts over (a
#: scheduler cycling through more intents than this gains little from a cache).
MAX_ENTRIES = 4096

_SCORES_FIELD = pb.ScorePlacementResponse.DESCRIPTOR.fields_by_name["scores"].number
_ID_FIELD = pb.Score.DESCRIPTOR.fields_by_name["candidate_id"].number
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]
_SCORES_TAG = _varint(_SCORES_FIELD << 3 | _LENGTH_DELIMITED)
_ID_TAG = _varint(_ID_FIELD << 3 | _LENGTH_DELIMITED)


def candidate_key(candidate: pb.Candidate) -> tuple[bytes, bytes | None]:
    """What a candidate's score depends on: everything but its id (its intent and
    session budget, serialized deterministically)."""
    budget = None
    if candidate.HasField("session_budget"):
        budget = candidate.session_budget.SerializeToString(deterministic=True)
    return candidate.intent.SerializeToString(deterministic=True), budget


def score_entry(candidate_id: str, answer: bytes) -> bytes:
    """One `scores` element of a serialized ScorePlacementResponse: the cached
    answer with the caller's candidate id prepended (protobuf takes fields in any
    order)."""
    name = candidate_id.encode()
    body = _ID_TAG + _varint(len(name)) + name + answer if name else answer
    return _SCORES_TAG + _varint(len(body)) + body


class ScoreCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._values: tuple[Any, ...] | None = None
        self._objects: tuple[Any, ...] = ()
        self._answers: dict[Any, bytes] = {}
        self.hits = 0
        self.misses = 0

    def answers(self, values: tuple[Any, ...], objects: tuple[Any, ...]) -> dict[Any, bytes]:
        """The answers for these inputs: `values` compared by equality, `objects` by
        identity (held here, so an id is never reused while compared). A change of
        either starts an empty table. Mutate the returned dict with `put`."""
        same = (
            self._values == values
            and len(self._objects) == len(objects)
            and all(a is b for a, b in zip(self._objects, objects, strict=True))
        )
        if not same:
            self._values, self._objects, self._answers = values, objects, {}
        return self._answers

    def put(
        self,
        answers: dict[Any, bytes],
        key: Any,
        answer: bytes,
    ) -> None:
        if len(answers) >= self.max_entries:
            answers.clear()
        answers[key] = answer
