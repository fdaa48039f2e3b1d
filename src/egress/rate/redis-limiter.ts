/**
 * The recipient limiter shared by every replica through Redis (REDIS_URL set): Bottleneck in clustering
 * mode (`datastore: 'ioredis'`), one shared reservoir per LIMITER_ID counted in recipients. The reservoir
 * is the token bucket: `burst` deep (reservoirIncreaseMaximum), refilled by Bottleneck's Lua
 * (process_tick.lua) with `reservoirIncreaseAmount` per `reservoirIncreaseInterval`. The Lua computes the
 * number of whole intervals from the elapsed time and advances `lastReservoirIncrease` by exactly that
 * many intervals, so a late heartbeat loses no tokens; the heartbeat only decides how soon a waiting
 * replica notices new tokens (see docs/scale-out.md for the measurements behind the defaults).
 *
 * Over any window of W seconds the replicas together are granted at most
 * burst + rate * W + (one increase amount); the increase amount is kept at <= 0.25 recipient.
 *
 * SES throttling is shared (redis-shared-throttle.ts): a 454 seen by any replica lowers the shared
 * fraction in Redis and empties the shared reservoir; every replica polls the fraction and writes the
 * matching reservoirIncreaseAmount while the rate recovers.
 *
 * Redis unreachable: nothing is granted. acquire() rejects at once with LimiterUnavailableError (the
 * dispatcher pauses delivery and tries again), pending acquires are rejected, status().available is false
 * and `ses_relay_limiter_available` is 0; each change is logged once. The Bottleneck instance of the lost
 * connection is thrown away (its queued jobs can never be granted later) and a fresh one is built when
 * Redis answers again. Every Redis command has a timeout, so no acquire waits on a dead socket.
 */
import Bottleneck from 'bottleneck';
import Redis, { type RedisOptions } from 'ioredis';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../observability/logger';
import {
  acquireRefusal,
  LimiterUnavailableError,
  type LimiterStatus,
  type RecipientLimiter,
} from './limiter';
import {
  limiterAvailable,
  limiterEffectiveRate,
  limiterRate,
  limiterThrottledTotal,
  limiterWaitSeconds,
} from './limiter-metrics';
import { SharedThrottle } from './redis-shared-throttle';
import { RedisUpstreamWindow } from './redis-upstream-window';
import type { SendWindow } from './upstream-window';

/** Largest reservoir increment per interval: the bound's slack over burst + rate * W (recipients). */
export const MAX_INCREASE_AMOUNT = 0.25;

export interface RedisLimiterOptions {
  redisUrl: string;
  /** Replicas with the same id share one rate (two SES accounts: two ids on one Redis). */
  limiterId: string;
  /** Recipients per second. */
  rate: number;
  /** Bucket size in recipients (>= 1). */
  burst: number;
  throttleFactor: number;
  throttleRecoveryMs: number;
  /** Bottleneck heartbeat: how often each replica refreshes the shared reservoir and wakes waiters. */
  heartbeatMs: number;
  logger?: Logger;
  /** Reservoir increase interval (default: the interval that adds MAX_INCREASE_AMOUNT at the full rate). */
  increaseIntervalMs?: number;
  /** Timeout of every Redis command and of a connection attempt (default 1000 ms). */
  commandTimeoutMs?: number;
  /** How long create() waits for Redis before returning an unavailable limiter (default 3000 ms). */
  connectTimeoutMs?: number;
  /** Health probe and shared-throttle poll period (default 250 ms). */
  probeMs?: number;
}

interface Session {
  bottleneck: Bottleneck;
  connection: Bottleneck.IORedisConnection;
  client: Redis;
  closed: boolean;
}

interface Waiter {
  fail(err: Error): void;
}

/**
 * A waiting replica must notice new tokens well before the bucket is full again, or the tokens that
 * overflow it are lost: measured, a heartbeat up to a sixth of the bucket's fill time (burst / rate)
 * keeps >= 98 % of the rate (docs/scale-out.md). Never below 10 ms.
 */
