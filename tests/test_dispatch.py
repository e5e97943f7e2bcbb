"""A consumer's dispatcher (``workers.tasks.Dispatcher``) on a real Redis, sending to a real receiver.

Driven directly, without Huey: ``take`` is what the consumer's Huey worker
thread calls with each message's timer ids.
"""

import dataclasses

import pytest

from sharding import config
from sharding.queues import timers_of
from sharding.store import TimerStore
from tests.harness import wait_until
from workers.delivery import Sender
from workers.tasks import Dispatcher


@pytest.fixture
def store(redis_client, redis_server):
    """A TimerStore on the session's Redis (emptied for each test by ``redis_client``)."""
    return TimerStore(redis_server.url)


def _dispatcher(store, senders):
    settings = dataclasses.replace(config.load(), webhook_timeout_seconds=10.0, visibility_seconds=30.0)
    return Dispatcher(store, Sender(settings.webhook_timeout_seconds), settings, senders).start()


def _status(store, timer_id):
    return store.get(timer_id)[0]["status"]


def test_timers_that_find_no_free_sender_are_released_and_given_back(store, redis_client, receiver):
    receiver.reset()
    receiver.script("/slow", [(200, {}, 2.0)])
    slow = store.create(f"{receiver.url}/slow", 0, 0)[0]
    fast = [store.create(f"{receiver.url}/fast", 0, 0)[0] for _ in range(2)]
    dispatcher = _dispatcher(store, senders=1)

    assert dispatcher.take([slow, *fast], queue_index=0) == ["claimed"] * 3

    shard = store.shard(0)
    # The one sender is held by the slow receiver: the other two go back to the head
    # of the queue (the end Huey pops from), unsent and pending again.
    wait_until(lambda: redis_client.llen(shard.queue_key) == 1, timeout=10, message="a message given back")
    assert timers_of(redis_client.lindex(shard.queue_key, -1)) == fast
    assert [_status(store, t) for t in fast] == ["scheduled", "scheduled"]
    assert [store.get(t)[0]["attempts"] for t in fast] == [0, 0]
    assert [r["path"] for r in receiver.received()] == [f"/slow/{slow}"]
    wait_until(lambda: _status(store, slow) == "fired", timeout=15, message="the slow timer recorded")
    assert store.get(slow)[0]["attempts"] == 1


def test_close_gives_back_what_waits_and_records_what_was_sent(store, redis_client, receiver):
    receiver.reset()
    receiver.script("/slow", [(200, {}, 1.0)])
    slow = store.create(f"{receiver.url}/slow", 0, 1)[0]
    waiting = store.create(f"{receiver.url}/fast", 0, 1)[0]
    dispatcher = _dispatcher(store, senders=1)
    assert dispatcher.take([slow, waiting], queue_index=1) == ["claimed", "claimed"]
    wait_until(lambda: receiver.received(f"/slow/{slow}"), timeout=10, message="the slow send to start")

    assert dispatcher.close(timeout_s=15) is True

    assert _status(store, slow) == "fired"
    assert _status(store, waiting) == "scheduled"
    assert [timers_of(m) for m in redis_client.lrange(store.shard(1).queue_key, 0, -1)] == [[waiting]]
    # Closed, the dispatcher takes no more messages.
    assert dispatcher.wait_for_room(0.0) is False
