"""A group's history in Redis: a capped stream beside a meta hash that outlives it.

Key names come from hub/keys.py (in a Redis Cluster they carry the group's hash tag,
`<prefix>:meta:{<group>}`, so that the scripts touch one slot):

    <prefix>:meta:<group>     hash {epoch, offset, bytes, ended}; lives META_TTL after
                              the last send, or hub.history_ttl once the group ended
    <prefix>:stream:<group>   stream of the last events, at most hub.history_size of
                              them and hub.history_bytes long together, entry id
                              <offset>-0, fields t (Redis time, ms) and p (payload);
                              expires hub.history_ttl after the last send
    <prefix>:sizes:<group>    list of the kept payloads' lengths, oldest first, beside
                              the stream (same entries, same expiry); `bytes` in the
                              meta hash is their sum

APPEND is one Lua script (EVALSHA, one round trip): it takes the group's next offset,
appends the event (dropping the oldest past the size or the bytes; an event longer than
hub.history_bytes empties the stream, as nobody could replay past it), and publishes it
as a taxi2 message carrying that offset (PUBLISH, or SPUBLISH in a Redis Cluster: the
channel carries the same tag as the keys), so Redis's publish order is the numbering order
on every subscribed process. A meta hash that is gone (Redis restarted without
persistence, flushed, or the group silent past its ttl) starts a new epoch (the
candidate the caller sends) and offsets start again from 1. END marks a group that had
its last event (a trip that ended): from then on its meta hash lives only as long as
its events.

READ answers a resume for several groups in one round trip and one snapshot. It returns
three strings per group (epoch, last offset, and the kept events after the client's
offset as `<offset> <length>\\n<payload>` one after the other) rather than the stream's
entries: parsing a hundred entries field by field cost the process several milliseconds.
The stream id to read from is written by the caller: Lua numbers are doubles, and one of
10^15 or more would be formatted `1e+15`, which is no stream id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from taxi_tornado.hub.history import HistoryLimits, Position, Replay, new_epoch, replay_from
from taxi_tornado.hub.keys import HubKeys

# KEYS: meta, stream, sizes. ARGV: channel, wire header, payload, size, ttl ms, meta ttl
# ms, epoch candidate, bytes, publish command (PUBLISH or SPUBLISH). Returns {offset,
# epoch, receivers}.
APPEND = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'ended', 'bytes')
local epoch = meta[1]
if not epoch then
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
if meta[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
local payload = ARGV[3]
local length = string.len(payload)
local limit = tonumber(ARGV[8])
if length > limit then
  redis.call('DEL', KEYS[2], KEYS[3])
else
  local kept = 0
  if redis.call('EXISTS', KEYS[3]) == 1 then
    kept = tonumber(meta[3] or '0')
  else
    redis.call('DEL', KEYS[2])
  end
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', KEYS[2], offset .. '-0', 't', ms, 'p', payload)
  local count = redis.call('RPUSH', KEYS[3], length)
  kept = kept + length
  local first = offset - count + 1
  while count > tonumber(ARGV[4]) or kept > limit do
    kept = kept - tonumber(redis.call('LPOP', KEYS[3]))
    count = count - 1
  end
  if offset - count + 1 > first then
    redis.call('XTRIM', KEYS[2], 'MINID', (offset - count + 1) .. '-0')
  end
  redis.call('HSET', KEYS[1], 'bytes', kept)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
local receivers = redis.call(ARGV[9], ARGV[1],
  ARGV[2] .. ' ' .. offset .. ' ' .. epoch .. '\\n' .. payload)
return {offset, epoch, receivers}
"""
APPEND_SHA = hashlib.sha1(APPEND.encode()).hexdigest()

