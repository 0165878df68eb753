"""ScorePlacement's answers per candidate, for one set of scoring inputs.

A candidate's score (feasible, reason, headroom, prediction, score) is a function of
the candidate (its intent and session budget; not its id) and of the scoring
inputs: the room left, the stall percent, the capacity, the predictor and the node
window it predicts from. Schedulers score the same intents over and over (every
pending pod or tool call against every node, every cycle), while the inputs change
a few times a second at most. Three tables, all dropped when an input changes:

- the finished response entry, by the candidate's whole bytes (id included): a
  scheduler scoring the same pending work again costs a lookup and a byte join;
- the answer without its id, by intent and budget (the same intent under another
  id): one varint and a join more;
- the prediction, by intent and budget, for the current *epoch*: a change of room
  or stall (a session opened, a reservation) rescores without the model.

Room, stall and capacity are compared by value and the predictor by identity: an
answer is the one the full computation gives for them (tests/unit/test_score_cache.py).
The node window is the one bounded staleness: it is taken anew (a new epoch) when
PlacementPredictor hands out a new one, but at most every PREDICTION_REFRESH_SECONDS.
A predictor that cannot say what its answer depends on (no `window()`) turns the
cache off.

Rejected: caching whole responses keyed on the request's bytes (wins a benchmark
that repeats one request; a scheduler's candidate lists vary while the candidates
repeat); a time-to-live on whole answers (room and reservations must be exact:
Admit is checked against them and schedulers read their own reservations at once);
asking the model on every window (the collector's 0.1 s period: a 10-candidate model
call ~0.3-1 ms on every tenth call is the p99 of a scheduler's calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from agentd.v1 import node_pb2 as pb

#: Distinct candidates kept per set of inputs; past it the table starts over (a
#: scheduler cycling through more intents than this gains little from a cache).
MAX_ENTRIES = 4096

#: A prediction is made from the node window of its epoch, which is renewed when the
#: window changes but at most this often: a prediction answers for a window at most
#: this old (plus the collector's 0.1 s period). The model's inputs are 10 s
#: averages (PSI avg10, rates over the window): a second moves them little, and
#: asking the model at most once a second per distinct intent keeps it off the
#: calls' path.
PREDICTION_REFRESH_SECONDS = 1.0
#: How each scored candidate was answered: `entry` (its whole bytes seen with these
#: inputs), `answer` (its intent under another id), `computed` (parsed and scored;
#: predicted unless its intent's prediction of this epoch was kept).
CANDIDATES = Counter(
    "agentd_api_score_cache_candidates",
    "ScorePlacement candidates by how they were answered",
    ["source"],
)
FROM_ENTRY = CANDIDATES.labels("entry")
FROM_ANSWER = CANDIDATES.labels("answer")
COMPUTED = CANDIDATES.labels("computed")
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
    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        refresh_seconds: float = PREDICTION_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._values: tuple[Any, ...] | None = None
        self._objects: tuple[Any, ...] = ()
        self._answers: dict[Any, bytes] = {}
        self._predictions: dict[Any, Any] = {}
        self._predictor: Any = None
        self._window: Any = None  # the window of the current epoch
        self._epoch_began = -float("inf")

    @property
    def window(self) -> Any:
        """The window of the current epoch (None before the first)."""
        return self._window

    def epoch_due(self, predictor: Any) -> bool:
        """Whether `epoch` would take a new window now: the predictor was replaced or
        the current epoch is `refresh_seconds` old. Until then a call does not ask the
        predictor for its window at all: it used to build one (the collector's
        rings, ~60 rates, under the collector's lock) every 0.1 s on whichever call
        came then, and 9 in 10 of them were never used."""
        return (
            predictor is not self._predictor
            or self.clock() - self._epoch_began >= self.refresh_seconds
        )

    def epoch(self, predictor: Any, window: Any) -> Any:
        """The window `predictor`'s answers are kept for: `window` (its latest) when
        the current one is `refresh_seconds` old or the predictor was replaced, else
        the current one. A new epoch empties the predictions."""
        now = self.clock()
        if predictor is not self._predictor or (
            window is not self._window and now - self._epoch_began >= self.refresh_seconds
        ):
            self._predictor, self._window = predictor, window
            self._epoch_began, self._predictions = now, {}
        return self._window

    def predictions(self) -> dict[Any, Any]:
        """Predictions by candidate_key, of the current epoch (`epoch`): a change of
        room or stall rescores from these without asking the model again."""
        if len(self._predictions) >= self.max_entries:
            self._predictions = {}
        return self._predictions

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
