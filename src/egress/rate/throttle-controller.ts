/**
 * How fast we may send after SES said `454 Throttling failure`: the effective rate drops to
 * `rate * factor` (repeated 454s compound, never below `floorFraction` of the rate; 454s arriving together
 * within `compoundAfterMs` count once) and then climbs back
 * linearly to the full rate over `recoveryMs` without new throttling replies.
 *
 * Pure arithmetic over a clock, shared by the in-process limiter (local-limiter.ts) and the Redis one.
 */

/** Throttling never slows the rate below this fraction of SES_RATE_LIMIT (local and shared limiters). */
export const THROTTLE_FLOOR_FRACTION = 0.05;

export interface ThrottleControllerOptions {
  /** Configured recipients per second. */
  rate: number;
  /** Fraction of the current rate kept after each 454 (0 < factor < 1). */
  factor: number;
  /** Time to recover linearly from the lowered rate to the full rate. */
  recoveryMs: number;
  /** Lowest fraction of the rate we ever slow down to (default 5 %). */
  floorFraction?: number;
  /**
   * 454s within this time of the last slow-down do not lower the rate again (default 1 s): the
   * transactions in flight when SES started throttling all fail together, which is one event.
   */
  compoundAfterMs?: number;
}

export class ThrottleController {
  readonly rate: number;
  private readonly factor: number;
  private readonly recoveryMs: number;
  private readonly floorFraction: number;
  /** Fraction of the rate right after the last 454, and when that was. */
  private level = 1;
  private since = 0;
  private throttleCount = 0;
  private readonly compoundAfterMs: number;

  constructor(options: ThrottleControllerOptions) {
    if (!(options.rate > 0)) throw new RangeError('rate must be > 0');
    if (!(options.factor > 0 && options.factor < 1)) throw new RangeError('factor must be in (0, 1)');
    this.rate = options.rate;
    this.factor = options.factor;
    this.recoveryMs = Math.max(0, options.recoveryMs);
    this.floorFraction = Math.min(1, Math.max(0.001, options.floorFraction ?? THROTTLE_FLOOR_FRACTION));
    this.compoundAfterMs = Math.max(0, options.compoundAfterMs ?? 1000);
  }

  /** Fraction of the full rate allowed at `now` (1 when not throttled). */
  fraction(now: number): number {
    if (this.level >= 1) return 1;
    if (this.recoveryMs === 0) return 1;
    const elapsed = Math.max(0, now - this.since);
    return Math.min(1, this.level + ((1 - this.level) * elapsed) / this.recoveryMs);
  }

  /** Recipients per second allowed at `now`. */
  effectiveRate(now: number): number {
    return this.rate * this.fraction(now);
  }

  /**
   * Tokens earned between `from` and `to` (ms). The fraction is piecewise linear (rising, then flat),
   * so the trapezoid over short steps is exact on the ramp and never overestimates at the kink.
   */
  tokensBetween(from: number, to: number): number {
    if (to <= from) return 0;
    return (((this.effectiveRate(from) + this.effectiveRate(to)) / 2) * (to - from)) / 1000;
  }

  /** A 454 arrived at `now`: lower the rate (compounding) and restart the recovery. Returns the new rate. */
  throttled(now: number): number {
    this.throttleCount++;
    const current = this.fraction(now);
    if (this.throttleCount > 1 && now - this.since < this.compoundAfterMs) {
      // Same overload event: keep the current (already lowered) rate, restart its recovery.
      this.level = current;
      this.since = now;
      return this.rate * current;
    }
    const next = Math.max(this.floorFraction, current * this.factor);
    this.level = next;
    this.since = now;
    return this.rate * next;
  }

  /** Number of 454s seen (for logs). */
  get throttles(): number {
    return this.throttleCount;
  }
}
