"""The Lua scripts of `RedisRegistry`: each compare-and-set step on one user, atomically.

Every script touches one user's keys only — ``{prefix}{user}:session`` (a hash) and
``{prefix}{user}:rate`` (a list) — which share a hash tag, so each runs on one slot of a
Redis Cluster. Times come from the server's clock (``TIME``), so instances need not agree.

The rate list holds the times of the user's last messages. The owner counts them in its
own memory (every chat turn runs on the owner) and writes them here when the session
leaves it, so the next owner goes on counting; the list expires a minute after its last
message. The session hash holds ``sid`` (session id), ``st`` (started, ms), ``la`` (last activity,
ms), ``own`` (owning instance; empty while nobody owns it), ``ep`` (the owner's epoch,
bumped at every change of owner), ``end`` (the reason, while an end is under way), ``dc``
(why it will end, once its last connection closed) and per instance ``c:ID`` (connections
open there) and ``s:ID`` (SSE channels among them).

Most scripts answer ``{code, sid, st, la, own, connections, other instances with
connections, other instances with channels, extra, epoch}``.
"""

from __future__ import annotations

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function scan(key, me)
  local flat = redis.call('HGETALL', key)
  local rec, total, conns, chans = {}, 0, {}, {}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local kind, who = string.sub(f, 1, 2), string.sub(f, 3)
    if kind == 'c:' then
      local n = tonumber(v)
      total = total + n
      if n > 0 and who ~= me then table.insert(conns, who) end
    elseif kind == 's:' then
      if tonumber(v) > 0 and who ~= me then table.insert(chans, who) end
    else
      rec[f] = v
    end
  end
  return rec, total, conns, chans
end
local function reply(code, rec, total, conns, chans, extra)
  return {code, rec['sid'] or '', tostring(rec['st'] or 0), tostring(rec['la'] or 0),
          rec['own'] or '', total, table.concat(conns, ','), table.concat(chans, ','),
          extra or '', rec['ep'] or '0'}
end
-- The fencing token: at least the server's clock in ms and always past the last one, so
-- it grows for a user across owners, sessions and a Redis that lost its data.
local function next_epoch(previous, now)
  return string.format('%d', math.max(now, tonumber(previous or '0') + 1))
end
local function take(key, rec, me, now)
  rec['own'], rec['ep'] = me, next_epoch(rec['ep'], now)
  redis.call('HSET', key, 'own', me, 'ep', rec['ep'])
end
local function create(key, me, sid, now)
  redis.call('HSET', key, 'sid', sid, 'st', now, 'la', now, 'own', me, 'ep', next_epoch('0', now))
end
local function active(key)
  return redis.call('HEXISTS', key, 'sid') == 1
end
"""

# KEYS: session. ARGV: me, new session id, connect (1/0), limit, channel (1/0).
# Codes: 1 started, 0 existed, -3 over the connection limit, -5 an end is under way.
OPEN = (
    _COMMON
    + """
local me, now, created = ARGV[1], now_ms(), 0
if not active(KEYS[1]) then
  create(KEYS[1], me, ARGV[2], now)
  created = 1
end
local rec, total, conns, chans = scan(KEYS[1], me)
if rec['end'] then return reply(-5, rec, total, conns, chans) end
if ARGV[3] == '1' then
  local limit = tonumber(ARGV[4])
  if limit > 0 and total >= limit then return reply(-3, rec, total, conns, chans) end
  redis.call('HINCRBY', KEYS[1], 'c:' .. me, 1)
  if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 's:' .. me, 1) end
  redis.call('HDEL', KEYS[1], 'dc')
  total = total + 1
end
redis.call('HSET', KEYS[1], 'la', now)
rec['la'] = now
return reply(created, rec, total, conns, chans)
"""
)

# KEYS: session. ARGV: me, new session id, create (1/0), dead owner to take from ('' none).
# Codes: 0 no session, 1 started here, 2 owned here already, 3 taken over (moved here),
# -4 owned by a live instance (``own``), -5 an end is under way.
CLAIM = (
    _COMMON
    + """
