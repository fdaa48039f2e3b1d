/**
 * The rate formula of rate-state.ts in Lua, run inside Redis so every replica of one LIMITER_ID reads
 * and writes one state on one clock (Redis's TIME). Each function below mirrors the TypeScript function
 * of the same name; test/rate-formula.test.ts runs both on the same inputs (EVAL with an explicit clock)
 * and requires the same answers.
 *
 * Keys (one hash tag, so one Redis Cluster slot):
 *   KEYS[1] `ses-relay:{id}:rate`      hash: the RateState fields (level, at, f0, t0, last, hold, ...)
 *   KEYS[2] `ses-relay:{id}:inflight`  zset: transactions in flight, member `<replica>:<seq>:<recipients>`,
 *                                      score = when it stops counting unless renewed (Redis ms)
 *   KEYS[3] `ses-relay:{id}:pause`     hash: reason, since (delivery paused: daily quota, sending paused)
 *   KEYS[4] `ses-relay:{id}:paused`    list: `<since>:<until>` of past pauses (queue age exemption)
 *   KEYS[5] `ses-relay:{id}:probe`     string with PX: the one probe allowed per interval while paused
 *   KEYS[6] `ses-relay:{id}:tenant:<name>` hash with PX (take for a tenant only): `tat`, the tenant's
 *                                      rate_limit bucket as a GCRA time (tenant-bucket.ts has the
 *                                      arithmetic), and `f`, its finish tag on the weighted virtual clock
 *   KEYS[7] `ses-relay:{id}:waiting`       zset: tenants with a transaction waiting, score = its start tag
 *   KEYS[8] `ses-relay:{id}:waiting-seen`  zset: the same tenants, score = when one last asked (Redis ms)
 *   The virtual time itself is the field `vt` of KEYS[1].
 * ARGV: op, now ('' = Redis TIME), rate, burst, factor, recoveryMs, holdMs, debounceMs, repeatMs, floor,
 *   claimMs, inFlightTtlMs, then the op's arguments:
 *   take n id probe [tenantRate weight tenant waitingTtlMs] | finish n id refund | throttle | read | renew id... | pause reason probeMs | resume |
 *   probe ms
 * Returns (strings): status, waitMs, level, fraction, inFlight, hold, pauseReason, pauseSince, events,
 *   reports, reaction.
 */
