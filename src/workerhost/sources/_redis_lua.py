"""The Lua scripts behind the Redis source: every state change is one atomic step.

Redis runs a script to completion before any other command, so "check the
entry is still ours, ack it, and record what happened" cannot interleave
with another supervisor's reclaim. Keys built inside a script (``PROMOTE``,
which moves due retries back to their task type's stream) make these scripts
single-node only: Redis Cluster is not supported.

Key layout under a ``prefix`` (see :class:`workerhost.sources.redis.Keys`)::

    {prefix}:stream:{type}   work stream of one task type (consumer group "{prefix}")
    {prefix}:task:{id}       hash: id type params status attempts result error progress ...
    {prefix}:delayed         sorted set: task wire JSON scored by due time (ms since epoch)
    {prefix}:dead            stream: dead letters (id, task, error, status, failed_at)
    {prefix}:dedupe:{key}    string: the task id a dedupe key maps to
"""

from __future__ import annotations

#: Enqueue one task. KEYS: stream, task hash[, dedupe key].
#: ARGV: id, wire, type, params, now, dedupe ttl. Returns the id (the old one on a dedupe hit).
SUBMIT = """
if #KEYS == 3 then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[6])
end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'type', ARGV[3], 'params', ARGV[4], 'status', 'pending',
           'attempts', 0, 'created_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('XADD', KEYS[1], '*', 'task', ARGV[2])
return ARGV[1]
"""

#: Mark claimed tasks, unless another supervisor already finished them (a late
#: reclaim racing a completion must not flip "completed" back to "claimed").
#: KEYS: task hashes. ARGV: consumer, now, then one attempt number per key.
MARK_CLAIMED = """
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status ~= 'completed' and status ~= 'dead' then
    redis.call('HSET', key, 'status', 'claimed', 'attempts', ARGV[i + 2], 'claimed_by', ARGV[1],
               'updated_at', ARGV[2])
  end
end
return #KEYS
"""

#: Finish one claimed entry. KEYS: stream, task hash, delayed zset, dead stream.
#: ARGV: group, entry id, consumer, mode, now (s), now (ms), result ttl, dead maxlen, then per mode:
#:   complete: result JSON            retry: next wire, due (ms), error JSON
#:   fail: wire, error JSON, task id, status (dead|failed)     release: wire
#: Returns 1 done, 0 the entry was already finished, -1 another consumer holds it now.
FINISH = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then return 0 end
local mode = ARGV[4]
-- A completion is kept even from a supervisor whose lease ran out (the work is
-- done; at-least-once allows the duplicate); any other verdict belongs to the
-- consumer that holds the entry now.
if pending[1][2] ~= ARGV[3] and mode ~= 'complete' then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if mode == 'complete' then
  redis.call('HSET', KEYS[2], 'status', 'completed', 'result', ARGV[9], 'updated_at', ARGV[5])
  redis.call('HDEL', KEYS[2], 'error', 'not_before')
  redis.call('EXPIRE', KEYS[2], ARGV[7])
elseif mode == 'retry' then
  redis.call('HSET', KEYS[2], 'error', ARGV[11], 'updated_at', ARGV[5])
  if tonumber(ARGV[10]) <= tonumber(ARGV[6]) then
    redis.call('XADD', KEYS[1], '*', 'task', ARGV[9])
    redis.call('HSET', KEYS[2], 'status', 'pending')
  else
    redis.call('ZADD', KEYS[3], ARGV[10], ARGV[9])
    redis.call('HSET', KEYS[2], 'status', 'delayed', 'not_before', ARGV[10])
  end
elseif mode == 'fail' then
  local dead_id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'id', ARGV[11],
                             'task', ARGV[9], 'error', ARGV[10], 'status', ARGV[12], 'failed_at', ARGV[5])
  redis.call('HSET', KEYS[2], 'status', ARGV[12], 'error', ARGV[10], 'dead_entry', dead_id, 'updated_at', ARGV[5])
elseif mode == 'release' then
  redis.call('XADD', KEYS[1], '*', 'task', ARGV[9])
  redis.call('HSET', KEYS[2], 'status', 'pending', 'updated_at', ARGV[5])
end
return 1
"""

#: Move due delayed retries back to their streams. KEYS: delayed zset.
#: ARGV: now (ms), max to move, key prefix, now (s). Returns how many moved.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, wire in ipairs(due) do
  local task = cjson.decode(wire)
  redis.call('XADD', ARGV[3] .. ':stream:' .. task['type'], '*', 'task', wire)
  redis.call('HSET', ARGV[3] .. ':task:' .. task['id'], 'status', 'pending', 'updated_at', ARGV[4])
  redis.call('HDEL', ARGV[3] .. ':task:' .. task['id'], 'not_before')
  redis.call('ZREM', KEYS[1], wire)
end
return #due
"""

#: Keep our leases alive: reset the idle time of entries this consumer still
#: holds. KEYS: stream. ARGV: group, consumer, entry ids. Returns the ids that
#: another consumer took over (an entry no longer pending was just finished: skipped).
REFRESH = """
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 1 then
    if pending[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      table.insert(lost, ARGV[i])
    end
  end
end
return lost
"""

#: Put a dead letter back to work. KEYS: dead stream, work stream, task hash.
#: ARGV: dead entry id, new wire, attempt, now. Returns 1, or 0 if it was already requeued.
REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'task', ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'pending', 'updated_at', ARGV[4])
redis.call('HDEL', KEYS[3], 'dead_entry')
return 1
"""

#: Forget consumers that hold nothing and have been idle long (supervisors that
#: died; their entries were reclaimed). Atomic, so a consumer that just claimed
#: something is never dropped with its pending entries. KEYS: stream.
#: ARGV: group, min idle (ms), a consumer to keep. Returns how many were removed.
PRUNE = """
local removed = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c['name'] ~= ARGV[3] and tonumber(c['pending']) == 0 and tonumber(c['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed = removed + 1
  end
end
return removed
"""