local me, now = ARGV[1], now_ms()
if not active(KEYS[1]) then
  if ARGV[3] ~= '1' then return {0} end
  create(KEYS[1], me, ARGV[2], now)
  local rec, total, conns, chans = scan(KEYS[1], me)
  return reply(1, rec, total, conns, chans)
end
local rec, total, conns, chans = scan(KEYS[1], me)
if rec['end'] then return reply(-5, rec, total, conns, chans) end
local own = rec['own'] or ''
if own == me then return reply(2, rec, total, conns, chans) end
if own == '' or own == ARGV[4] then
  take(KEYS[1], rec, me, now)
  return reply(3, rec, total, conns, chans)
end
return reply(-4, rec, total, conns, chans)
"""
)

# KEYS: session. ARGV: me, the instance to hand it to ('' for whoever claims it next).
RELEASE = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], 'own') ~= ARGV[1] then return 0 end
local previous = redis.call('HGET', KEYS[1], 'ep')
redis.call('HSET', KEYS[1], 'own', ARGV[2], 'ep', next_epoch(previous, now_ms()))
return 1
"""
)

# KEYS: session. Marks it active now; 0 if there is no session.
TOUCH = (
    _COMMON
    + """
if not active(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], 'la', now_ms())
return 1
"""
)

# KEYS: session. ARGV: me. Marks the owner's session active now and answers the route.
# Codes: 1 go on (with the route), -1 no session, -2 owned elsewhere.
TURN = (
    _COMMON
    + """
local me, now = ARGV[1], now_ms()
local own = redis.call('HGET', KEYS[1], 'own')
if not own then return {-1} end
if own ~= me then return {-2} end
redis.call('HSET', KEYS[1], 'la', now)
local rec, total, conns, chans = scan(KEYS[1], me)
return reply(1, rec, total, conns, chans)
"""
)

# KEYS: session. ARGV: me, reason, timeout ms (-1: none), unconnected (1/0).
# Codes: 1 go on, 0 no session, -2 owned elsewhere, -3 connections are open, -4 active
# since (extra: last activity, ms).
BEGIN_END = (
    _COMMON
    + """
local me, now = ARGV[1], now_ms()
local rec, total, conns, chans = scan(KEYS[1], me)
if not rec['sid'] then return {0} end
if rec['own'] ~= me then return reply(-2, rec, total, conns, chans) end
if ARGV[4] == '1' then
  local open = total
  if ARGV[2] == 'shutdown' then open = #conns end
  if open > 0 then return reply(-3, rec, total, conns, chans) end
end
local timeout = tonumber(ARGV[3])
if timeout >= 0 and now - tonumber(rec['la']) < timeout then
  return reply(-4, rec, total, conns, chans, rec['la'])
end
redis.call('HSET', KEYS[1], 'end', ARGV[2])
return reply(1, rec, total, conns, chans)
"""
)

# KEYS: session, rate. ARGV: me. Codes: 1 forgotten (with the route), -2 owned elsewhere.
# The rate window (the user's, not the session's) is kept.
FINISH_END = (
    _COMMON
    + """
local rec, total, conns, chans = scan(KEYS[1], ARGV[1])
if rec['own'] ~= ARGV[1] then return reply(-2, rec, total, conns, chans) end
if total > 0 then
  redis.call('HDEL', KEYS[1], 'sid', 'st', 'la', 'own', 'ep', 'end', 'dc')
else
  redis.call('DEL', KEYS[1])
end
return reply(1, rec, total, conns, chans)
"""
)

# KEYS: session. ARGV: me.
ABORT_END = """
if redis.call('HGET', KEYS[1], 'own') == ARGV[1] then redis.call('HDEL', KEYS[1], 'end') end
return 1
"""