export const RATE_LUA = `
local op = ARGV[1]
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local p = {
  rate = tonumber(ARGV[3]), burst = tonumber(ARGV[4]), factor = tonumber(ARGV[5]),
  recoveryMs = tonumber(ARGV[6]), holdMs = tonumber(ARGV[7]), debounceMs = tonumber(ARGV[8]),
  repeatMs = tonumber(ARGV[9]), floor = tonumber(ARGV[10]), claimMs = tonumber(ARGV[11])
}
local ttl = tonumber(ARGV[12])
local fmt = function(x) return string.format('%.17g', x) end

local h = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
local exists = #h > 0
local function num(k, d) local v = tonumber(s[k]); if v == nil then return d end; return v end
s.level = num('level', 0); s.at = num('at', now); s.f0 = num('f0', 1); s.t0 = num('t0', 0)
s.last = num('last', 0); s.hold = num('hold', 0); s.events = num('events', 0)
s.reports = num('reports', 0); s.claimN = num('claimN', 0); s.claimUntil = num('claimUntil', 0)
s.claimId = s.claimId or ''
s.vt = num('vt', 0)

local function slope()
  if p.recoveryMs > 0 then return (1 - p.factor) / p.recoveryMs end
  return math.huge
end

local function fraction(t)
  if s.f0 >= 1 or p.recoveryMs <= 0 then return 1 end
  return math.min(1, s.f0 + slope() * math.max(0, t - s.t0))
end

local function earned(from, to)
  local a = math.max(from, s.hold)
  local b = to
  if b <= a then return 0 end
  if s.f0 >= 1 or p.recoveryMs <= 0 then return p.rate * (b - a) / 1000 end
  local k = slope()
  local kink = s.t0 + (1 - s.f0) / k
  local total = 0
  if a < s.t0 then
    local e = math.min(b, s.t0)
    total = total + s.f0 * (e - a)
    a = e
  end
  if a < b and a < kink then
    local e = math.min(b, kink)
    local fa = s.f0 + k * (a - s.t0)
    local fe = s.f0 + k * (e - s.t0)
    total = total + (fa + fe) / 2 * (e - a)
    a = e
  end
  if a < b then total = total + (b - a) end
  return p.rate * total / 1000
end

local function refill(cap)
  if now > s.at then
    s.level = math.min(cap, s.level + earned(s.at, now))
    s.at = now
  else
    s.level = math.min(cap, s.level)
  end
end

-- Recipients in flight: every entry first (expired ones still held the cap until now), then the live ones.
local function inflightSum(min)
  local sum = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], min, '+inf')) do
    sum = sum + (tonumber(string.match(m, ':(%d+)$')) or 0)
  end
  return sum
end
refill(p.burst - inflightSum('-inf'))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(now))
local inflight = inflightSum('-inf')

local pauseReason = redis.call('HGET', KEYS[3], 'reason') or ''
local pauseSince = redis.call('HGET', KEYS[3], 'since') or '0'
local status = 'ok'
local waitMs = 0
local reaction = ''
local dirty = false

local function take(n, id, paused, probe)
  local cap = p.burst - inflight
  refill(cap)
  if paused and not probe then return 'paused', 0 end
  if now < s.hold then return 'wait', s.hold - now end
  local claimed = 0
  if s.claimId ~= '' and s.claimUntil > now and s.claimId ~= id then claimed = s.claimN end
  if s.level - claimed >= n - 1e-9 then
    s.level = s.level - n
    if s.claimId == id then s.claimId = ''; s.claimN = 0; s.claimUntil = 0 end
    return 'granted', 0
  end
  if s.claimId == '' or s.claimUntil <= now or s.claimId == id then
    s.claimId = id; s.claimN = n; s.claimUntil = now + p.claimMs
  end
  local need = n + claimed
  if cap < need then return 'wait', 20 end
  local perMs = p.rate * fraction(now) / 1000
  return 'wait', math.max(1, (need - s.level) / perMs)
end

local function finish(n, refund)
  refill(p.burst - inflight)
  if refund then s.level = math.min(p.burst - math.max(0, inflight - n), s.level + n) end
end

local function throttle()
  s.reports = s.reports + 1
  if s.last > 0 and now - s.last < p.debounceMs then return 'none' end
  local current = fraction(now)
  local repeated = current < 1 - 1e-9 or (s.last > 0 and now - s.last < p.repeatMs)
  refill(p.burst - inflight)
  s.level = 0
  s.hold = now + p.holdMs
  s.last = now
  s.events = s.events + 1
  if not repeated then return 'pause' end
  s.f0 = math.max(p.floor, current * p.factor)
  s.t0 = now + p.holdMs
  return 'decrease'
end

if op == 'take' then
  local n = tonumber(ARGV[13])
  -- For a tenant (KEYS[6]): first its own rate_limit (tenant-bucket.ts): at its limit, 'tenant' and nothing
  -- is taken. Then its weighted share across replicas (start-time fair queuing on one virtual clock): a
  -- tenant whose start tag is ahead of another waiting tenant's waits ('wait') for that one, unclaimed.
  local trate = tonumber(ARGV[16] or '')
  if trate ~= nil and trate <= 0 then trate = nil end
  local weight = tonumber(ARGV[17] or '')
  local tname = ARGV[18]
  local wttl = tonumber(ARGV[19] or '') or 300
  local fair = KEYS[6] ~= nil and KEYS[7] ~= nil and KEYS[8] ~= nil and weight ~= nil and weight > 0
    and tname ~= nil and tname ~= ''
  if KEYS[6] == nil then trate = nil end
  local tat, ftag, start = 0, 0, 0
  if trate ~= nil or fair then
    local th = redis.call('HMGET', KEYS[6], 'tat', 'f')
    tat = tonumber(th[1] or '0') or 0
    ftag = tonumber(th[2] or '0') or 0
  end
  local held = false
  if trate ~= nil then
    local cap = math.max(1, trate)
    local over = math.max(0, tat - now) - (cap - math.min(n, cap)) * 1000 / trate
    if over > 1e-9 then status = 'tenant'; waitMs = over; held = true end
  end
  if fair then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', '(' .. fmt(now - wttl))) do
      redis.call('ZREM', KEYS[7], m)
      redis.call('ZREM', KEYS[8], m)
    end
    if held then
      redis.call('ZREM', KEYS[7], tname)
      redis.call('ZREM', KEYS[8], tname)
    else
      start = math.max(s.vt, ftag)
      local known = tonumber(redis.call('ZSCORE', KEYS[7], tname) or '')
      if known ~= nil and known < start then start = known end
      redis.call('ZADD', KEYS[7], start, tname)
      redis.call('ZADD', KEYS[8], now, tname)
      local first = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
      if first[1] ~= tname and tonumber(first[2]) < start - 1e-9 then
        status = 'wait'; waitMs = 10; held = true
      end
    end
  end
  if not held then
    status, waitMs = take(n, ARGV[14], pauseReason ~= '', ARGV[15] == '1')
    if status == 'granted' then
      redis.call('ZADD', KEYS[2], now + ttl, ARGV[14])
      inflight = inflight + n
      if trate ~= nil then
        redis.call('HSET', KEYS[6], 'tat', fmt(math.max(tat, now) + n * 1000 / trate))
      end
      if fair then
        s.vt = math.max(s.vt, start)
        redis.call('HSET', KEYS[6], 'f', fmt(start + n / weight))
        redis.call('ZREM', KEYS[7], tname)
        redis.call('ZREM', KEYS[8], tname)
      end
      if trate ~= nil or fair then
        local keep = 86400000
        if trate ~= nil then keep = math.max(1, math.ceil(math.max(tat, now) - now + n * 1000 / trate)) + 60000 end
        redis.call('PEXPIRE', KEYS[6], keep)
      end
    end
  end
  if fair then
    redis.call('PEXPIRE', KEYS[7], 86400000)
    redis.call('PEXPIRE', KEYS[8], 86400000)
  end
  dirty = true
elseif op == 'finish' then
  local n = tonumber(ARGV[13])
  finish(n, ARGV[15] == '1')
  if redis.call('ZREM', KEYS[2], ARGV[14]) == 1 then inflight = inflight - n end
  dirty = true
elseif op == 'throttle' then
  reaction = throttle()
  dirty = true
elseif op == 'renew' then
  for i = 13, #ARGV do
    if redis.call('ZADD', KEYS[2], now + ttl, ARGV[i]) == 1 then
      inflight = inflight + (tonumber(string.match(ARGV[i], ':(%d+)$')) or 0)
    end
  end
  dirty = exists
elseif op == 'pause' then
  if pauseReason == '' then
    pauseReason = ARGV[13]
    pauseSince = fmt(now)
    redis.call('HSET', KEYS[3], 'reason', pauseReason, 'since', pauseSince)
    -- The first probe comes one interval after the pause began.
    redis.call('SET', KEYS[5], '1', 'PX', math.max(1, math.floor(tonumber(ARGV[14]) or 1)))
    status = 'changed'
  end
elseif op == 'resume' then
  if pauseReason ~= '' then
    redis.call('RPUSH', KEYS[4], pauseSince .. ':' .. fmt(now))
    redis.call('LTRIM', KEYS[4], -1000, -1)
    redis.call('DEL', KEYS[3])
    status = 'changed'
    pauseReason = ''
  end
elseif op == 'probe' then
  if redis.call('SET', KEYS[5], '1', 'NX', 'PX', math.max(1, math.floor(tonumber(ARGV[13])))) then
    status = 'claimed'
  end
end

if dirty or not exists then
  redis.call('HSET', KEYS[1], 'level', fmt(s.level), 'at', fmt(s.at), 'f0', fmt(s.f0), 't0', fmt(s.t0),
    'last', fmt(s.last), 'hold', fmt(s.hold), 'events', fmt(s.events), 'reports', fmt(s.reports),
    'claimId', s.claimId, 'claimN', fmt(s.claimN), 'claimUntil', fmt(s.claimUntil), 'vt', fmt(s.vt))
  redis.call('PEXPIRE', KEYS[1], 86400000)
  if inflight > 0 then redis.call('PEXPIRE', KEYS[2], ttl + 60000) end
end
return {status, fmt(waitMs), fmt(s.level), fmt(fraction(now)), fmt(inflight), fmt(s.hold), pauseReason,
  pauseSince, fmt(s.events), fmt(s.reports), reaction}
`;

/** The parsed answer of one script call. */
export interface RateReply {
  status: string;
  waitMs: number;
  level: number;
  fraction: number;
  inFlight: number;
  hold: number;
  pauseReason: string;
  pauseSince: number;
  events: number;
  reports: number;
  reaction: string;
}

export function parseRateReply(raw: unknown): RateReply {
  const r = raw as string[];
  return {
    status: String(r[0]),
    waitMs: Number(r[1]),
    level: Number(r[2]),
    fraction: Number(r[3]),
    inFlight: Number(r[4]),
    hold: Number(r[5]),
    pauseReason: String(r[6] ?? ''),
    pauseSince: Number(r[7]) || 0,
    events: Number(r[8]),
    reports: Number(r[9]),
    reaction: String(r[10] ?? ''),
  };
}
