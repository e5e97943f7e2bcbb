"""One Huey queue per shard, and the message format on it.

A shard ``i`` is the Huey queue ``timers-i``. Its Redis keys carry the hash
tag ``{ti}`` (the Huey storage name), so that the queue and the shard's timer
records live in one Redis Cluster slot and one Lua script may touch them
together.

Only the queue (a Redis list) of each Huey instance is used: timers wait in
the timer store's due index, and each consumer's feeder (``workers.consumer``)
moves them onto the queue when they come due.

A message carries only timer ids of one shard, as JSON: ``{"timers": [123, 124]}``
(one to :data:`MAX_TIMERS_PER_MESSAGE`), so recovery can tell which timers a
queue holds without unpickling anything.
"""

import json

from huey import RedisHuey
from huey.registry import Message
from huey.serializer import Serializer


def queue_name(index):
    """Logical name of shard ``index``'s queue: ``timers-<index>``."""
    return f"timers-{index}"


def storage_name(index):
    """Huey storage name of shard ``index``: the Redis Cluster hash tag ``{t<index>}``.

    Every key of the shard carries it (kept short: it is part of every
    timer's record key). On a Redis Cluster a shard may carry another tag,
    chosen to spread shards over the masters (``sharding.topology.Cluster.tag``).
    """
    return f"{{t{index}}}"


# Kept short so that a crashed consumer's batch leaves few timers waiting for
# their leases, long enough to cut a backlog's round trips by ~16.
MAX_TIMERS_PER_MESSAGE = 16


def message_for(timer_ids):
    """The queue message for a batch of timer ids (bytes, deterministic): ``b'{"timers":[7,8]}'``."""
    return b'{"timers":[%s]}' % b",".join(b"%d" % timer_id for timer_id in timer_ids)


def timers_of(message):
    """The timer ids in a queue message.

    Args:
        message: bytes (or text) as stored in a Huey queue.
    Returns:
        list of int timer ids.
    Raises:
        ValueError: the message is not ``{"timers": [...]}`` with 1 to
            :data:`MAX_TIMERS_PER_MESSAGE` positive integers.
    """
    data = json.loads(message)
    if not isinstance(data, dict) or set(data) != {"timers"}:
        raise ValueError("queue message must be an object with only 'timers'")
    ids = data["timers"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_TIMERS_PER_MESSAGE:
        raise ValueError(f"'timers' must be a list of 1 to {MAX_TIMERS_PER_MESSAGE} ids")
    if any(type(timer_id) is not int or timer_id < 1 for timer_id in ids):
        raise ValueError("'timers' must hold positive integers")
    return ids


class TimerMessageSerializer(Serializer):
    """Huey serializer for timer messages: JSON holding timer ids, never pickle.

    Pickle would let anyone who can write to Redis run code in every consumer
    (Huey docs, "Serialization"); this format carries data only.
    ``task_name`` is the Huey registry name messages are dispatched to; it is
    set by :meth:`bind` in the consumer and unused by producers.
    """

    def __init__(self):
        super().__init__()
        self.task_name = None

    def bind(self, task_wrapper):
        """Dispatch every message to ``task_wrapper`` (a ``huey.api.TaskWrapper``)."""
        self.task_name = task_wrapper.huey._registry.task_to_string(task_wrapper.task_class)

    def serialize(self, data):
        """Encode a Huey ``Message`` whose only argument is a list of timer ids."""
        if len(data.args) != 1 or data.kwargs:
            raise ValueError("a timer message carries exactly one list of timer ids")
        return message_for([int(timer_id) for timer_id in data.args[0]])

    def deserialize(self, data):
        """Decode bytes into a Huey ``Message`` for the bound task.

        Raises:
            ValueError: malformed message (Huey logs and drops it).
        """
        ids = timers_of(data)
        return Message(id=f"timers-{ids[0]}", name=self.task_name, retries=0,
                       retry_delay=0, args=(ids,), kwargs={})


class TimerHuey(RedisHuey):
    """Huey on Redis without task revocation.

    Timers are cancelled in the timer store (``DELETE /timers/{id}``), never
    by revoking Huey tasks, so the revocation check Huey makes before every
    task and the flag it clears after it (a Redis round trip each) are
    skipped.
    """

    def is_revoked(self, task, timestamp=None, peek=True):
        """Always False: see the class docstring."""
        return False

    def delete(self, key):
        """No-op: results are off and revocation is unused, so Huey stores no data.

        Huey clears a task's revocation flag after every task, one more
        Redis round trip, which this skips.
        """
        return False


def make_huey(name, **storage_options):
    """The Huey instance of the shard whose storage name (hash tag) is ``name``.

    Args:
        storage_options: for Huey's storage, from ``sharding.topology``
            (``connection_pool``, and on a cluster ``storage_class``).
    Results are not stored: the timer record is the only state.
    """
    return TimerHuey(
        name,
        results=False,
        utc=True,
        serializer=TimerMessageSerializer(),
        clean_name=False,
        blocking=True,
        read_timeout=1,
        **storage_options,
    )
