/**
 * The SES slow-down shared by every replica of one limiter id: a small Redis hash
 * `ses-relay:{<limiterId>}:throttle` with the fraction of the rate kept right after the last
 * `454 Throttling failure` (`level`) and when that was (`at`, Redis server time in ms).
 *
 * The arithmetic is the one of ThrottleController (throttle-controller.ts), evaluated inside Redis so all
 * replicas read one clock: the fraction drops to `current * factor` on a 454 (compounding, never below
 * FLOOR_FRACTION) and climbs back linearly to 1 over `recoveryMs`. 454s arriving within `debounceMs` of the
 * last accepted one are counted but do not compound again: they are answers to sends that were already on
 * the wire before the first slow-down could take effect (several replicas see them at once).
 */
import type Redis from 'ioredis';
import { THROTTLE_FLOOR_FRACTION } from './throttle-controller';

/** Same default floor as ThrottleController. */
export const FLOOR_FRACTION = THROTTLE_FLOOR_FRACTION;

/** KEYS[1] hash; ARGV: mode ('read'|'throttle'), factor, recoveryMs, floor, debounceMs. Returns {fraction, changed, at}. */
const THROTTLE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local factor = tonumber(ARGV[2])
local recovery = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local debounce = tonumber(ARGV[5])
local level = tonumber(redis.call('HGET', KEYS[1], 'level'))
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
local fraction = 1
if level ~= nil and at ~= nil and level < 1 and recovery > 0 then
  fraction = math.min(1, level + (1 - level) * math.max(0, now - at) / recovery)
end
if mode == 'throttle' then
  if at ~= nil and now - at < debounce then
    return {tostring(fraction), 0, tostring(at)}
  end
  local nextLevel = math.max(floor, fraction * factor)
  redis.call('HSET', KEYS[1], 'level', tostring(nextLevel), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], recovery + 60000)
  return {tostring(nextLevel), 1, tostring(now)}
end
return {tostring(fraction), 0, tostring(at or 0)}
`;

export interface ThrottleReading {
  /** Fraction of the configured rate allowed now (1 = not throttled). */
  fraction: number;
  /** True when this call lowered the shared rate (not debounced). */
  changed: boolean;
  /** Redis time (ms) of the last accepted slow-down, 0 if none. */
  at: number;
}

export interface SharedThrottleOptions {
  limiterId: string;
  factor: number;
  recoveryMs: number;
  /** 454s within this long after an accepted one do not compound (default 1000 ms). */
  debounceMs?: number;
}

type ThrottleCommand = (key: string, ...args: string[]) => Promise<[string, number, string]>;

export class SharedThrottle {
  readonly key: string;
  private readonly args: (mode: string) => string[];

  constructor(
    private readonly client: Redis,
    options: SharedThrottleOptions,
  ) {
    // The hash tag keeps the key in one slot with nothing else needed (Redis Cluster friendly).
    this.key = `ses-relay:{${options.limiterId}}:throttle`;
    const common = [
      String(options.factor),
      String(Math.max(0, options.recoveryMs)),
      String(FLOOR_FRACTION),
      String(options.debounceMs ?? 1000),
    ];
    this.args = (mode) => [mode, ...common];
    if (!(client as unknown as { sesRelayThrottle?: unknown }).sesRelayThrottle) {
      client.defineCommand('sesRelayThrottle', { numberOfKeys: 1, lua: THROTTLE_LUA });
    }
  }

  private run(mode: 'read' | 'throttle'): Promise<ThrottleReading> {
    const cmd = (this.client as unknown as { sesRelayThrottle: ThrottleCommand }).sesRelayThrottle.bind(
      this.client,
    );
    return cmd(this.key, ...this.args(mode)).then(([fraction, changed, at]) => ({
      fraction: Math.min(1, Math.max(FLOOR_FRACTION, Number(fraction))),
      changed: Number(changed) === 1,
      at: Number(at) || 0,
    }));
  }

  /** The current shared fraction (also a cheap health probe of the connection). */
  read(): Promise<ThrottleReading> {
    return this.run('read');
  }

  /** Report a 454: lowers the shared rate unless another replica just did. */
  throttle(): Promise<ThrottleReading> {
    return this.run('throttle');
  }
}
