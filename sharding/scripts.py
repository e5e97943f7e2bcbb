"""The Lua scripts of the timer store, one file each in ``sharding/lua/``.

As BullMQ keeps its commands in ``src/commands/*.lua``: each script is read
once, and a line ``--! include <name>`` at its top pulls in a shared
fragment (``now.lua``: the Redis clock; ``finalize.lua``: moving a timer to a
final status) before the script's own text. Every script's header comment
says its ``KEYS`` and ``ARGV``.
"""

import functools
import os

LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
_INCLUDE = "--! include "


@functools.cache
def source(name):
    """The Lua text of script ``name`` (``sharding/lua/<name>.lua``), its includes expanded.

    Raises:
        FileNotFoundError: no such script or fragment.
    """
    with open(os.path.join(LUA_DIR, f"{name}.lua"), encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    parts = [source(line[len(_INCLUDE):].strip()) if line.startswith(_INCLUDE) else line for line in lines]
    return "".join(parts)


def register(client, *names):
    """``client.register_script`` (redis-py ``Script``) for each of ``names``, in order."""
    return [client.register_script(source(name)) for name in names]


def run_once(client, script, keys, args):
    """``EVALSHA`` of ``script`` on one connection of ``client``'s pool, sent once.

    What ``client.evalsha`` does, without the ~20 us of CPU that redis-py's
    ``Redis.execute_command`` spends around the round trip (its retry wrapper,
    event dispatch and observability hooks; docs/BENCHMARKS.md, "Create path").
    It never sends the script again: a create whose reply was lost may have
    stored its timer. redis-py's ``Connection`` closes itself on any error but
    an error reply, so no stale reply is left for its next user.

    Args:
        client: a ``redis.Redis`` of the server that holds ``keys``.
        script: a registered ``Script``.
    Returns:
        the script's reply.
    Raises:
        redis.exceptions.NoScriptError: the server lacks the script (nothing ran).
        redis.exceptions.ConnectionError, TimeoutError: the script may or may not have run.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()
    finally:
        pool.release(connection)


def optional(number):
    """A script argument for an optional integer: the integer, or '' for None."""
    return "" if number is None else int(number)


def queue(pipe, script, keys, args):
    """Add ``script`` (a registered ``Script``) to ``pipe`` as a bare ``EVALSHA``.

    redis-py's ``Script`` on a pipeline checks ``SCRIPT EXISTS`` before every
    execute (one more round trip); the caller handles ``NoScriptError`` instead.
    Returns:
        ``script``.
    """
    pipe.evalsha(script.sha, len(keys), *keys, *args)
    return script
