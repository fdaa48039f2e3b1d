/**
 * The rate formula: one token bucket counted in recipients, and SES's throttling feedback on it. Pure
 * arithmetic over a state and a clock, evaluated here for the in-process back end (local-backend.ts) and,
 * line for line the same, in Lua inside Redis for the shared one (redis-rate-script.ts); the two are
 * run on the same inputs and compared in test/rate-formula.test.ts.
 *
 * Tokens
 * - The bucket refills at `rate × fraction(t)` (fraction: the AIMD share below), holds at most
 *   `burst − inFlight` and starts EMPTY when nothing is known about what was sent before.
 * - A transaction takes its recipients' tokens when admitted and counts as in flight until SES answered
 *   it. The bucket's cap leaves room for what is in flight: level + inFlight <= burst at all times.
 *   Why: SES counts a transaction when it ARRIVES (end of DATA), somewhere between our grant and its
 *   answer, and the delay varies (a new connection's TCP + STARTTLS + AUTH, a big body on a slow link).
 *   A plain bucket lets tokens refill while earlier grants are still on their way, so arrivals can bunch
 *   above SES's bucket (measured: 426-476 recipients in SES's first second against 400 at 200/s; 51-52
 *   against 50 with three replicas). With the in-flight cap, SES's bucket always holds at least
 *   level + inFlight of ours whenever both run at the same rate with SES's bucket at least as deep
 *   (it refills the same, and each arrival takes from SES exactly what its grant moved from `level` to
 *   in flight), so whatever the delays, no transaction arrives at a bucket that cannot take it.
 * - The oldest waiting transaction may claim its tokens (`claim`): others are admitted only from what is
 *   left above the claim, so a 50-recipient transaction is not starved by a stream of small ones from
 *   other replicas. A claim lapses `claimMs` after its holder last asked.
 *
 * Throttle reaction (a 454 Throttling failure, or the API's TooManyRequestsException)
 * - 454s within `debounceMs` of the last accepted one are the same event: transactions that were on the
 *   wire before the reaction could take effect. They are counted and change nothing.
 * - An ISOLATED 454 (at the full rate, none in the last `repeatMs`) means SES's bucket ran dry after a
 *   burst: the bucket is drained and stays empty for `holdMs` (SES's refills meanwhile), then sending
 *   continues at the full rate.
 * - A REPEATED 454 (another within `repeatMs`, or while below the full rate) means the rate is above what
 *   SES grants: the fraction is multiplied by `factor` (never below `floor`), the bucket is drained and
 *   held as above, and from the end of the hold the fraction climbs back linearly by `(1 − factor)` per
 *   `recoveryMs` until it reaches the configured rate again: AIMD, so the rate settles just under SES's.
 */

/** Throttling never slows the rate below this fraction of SES_RATE_LIMIT. */
export const THROTTLE_FLOOR_FRACTION = 0.05;

export interface RateParams {
  /** Recipients per second at fraction 1 (SES_RATE_LIMIT). */
  rate: number;
  /** Bucket depth in recipients (SES_BURST). */
  burst: number;
  /** Multiplicative decrease on a repeated 454 (SES_THROTTLE_FACTOR, 0 < factor < 1). */
  factor: number;
  /** Time the additive increase takes to climb back by (1 − factor) of the rate (SES_THROTTLE_RECOVERY). */
  recoveryMs: number;
  /** How long the bucket stays empty after a 454 (SES_THROTTLE_PAUSE). */
  holdMs: number;
  /** 454s this close to the last accepted one are the same event. */
  debounceMs: number;
  /** A 454 this close to the previous accepted one is "repeated". */
  repeatMs: number;
  /** Lowest fraction of the rate. */
  floor: number;
  /** A waiting transaction's claim on the tokens lapses this long after it last asked. */
  claimMs: number;
}

export const DEFAULT_REACTION = {
  debounceMs: 1000,
  repeatMs: 10_000,
  floor: THROTTLE_FLOOR_FRACTION,
  claimMs: 1000,
} as const;

export interface RateState {
  /** Tokens at `at` (may be negative only transiently when the in-flight count rose by a renewal). */
  level: number;
  at: number;
  /** AIMD: the fraction was f0 at t0 and climbs from there. */
  f0: number;
  t0: number;
  /** Time of the last accepted 454 event (0: none). */
  last: number;
  /** No tokens accrue and nothing is admitted before this time (the hold after a 454). */
  hold: number;
  /** Accepted 454 events and all 454 reports (for logs and metrics). */
  events: number;
  reports: number;
  /** The oldest waiting transaction's claim: its id, recipients, and until when it holds. */
  claimId: string;
  claimN: number;
  claimUntil: number;
}

export function emptyState(now: number): RateState {
  return {
    level: 0,
    at: now,
    f0: 1,
    t0: 0,
    last: 0,
    hold: 0,
    events: 0,
    reports: 0,
    claimId: '',
    claimN: 0,
    claimUntil: 0,
  };
}

/** Per-ms increase of the fraction (Infinity when recovery is instant). */
function slope(p: RateParams): number {
  return p.recoveryMs > 0 ? (1 - p.factor) / p.recoveryMs : Infinity;
}

