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


def queue(pipe, script, keys, args):
    """Add ``script`` (a registered ``Script``) to ``pipe`` as a bare ``EVALSHA``.

    redis-py's ``Script`` on a pipeline checks ``SCRIPT EXISTS`` before every
    execute (one more round trip); the caller handles ``NoScriptError`` instead.
    Returns:
        ``script``.
    """
    pipe.evalsha(script.sha, len(keys), *keys, *args)
    return script