export function effectiveHeartbeat(heartbeatMs: number, rate: number, burst: number): number {
  const fillMs = (burst / rate) * 1000;
  return Math.min(heartbeatMs, Math.max(10, Math.floor(fillMs / 6)));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Refund tokens of an aborted wait: add back to the shared reservoir, never above its maximum. */
const REFUND_LUA = `
local r = tonumber(redis.call('HGET', KEYS[1], 'reservoir'))
local m = tonumber(redis.call('HGET', KEYS[1], 'reservoirIncreaseMaximum'))
if r == nil then return 0 end
local n = r + tonumber(ARGV[1])
if m ~= nil and n > m then n = math.max(r, m) end
redis.call('HSET', KEYS[1], 'reservoir', tostring(n))
return 1
`;

export class RedisLimiter implements RecipientLimiter {
  /** Changed only by setRate(). */
  private rate: number;
  private readonly burst: number;
  private intervalMs: number;
  /** Effective Bottleneck heartbeat (LIMITER_HEARTBEAT, shortened for shallow buckets). */
  readonly heartbeatMs: number;
  private readonly logger?: Logger;
  private readonly commandTimeoutMs: number;
  private readonly control: Redis;
  private readonly shared: SharedThrottle;
  private upstream?: RedisUpstreamWindow;
  private readonly timer: NodeJS.Timeout;
  private session?: Session;
  private available = false;
  /** undefined until the first state is logged. */
  private loggedAvailable?: boolean;
  private stopped = false;
  private busy = false;
  private fraction = 1;
  private appliedAmount = -1;
  private settingsChain: Promise<void> = Promise.resolve();
  private readonly waiters = new Set<Waiter>();

  /** Connects (waiting up to connectTimeoutMs); resolves even when Redis is down (then unavailable). */
  static async create(options: RedisLimiterOptions): Promise<RedisLimiter> {
    const limiter = new RedisLimiter(options);
    const deadline = Date.now() + (options.connectTimeoutMs ?? 3000);
    while (!limiter.available && !limiter.stopped && Date.now() < deadline) {
      await limiter.probe();
      if (!limiter.available) await new Promise((r) => setTimeout(r, 50));
    }
    if (!limiter.available) limiter.setAvailable(false, new Error('Redis not reachable at start'));
    return limiter;
  }

  private constructor(private readonly options: RedisLimiterOptions) {
    if (!(options.rate > 0)) throw new RangeError('rate must be > 0');
    if (!(options.burst >= 1)) throw new RangeError('burst must be >= 1');
    if (!(options.heartbeatMs > 0)) throw new RangeError('heartbeatMs must be > 0');
    this.rate = options.rate;
    this.burst = Math.floor(options.burst);
    this.intervalMs = options.increaseIntervalMs ?? (MAX_INCREASE_AMOUNT * 1000) / this.rate;
    this.logger = options.logger;
    this.heartbeatMs = effectiveHeartbeat(options.heartbeatMs, this.rate, this.burst);
    if (this.heartbeatMs < options.heartbeatMs) {
      this.logger?.info(
        { event: 'limiter:heartbeat', configuredMs: options.heartbeatMs, heartbeatMs: this.heartbeatMs },
        'LIMITER_HEARTBEAT shortened: the bucket refills faster than it (see docs/scale-out.md)',
      );
    }
    this.commandTimeoutMs = options.commandTimeoutMs ?? 1000;
    this.control = new Redis(options.redisUrl, {
      ...this.clientOptions(),
      // The control connection reconnects by itself; sessions do not (a new one is built instead).
      retryStrategy: () => 250,
    });
    this.control.on('error', () => {
      /* reported through the probe */
    });
    this.control.on('close', () => {
      if (this.available) this.setAvailable(false, new Error('Redis connection closed'));
    });
    this.shared = new SharedThrottle(this.control, {
      limiterId: options.limiterId,
      factor: options.throttleFactor,
      recoveryMs: options.throttleRecoveryMs,
    });
    this.timer = setInterval(() => void this.probe(), options.probeMs ?? 250);
    this.timer.unref();
    limiterAvailable.set(0);
    limiterRate.set(this.rate);
    limiterEffectiveRate.set(this.rate);
  }

  private clientOptions(): RedisOptions {
    return {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: this.commandTimeoutMs,
      connectTimeout: this.commandTimeoutMs,
      lazyConnect: false,
    };
  }

  private amountFor(fraction: number): number {
    return (this.rate * fraction * this.intervalMs) / 1000;
  }

  /** One probe: while available, poll the shared throttle (health check); otherwise try to reconnect. */
  private async probe(): Promise<void> {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      if (this.available) {
        const reading = await this.shared.read();
        await this.applyFraction(reading.fraction, false);
      } else if (this.control.status === 'ready') {
        await this.openSession();
      }
    } catch (err) {
      if (this.available) this.setAvailable(false, err);
    } finally {
      this.busy = false;
    }
  }

  private async openSession(): Promise<void> {
    const reading = await this.shared.read();
    this.fraction = reading.fraction;
    const client = new Redis(this.options.redisUrl, { ...this.clientOptions(), retryStrategy: () => null });
    const connection = new Bottleneck.IORedisConnection({ client, Redis });
    const amount = this.amountFor(this.fraction);
    const bottleneck = new Bottleneck({
      id: this.options.limiterId,
      datastore: 'ioredis',
      connection,
      clearDatastore: false,
      heartbeatInterval: this.heartbeatMs,
      maxConcurrent: null,
      minTime: 0,
      // Used only when the shared state does not exist yet (first replica, or Redis lost its data).
      reservoir: this.burst,
      reservoirIncreaseInterval: this.intervalMs,
      reservoirIncreaseAmount: amount,
      reservoirIncreaseMaximum: this.burst,
    });
    const session: Session = { bottleneck, connection, client, closed: false };
    const lost = (err: unknown) => this.sessionLost(session, err);
    let failOpen: ((err: Error) => void) | undefined;
    const opening = new Promise<never>((_, reject) => (failOpen = reject));
    connection.on('error', (err) => (this.session === session ? lost(err) : undefined));
    bottleneck.on('error', (err) => (this.session === session ? lost(err) : undefined));
    client.on('end', () => {
      failOpen?.(new Error('Redis connection ended'));
      lost(new Error('Redis connection ended'));
    });
    try {
      const clients = await withTimeout(
        Promise.race([bottleneck.ready(), opening]),
        this.options.connectTimeoutMs ?? 3000,
        'Redis limiter connection',
      );
      (clients as { subscriber: Redis }).subscriber.on('end', () =>
        lost(new Error('Redis subscriber ended')),
      );
      // The shared settings may predate this replica's configuration (or a throttle): align them.
      // Never touch `reservoir` here: a starting replica must not add a burst.
      await bottleneck.updateSettings({
        reservoirIncreaseInterval: this.intervalMs,
        reservoirIncreaseAmount: amount,
        reservoirIncreaseMaximum: this.burst,
        maxConcurrent: null,
        minTime: 0,
      });
    } catch (err) {
      failOpen = undefined;
      this.dispose(session);
      throw err;
    }
    failOpen = undefined;
    if (this.stopped) {
      this.dispose(session);
      return;
    }
    this.appliedAmount = amount;
    this.session = session;
    limiterEffectiveRate.set(this.rate * this.fraction);
    this.setAvailable(true);
  }

  private sessionLost(session: Session, err: unknown): void {
    if (session.closed) return;
    if (this.session === session && this.available) this.setAvailable(false, err);
    else this.dispose(session);
  }

  private dispose(session: Session): void {
    if (session.closed) return;
    session.closed = true;
    if (this.session === session) this.session = undefined;
    // Drops both connections at once; in-flight scripts reject, queued jobs are abandoned with the instance.
    void session.connection.disconnect(false).catch(() => undefined);
  }

  private setAvailable(available: boolean, cause?: unknown): void {
    this.available = available;
    limiterAvailable.set(available ? 1 : 0);
    if (!available) {
      if (this.session) this.dispose(this.session);
      const err = new LimiterUnavailableError(
        'limiter unavailable: Redis unreachable, delivery paused',
        cause,
      );
      for (const w of [...this.waiters]) w.fail(err);
    }
    if (this.loggedAvailable === available || this.stopped) return;
    this.loggedAvailable = available;
    if (available) {
      this.logger?.info(
        { event: 'limiter:available', limiterId: this.options.limiterId },
        'shared limiter connected to Redis: delivery runs',
      );
    } else {
      this.logger?.warn(
        { event: 'limiter:unavailable', limiterId: this.options.limiterId, err: cause },
        'shared limiter cannot reach Redis: delivery paused',
      );
    }
  }

  /** Write the reservoir increase matching `fraction` (and empty the reservoir after a fresh 454). */
  private applyFraction(fraction: number, drain: boolean): Promise<void> {
    const run = async () => {
      const changed = Math.abs(fraction - this.fraction) > 1e-9;
      this.fraction = fraction;
      if (changed) limiterEffectiveRate.set(this.rate * fraction);
      const session = this.session;
      if (!session || session.closed) return;
      const amount = this.amountFor(fraction);
      const full = this.amountFor(1);
      // Step the shared setting when it moved by >= 1 % of the full rate, or reached it.
      const due =
        drain ||
        Math.abs(amount - this.appliedAmount) >= full * 0.01 ||
        (fraction >= 1 && this.appliedAmount !== full);
      if (!due) return;
      await session.bottleneck.updateSettings({
        reservoirIncreaseAmount: amount,
        ...(drain ? { reservoir: 0 } : {}),
      });
      this.appliedAmount = amount;
    };
    const next = this.settingsChain.then(run, run);
    this.settingsChain = next.catch(() => undefined);
    return next;
  }

  acquire(recipients: number, signal?: AbortSignal): Promise<void> {
    const refusal = acquireRefusal(recipients, this.burst, this.stopped, signal);
    if (refusal) return Promise.reject(refusal);
    const session = this.session;
    if (!this.available || !session || session.closed) {
      return Promise.reject(
        new LimiterUnavailableError('limiter unavailable: Redis unreachable, delivery paused'),
      );
    }
    if (recipients === 0) return Promise.resolve();
    const started = performance.now();
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        this.waiters.delete(waiter);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const waiter: Waiter = { fail: finish };
      const onAbort = () => finish(new LimiterUnavailableError('acquire aborted', signal?.reason));
      this.waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      session.bottleneck
        .schedule({ weight: recipients }, () => Promise.resolve())
        .then(
          () => {
            if (settled) {
              // Granted after the wait was abandoned: give the unused tokens back to the shared bucket.
              if (!session.closed) this.refund(recipients);
              return;
            }
            limiterWaitSeconds.observe((performance.now() - started) / 1000);
            finish();
          },
          (err: unknown) =>
            finish(
              new LimiterUnavailableError(
                this.stopped ? 'limiter stopped' : 'limiter unavailable: Redis error',
                err,
              ),
            ),
        );
    });
  }

  private refund(recipients: number): void {
    const key = `b_${this.options.limiterId}_settings`;
    this.control
      .eval(REFUND_LUA, 1, key, String(recipients))
      .catch((err: unknown) => this.logger?.debug({ err }, 'limiter: refund failed'));
  }

  throttled(): void {
    if (this.stopped) return;
    limiterThrottledTotal.inc();
    if (!this.available) return;
    this.shared
      .throttle()
      .then(
        (reading) => {
          if (reading.changed) {
            this.logger?.warn(
              {
                event: 'limiter:throttled',
                limiterId: this.options.limiterId,
                effectiveRate: Number((this.rate * reading.fraction).toFixed(3)),
              },
              'SES throttling: slowing down every replica',
            );
          }
          return this.applyFraction(reading.fraction, reading.changed);
        },
        (err: unknown) => this.setAvailable(false, err),
      )
      .catch((err: unknown) => this.logger?.warn({ err }, 'limiter: applying the slow-down failed'));
  }

  /**
   * SES_RATE_LIMIT=auto read a new MaxSendRate: write the matching reservoir increase (interval and amount)
   * into the shared settings. Every replica of the limiter id reads the same account, so they agree; the
   * Bottleneck heartbeat stays the one chosen at start.
   */
  setRate(rate: number): void {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`rate must be > 0, got ${rate}`);
    if (this.stopped || rate === this.rate) return;
    this.rate = rate;
    this.intervalMs = this.options.increaseIntervalMs ?? (MAX_INCREASE_AMOUNT * 1000) / rate;
    limiterRate.set(rate);
    limiterEffectiveRate.set(rate * this.fraction);
    const run = async () => {
      const session = this.session;
      if (!session || session.closed) return; // openSession() writes the new settings
      const amount = this.amountFor(this.fraction);
      await session.bottleneck.updateSettings({
        reservoirIncreaseInterval: this.intervalMs,
        reservoirIncreaseAmount: amount,
      });
      this.appliedAmount = amount;
    };
    const next = this.settingsChain.then(run, run);
    this.settingsChain = next.catch(() => undefined);
    next.catch((err: unknown) => this.logger?.warn({ err }, 'limiter: applying the new rate failed'));
  }

  /** The send-time guard shared by every replica of this limiter id (redis-upstream-window.ts). */
  sendWindow(): SendWindow {
    this.upstream ??= new RedisUpstreamWindow(this.control, {
      limiterId: this.options.limiterId,
      capacity: () => this.status().effectiveRate + this.burst,
      available: () => this.available,
    });
    return this.upstream;
  }

  status(): LimiterStatus {
    return {
      rate: this.rate,
      effectiveRate: this.rate * this.fraction,
      burst: this.burst,
      available: this.available && !this.stopped,
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    const err = new LimiterUnavailableError('limiter stopped');
    for (const w of [...this.waiters]) w.fail(err);
    this.available = false;
    limiterAvailable.set(0);
    if (this.session) this.dispose(this.session);
    this.upstream?.close();
    this.control.disconnect();
  }
}
