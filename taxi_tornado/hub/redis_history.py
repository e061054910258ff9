"""A group's history in Redis: a capped stream beside a meta hash that outlives it.

    <prefix>:meta:<group>     hash {epoch, offset}; lives META_TTL after the last send
    <prefix>:stream:<group>   stream of the last hub.history_size events, entry id
                              <offset>-0, fields t (Redis time, ms) and p (payload);
                              expires hub.history_ttl after the last send

APPEND is one Lua script (EVALSHA, one round trip): it takes the group's next offset,
appends the event, and publishes it as a taxi2 message carrying that offset, so Redis's
publish order is the numbering order on every subscribed process. A meta hash that is
gone (Redis restarted without persistence, flushed, or the group silent past META_TTL)
starts a new epoch (the candidate the caller sends) and offsets start again from 1.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from taxi_tornado.hub.history import HistoryLimits, Position, Replay, new_epoch, replay_from

# KEYS: meta, stream. ARGV: channel, wire header, payload, size, ttl ms, meta ttl ms,
# epoch candidate. Returns {offset, epoch, receivers}.
APPEND = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 't', ms, 'p', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local receivers = redis.call('PUBLISH', ARGV[1],
  ARGV[2] .. ' ' .. offset .. ' ' .. epoch .. '\\n' .. ARGV[3])
return {offset, epoch, receivers}
"""
APPEND_SHA = hashlib.sha1(APPEND.encode()).hexdigest()


class RedisHistory:
    """Keys, the append command and the replay read for one deployment's prefix."""

    def __init__(self, prefix: str, limits: HistoryLimits) -> None:
        self.limits = limits
        self._meta = f"{prefix}:meta:"
        self._stream = f"{prefix}:stream:"
        self._size = str(limits.size)
        self._ttl_ms = str(math.ceil(limits.ttl * 1000))
        self._meta_ttl_ms = str(math.ceil(limits.meta_ttl * 1000))

    def append_arguments(
        self, group: str, channel: str, header: bytes, payload: bytes
    ) -> tuple[Any, ...]:
        """The arguments after the script (EVALSHA <sha> or EVAL <script>)."""
        return (2, self._meta + group, self._stream + group, channel, header, payload,
                self._size, self._ttl_ms, self._meta_ttl_ms, new_epoch())

    async def since(
        self, client: Redis, positions: Mapping[str, Position]
    ) -> dict[str, Replay | None]:
        """Every group's replay, read in one MULTI (one round trip, one snapshot)."""
        async with client.pipeline(transaction=True) as pipe:
            pipe.time()
            for group, position in positions.items():
                pipe.hmget(self._meta + group, "epoch", "offset")
                pipe.xrange(self._stream + group, min=f"{position.offset + 1}-0",
                            count=self.limits.size)
            results = await pipe.execute()
        seconds, microseconds = results[0]
        oldest_allowed = seconds * 1000 + microseconds // 1000 - self.limits.ttl * 1000
        replays: dict[str, Replay | None] = {}
        for index, (group, position) in enumerate(positions.items()):
            (epoch, top), entries = results[1 + 2 * index], results[2 + 2 * index]
            stored = [(_offset(entry_id), int(fields[b"t"]), fields[b"p"])
                      for entry_id, fields in entries]
            replays[group] = replay_from(
                position, epoch.decode() if epoch else None, int(top or 0), stored,
                oldest_allowed)
        return replays


def _offset(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])
