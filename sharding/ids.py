"""Timer ids: the home shard in the last three digits, time-ordered across shards.

A timer id is ``n * 1000 + home shard``: the shard holding its record is
``id % 1000``, derivable without a lookup table. ``n`` counts units of 100
microseconds since 2026-01-01 on the shard's Redis clock (``TIME``; "the
clock" below); the shard's counter ``seq:{ti}`` holds the last ``n`` it gave.

* One server (``lua/create.lua``): ``n`` is the larger of the counter + 1
  and the clock, made inside the create script, which builds the record key
  from it: one round trip, and no script touches another shard's keys.
* A Redis Cluster wants every key a script touches in ``KEYS``, so the
  record key, hence the id, must be known before the script runs. The API
  proposes it (``lua/create_proposed.lua``): from the shard's reply to each
  create it learns a lower bound of the shard's clock minus its own
  (``time.monotonic_ns``: the script ran before the reply came back) and
  proposes ``n_p``, its own clock now plus that bound, plus ``n_p + T + 1``
  and ``n_p + 2 (T + 1)`` (:data:`PROPOSED_IDS`, each with its record key in
  KEYS, the window T = :data:`PROPOSAL_WINDOW_UNITS` = 5 units, 0.5 ms;
  :class:`IdProposals`). The
  script takes the one in ``[clock - T, clock]`` if it is above the counter,
  sets the counter to it and stores the timer: one round trip. Else (a
  process's first create on the shard, or the request was delayed more than
  1.7 ms, or another create took that unit) it reserves ``max(counter + 1, clock)``
  as ``lua/reserve_id.lua`` does and ``lua/create_reserved.lua`` stores the
  timer under it: two round trips. The proposal is never above the clock
  when the bound holds; one above it (the clock stepped back, another node
  took over the slot) is refused and the bound learnt again.

What that promises (``shared/CONTRACT.md`` section 2):

* unique: every id a shard gives is above its counter, which is then set to
  it and so only grows; the shard is in the last three digits;
* below 2**53 (exact in JavaScript) until 2054: ``n`` is at most the clock
  (plus a counter's lead, below);
* time-ordered at 1 ms: a timer created at least 1 ms after another one's
  ``201`` has a larger id, whichever shards took them. Say A was made at
  clock ``c`` (of its shard's node) with ``n_A = c + lead``; B's script ran
  at least 1 ms later, at clock ``c' >= c + 10`` (on a cluster, when B came
  1 ms plus the skew between the two nodes later). Every id is at least its
  clock minus T (T = 0 on one server: ``n >= clock``; on a cluster a
  proposal is taken only inside the window, a reserved one is ``>= clock``),
  so ``n_B >= c' - T >= c + 10 - T``, which is above ``n_A`` while
  ``lead <= 9 - T``. A proposal's lead is at most 0 (it is at most the
  clock); a reserved id's lead is ``counter + 1 - clock`` when the counter is
  at or past the clock. So the order holds while no id is made more than
  9 - T units ahead of its clock: 9 units (0.9 ms) on one server, 4 (0.4 ms)
  on a cluster, which is why T is 5 and not more; a larger T takes more
  delayed proposals but leaves less room for bursts. Creates less than 1 ms
  apart on different shards may get ids in either order (within one unit
  they are ordered by shard index).

An id is made ahead of the clock when its shard gives more than one id per
100 microsecond unit (more than 10 (one server) or 5 (cluster) creates within
one unit on one shard break the order; a sustained rate above 10,000 creates
a second on one shard makes the counter run ahead until it drains as the
clock catches up) or when the server's clock steps back (an NTP step; on a
cluster, a failover to a node whose clock is behind, and the skew between
nodes adds to the 1 ms). Ids stay unique then; only the order across shards
may lag by the counter's lead.
"""

import collections
import time

SHARD_ID_BASE = 1000
# 2026-01-01T00:00:00Z in units of 100 microseconds: ids count from there.
ID_EPOCH_UNITS = 1_767_225_600 * 10_000
# How far below the shard's clock a proposed id may be, in 100 us units (see above).
PROPOSAL_WINDOW_UNITS = 5
# Ids a cluster create proposes, PROPOSAL_WINDOW_UNITS + 1 units apart: one of them is
# in the window whenever the lag from proposing to the script's run is 0..17 units.
PROPOSED_IDS = 3
_STRIDE = PROPOSAL_WINDOW_UNITS + 1
_UNIT_NS = 100_000


def home_shard(timer_id):
    """Index of the shard that holds ``timer_id``'s record (``id % 1000``)."""
    return timer_id % SHARD_ID_BASE


class IdProposals:
    """The ids this process proposes to one shard of a Redis Cluster (``lua/create_proposed.lua``).

    Args:
        index: the shard's index (0..999).
        record_prefix: the shard's record key prefix, ``t:{tag}:``.

    ``counts``: creates by how their id was made: ``proposed`` (taken: one
    round trip), ``refused`` (a proposal refused: two), ``unproposed`` (no
    offset known yet: two).
    """

    def __init__(self, index, record_prefix):
        self._prefix = record_prefix
        # id = n * 1000 + index, so its text is n's followed by the index in three digits.
        self._suffix = f"{index:03d}"
        # The shard's clock minus ours (time.monotonic_ns) in ns, at most the true
        # difference; None until a create's reply told it.
        self._offset = None
        self.counts = collections.Counter()

    def propose(self):
        """The ids to propose now.

        Returns:
            (first n in 100 us units since :data:`ID_EPOCH_UNITS`, the record keys of
            the :data:`PROPOSED_IDS` ids from it); (None, []) while no offset is known.
        """
        offset = self._offset
        if offset is None:
            return None, []
        # As late as may be: the lag from here to the script's run counts against the window.
        first = (time.monotonic_ns() + offset) // _UNIT_NS
        prefix, suffix = self._prefix, self._suffix
        return first, [f"{prefix}{n}{suffix}" for n in range(first, first + PROPOSED_IDS * _STRIDE, _STRIDE)]

    def learn(self, clock, first):
        """Update the clock offset from a reply's ``clock`` (100 us units), received now.

        The script ran before the reply arrived, at a moment of the shard's clock
        at or after ``clock``, so ``clock`` minus our clock now is at most the true
        offset; the largest such bound is kept. A first proposal above the shard's
        clock means the offset shrank (the clock was stepped back, another node
        took over): start again from this bound.

        Args:
            clock: the shard's clock when its script ran, 100 us units since the id epoch.
            first: what :meth:`propose` proposed (None: nothing).
        """
        bound = clock * _UNIT_NS - time.monotonic_ns()
        offset = self._offset
        if offset is None or first is None or first > clock or bound > offset:
            self._offset = bound