/** Share of the configured rate allowed at `now` (1 when not throttled). */
export function fraction(s: RateState, p: RateParams, now: number): number {
  if (s.f0 >= 1 || p.recoveryMs <= 0) return 1;
  return Math.min(1, s.f0 + slope(p) * Math.max(0, now - s.t0));
}

/**
 * Tokens earned over [a, b]: rate × ∫ fraction, nothing before the hold ends. The fraction is flat at f0
 * until t0, rises linearly, then flat at 1, so each piece is integrated exactly.
 */
export function earned(s: RateState, p: RateParams, from: number, to: number): number {
  let a = Math.max(from, s.hold);
  const b = to;
  if (b <= a) return 0;
  if (s.f0 >= 1 || p.recoveryMs <= 0) return (p.rate * (b - a)) / 1000;
  const k = slope(p);
  const kink = s.t0 + (1 - s.f0) / k;
  let total = 0;
  if (a < s.t0) {
    const e = Math.min(b, s.t0);
    total += s.f0 * (e - a);
    a = e;
  }
  if (a < b && a < kink) {
    const e = Math.min(b, kink);
    const fa = s.f0 + k * (a - s.t0);
    const fe = s.f0 + k * (e - s.t0);
    total += ((fa + fe) / 2) * (e - a);
    a = e;
  }
  if (a < b) total += b - a;
  return (p.rate * total) / 1000;
}

/** Bring the level up to `now`, never above `cap` (burst − in flight). */
export function refill(s: RateState, p: RateParams, now: number, cap: number): void {
  if (now > s.at) {
    s.level = Math.min(cap, s.level + earned(s, p, s.at, now));
    s.at = now;
  } else {
    s.level = Math.min(cap, s.level);
  }
}

export type TakeStatus = 'granted' | 'wait' | 'paused';

export interface TakeResult {
  status: TakeStatus;
  /** For `wait`: how long until it may fit (ms; an estimate, ask again then). */
  waitMs: number;
}

/** Waiting for in-flight transactions to finish: ask again this soon. */
export const INFLIGHT_POLL_MS = 20;

/**
 * Try to admit `n` recipients for transaction `id`. `inFlight` counts recipients in flight before this
 * one; on `granted` the caller counts this one in flight too. `paused`: delivery is paused (daily quota,
 * sending paused); only a `probe` passes.
 */
export function take(
  s: RateState,
  p: RateParams,
  now: number,
  n: number,
  id: string,
  inFlight: number,
  paused: boolean,
  probe: boolean,
): TakeResult {
  const cap = p.burst - inFlight;
  refill(s, p, now, cap);
  if (paused && !probe) return { status: 'paused', waitMs: 0 };
  if (now < s.hold) return { status: 'wait', waitMs: s.hold - now };
  const claimed = s.claimId !== '' && s.claimUntil > now && s.claimId !== id ? s.claimN : 0;
  if (s.level - claimed >= n - 1e-9) {
    s.level -= n;
    if (s.claimId === id) {
      s.claimId = '';
      s.claimN = 0;
      s.claimUntil = 0;
    }
    return { status: 'granted', waitMs: 0 };
  }
  if (s.claimId === '' || s.claimUntil <= now || s.claimId === id) {
    s.claimId = id;
    s.claimN = n;
    s.claimUntil = now + p.claimMs;
  }
  const need = n + claimed;
  if (cap < need) return { status: 'wait', waitMs: INFLIGHT_POLL_MS };
  const perMs = (p.rate * fraction(s, p, now)) / 1000;
  return { status: 'wait', waitMs: Math.max(1, (need - s.level) / perMs) };
}

/**
 * A transaction of `n` recipients finished (`inFlight` still counts it). `refund`: nothing was sent, its
 * tokens go back to the bucket.
 */
export function finish(
  s: RateState,
  p: RateParams,
  now: number,
  n: number,
  inFlight: number,
  refund: boolean,
): void {
  refill(s, p, now, p.burst - inFlight);
  if (refund) s.level = Math.min(p.burst - Math.max(0, inFlight - n), s.level + n);
}

export type Reaction = 'none' | 'pause' | 'decrease';

export interface ThrottleResult {
  reaction: Reaction;
  /** The fraction of the rate from now on (after the hold). */
  fraction: number;
}

/** SES answered 454 Throttling failure at `now`: react (see the file comment). */
export function throttle(s: RateState, p: RateParams, now: number, inFlight: number): ThrottleResult {
  s.reports += 1;
  if (s.last > 0 && now - s.last < p.debounceMs) {
    return { reaction: 'none', fraction: fraction(s, p, now) };
  }
  const current = fraction(s, p, now);
  const repeated = current < 1 - 1e-9 || (s.last > 0 && now - s.last < p.repeatMs);
  refill(s, p, now, p.burst - inFlight);
  s.level = 0;
  s.hold = now + p.holdMs;
  s.last = now;
  s.events += 1;
  if (!repeated) return { reaction: 'pause', fraction: current };
  s.f0 = Math.max(p.floor, current * p.factor);
  s.t0 = now + p.holdMs;
  return { reaction: 'decrease', fraction: s.f0 };
}