# KEYS: session. ARGV: me, channel (1/0), failed (1/0). Codes: 0 no session, 1 counted.
CLOSE = (
    _COMMON
    + """
local me = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HINCRBY', KEYS[1], 'c:' .. me, -1) <= 0 then
  redis.call('HDEL', KEYS[1], 'c:' .. me)
end
if ARGV[2] == '1' and redis.call('HINCRBY', KEYS[1], 's:' .. me, -1) <= 0 then
  redis.call('HDEL', KEYS[1], 's:' .. me)
end
local rec, total, conns, chans = scan(KEYS[1], me)
if not rec['sid'] then
  if total == 0 then redis.call('DEL', KEYS[1]) end
  return {0}
end
if total == 0 then
  local why = 'disconnect'
  if ARGV[3] == '1' then why = 'error' end
  redis.call('HSET', KEYS[1], 'dc', why, 'la', now_ms())
end
return reply(1, rec, total, conns, chans)
"""
)

# KEYS: session. ARGV: the dead instance, me. Drops the dead instance's connections and
# takes the session over if it owned it (or nobody did). Codes: 0 no session, 1 taken
# over, 2 left with its owner. extra: "dc|end" (why it will end | the end under way).
REAP = (
    _COMMON
    + """
local dead, me = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local had = tonumber(redis.call('HGET', KEYS[1], 'c:' .. dead) or '0')
redis.call('HDEL', KEYS[1], 'c:' .. dead, 's:' .. dead)
local rec, total, conns, chans = scan(KEYS[1], me)
if not rec['sid'] then
  if total == 0 then redis.call('DEL', KEYS[1]) end
  return {0}
end
if total == 0 and had > 0 then
  redis.call('HSET', KEYS[1], 'dc', 'error')
  rec['dc'] = 'error'
end
local code = 2
if rec['own'] == dead or rec['own'] == '' then
  take(KEYS[1], rec, me, now_ms())
  code = 1
end
return reply(code, rec, total, conns, chans, (rec['dc'] or '') .. '|' .. (rec['end'] or ''))
"""
)

# KEYS: session. ARGV: me, session id, started ms, own (1/0), connections here, channels
# here. Puts back what this instance holds after Redis lost it (or took it for dead).
# ARGV[7]: the epoch this instance owns it at. Codes: 1 put back, -1 another session (or
# owner, or a newer epoch) is there now.
RESTORE = (
    _COMMON
    + """
local me, now = ARGV[1], now_ms()
if ARGV[4] == '1' then
  local sid = redis.call('HGET', KEYS[1], 'sid')
  if not sid then
    redis.call('HSET', KEYS[1], 'sid', ARGV[2], 'st', ARGV[3], 'la', now, 'own', me, 'ep', ARGV[7])
  elseif sid ~= ARGV[2] then
    return -1
  else
    local own = redis.call('HGET', KEYS[1], 'own')
    if own ~= me and own ~= '' then return -1 end
    if tonumber(redis.call('HGET', KEYS[1], 'ep') or '0') > tonumber(ARGV[7]) then return -1 end
    redis.call('HSET', KEYS[1], 'own', me, 'ep', ARGV[7])
  end
end
if tonumber(ARGV[5]) > 0 then
  redis.call('HSET', KEYS[1], 'c:' .. me, ARGV[5])
  redis.call('HDEL', KEYS[1], 'dc')
else
  redis.call('HDEL', KEYS[1], 'c:' .. me)
end
if tonumber(ARGV[6]) > 0 then redis.call('HSET', KEYS[1], 's:' .. me, ARGV[6])
else redis.call('HDEL', KEYS[1], 's:' .. me) end
return 1
"""
)

# KEYS: session. ARGV: me. This instance leaves: its connections stop counting.
LEAVE = (
    _COMMON
    + """
local me = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'c:' .. me, 's:' .. me)
local rec, total, conns, chans = scan(KEYS[1], me)
if total == 0 then
  if not rec['sid'] then redis.call('DEL', KEYS[1])
  else redis.call('HSET', KEYS[1], 'dc', 'disconnect', 'la', now_ms()) end
end
return 1
"""
)