# KEYS: meta. ARGV: ttl ms. A group unknown here (its history expired) stays unknown.
END = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'ended', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
"""
END_SHA = hashlib.sha1(END.encode()).hexdigest()
# The largest offset a group can reach (HINCRBY's); a client's offset past it is clamped,
# so that the stream id read from stays valid (and the resume is not recovered).
MAX_OFFSET = 2**63 - 1
# Groups in one READ call of several resumes (RedisBroker reads a loop turn's resumes
# together): each may read up to hub.history_bytes, and Redis does nothing else while
# the script runs.
MAX_READ_TOGETHER = 32

# KEYS: meta and stream of each group in turn. ARGV: the stream id to read from and the
# epoch the client holds, per group, then the history's size and ttl in ms. Returns
# {epoch, offset, events} per group; no events when the epochs differ (nothing can be
# replayed then, and a resume naming a made-up epoch reads nothing).
READ = """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  - tonumber(ARGV[#ARGV])
local size = ARGV[#ARGV - 1]
local out = {}
for i = 1, #KEYS, 2 do
  local meta = redis.call('HMGET', KEYS[i], 'epoch', 'offset')
  local parts = {}
  if meta[1] and meta[1] == ARGV[i + 1] then
    for _, entry in ipairs(redis.call('XRANGE', KEYS[i + 1], ARGV[i], '+', 'COUNT', size)) do
      local fields = entry[2]
      if tonumber(fields[2]) >= cutoff then
        local payload = fields[4]
        parts[#parts + 1] = string.match(entry[1], '^%d+') .. ' ' .. string.len(payload)
          .. '\\n' .. payload
      end
    end
  end
  out[#out + 1] = meta[1] or ''
  out[#out + 1] = meta[2] or '0'
  out[#out + 1] = table.concat(parts)
end
return out
"""


class RedisHistory:
    """The append command and the replay read for one deployment's keys."""

    def __init__(self, keys: HubKeys, limits: HistoryLimits) -> None:
        self.limits = limits
        self.keys = keys
        self._publish = "SPUBLISH" if keys.tagged else "PUBLISH"
        self._size = str(limits.size)
        self._ttl_ms = str(math.ceil(limits.ttl * 1000))
        self._meta_ttl_ms = str(math.ceil(limits.meta_ttl * 1000))
        self._bytes = str(limits.bytes)
        self._read: AsyncScript | None = None

    def append_arguments(
        self, group: str, channel: str, header: bytes, payload: bytes
    ) -> tuple[Any, ...]:
        """The arguments after the script (EVALSHA <sha> or EVAL <script>)."""
        keys = self.keys
        return (3, keys.meta(group), keys.stream(group), keys.sizes(group), channel, header,
                payload, self._size, self._ttl_ms, self._meta_ttl_ms, new_epoch(),
                self._bytes, self._publish)

    def end_arguments(self, group: str) -> tuple[Any, ...]:
        """The arguments of END after the script: its meta hash lives as its events."""
        return (1, self.keys.meta(group), self._ttl_ms)

    async def since(
        self, client: Redis | RedisCluster, positions: Mapping[str, Position]
    ) -> dict[str, Replay | None]:
        """Every group's replay, read with one script call (one round trip, one snapshot).
        In a Redis Cluster, the groups of one call must share a slot (one group each)."""
        replays = await self.read(client, list(positions.items()))
        return dict(zip(positions, replays, strict=True))

    async def read(
        self, client: Redis | RedisCluster, wanted: list[tuple[str, Position]]
    ) -> list[Replay | None]:
        """`since` for a list, in which a group may come more than once (several
        resumes read together), answered in its order."""
        keys: list[str] = []
        arguments: list[str] = []
        for group, position in wanted:
            keys += (self.keys.meta(group), self.keys.stream(group))
            arguments += (f"{min(position.offset, MAX_OFFSET) + 1}-0", position.epoch)
        if self._read is None:
            self._read = client.register_script(READ)  # EVALSHA; EVAL again on NOSCRIPT
        results = await self._read(keys=keys, args=[*arguments, self._size, self._ttl_ms],
                                   client=client)
        replays: list[Replay | None] = []
        for index, (_, position) in enumerate(wanted):
            epoch, top, events = results[3 * index:3 * index + 3]
            replays.append(replay_from(position, epoch.decode() or None, int(top),
                                       _events(events)))
        return replays


def _events(blob: bytes) -> list[tuple[int, bytes]]:
    """The (offset, payload) pairs READ wrote as `<offset> <length>\\n<payload>`..."""
    events = []
    at = 0
    while at < len(blob):
        newline = blob.index(b"\n", at)
        offset, length = blob[at:newline].split(b" ")
        end = newline + 1 + int(length)
        events.append((int(offset), blob[newline + 1:end]))
        at = end
    return events
