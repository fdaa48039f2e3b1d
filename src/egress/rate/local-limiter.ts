/**
 * In-process recipient limiter: a token bucket counted in recipients, `burst` deep, refilled at the
 * (possibly throttled) rate. Bottleneck is the queue and weight engine: each acquire is a job whose
 * weight is its recipient count and the bucket is Bottleneck's reservoir, so waiters are served in
 * order and a big transaction is not starved by small ones.
 *
 * Why we refill the reservoir ourselves instead of Bottleneck's `reservoirIncreaseInterval`: its
 * heartbeat adds a FIXED amount per tick and sets `_lastReservoirIncrease = now`, so every late timer
 * tick loses the time it was late. Measured on this machine (3 s backlog drains, node 20): 14/s with a
 * 10 ms heartbeat drained at 90.5 %, with the default 250 ms heartbeat at 26 %; 200/s at 5 ms ticks
 * 75.8 %, at 10 ms ticks (amount 2) 89.7 %. The relay must drain at >= 98 %. So a short timer here computes
 * the tokens earned from the elapsed monotonic time (ThrottleController.tokensBetween, which also handles
 * the throttled, recovering rate), keeps the fractional remainder as a carry, caps reservoir + carry at
 * `burst` and hands the whole tokens to Bottleneck with `incrementReservoir`. No time is ever lost, and
 * reservoir + carry <= burst at all times, which gives the guarantee: over any window of W seconds at
 * most burst + rate * W recipients are granted.
 *
 * All reservoir changes (refill, refunds of aborted waits, draining after a 454) happen in that one
 * serialised tick; grants only ever lower the reservoir, so reading it asynchronously is safe.
 *
 * The bucket starts EMPTY. An in-process limiter remembers nothing across a restart, so a bucket that
 * started full would grant `burst` recipients at once after every start: a crash loop (or a rolling
 * restart) would be a burst each time, on top of what the previous process granted just before it
 * stopped. Starting empty, a process grants at most `rate * t` in its first t seconds, so over any
 * window the grants of all processes that ran one after another on the spool stay within
 * `rate * W + burst` (only the process already running when the window opens can hold a bucket).
 * The cost is one bucket's worth at a cold start (`burst / rate` seconds: 1 s with the default
 * SES_BURST); the drain rate is unchanged.
 */
import Bottleneck from 'bottleneck';
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
import { ThrottleController } from './throttle-controller';

export interface LocalLimiterOptions {
  /** Recipients per second (fractions allowed, e.g. 0.5). */
  rate: number;
  /** Bucket size in recipients (>= 1). */
  burst: number;
  throttleFactor: number;
  throttleRecoveryMs: number;
  logger?: Logger;
  /** Refill timer period (default 10 ms). */
  tickMs?: number;
}

export class LocalLimiter implements RecipientLimiter {
  private readonly bottleneck: Bottleneck;
  private controller: ThrottleController;
  private readonly options: LocalLimiterOptions;
  /** A rate from setRate(), applied by the next tick (after the tokens earned at the old rate). */
  private pendingRate?: number;
  private readonly burst: number;
  private readonly logger?: Logger;
  private readonly timer: NodeJS.Timeout;
  private lastTick = performance.now();
  /** Fraction of a token earned but not yet handed to Bottleneck (0 <= carry < 1). */
  private carry = 0;
  /** Tokens taken by waits that were aborted before they could be used. */
  private refund = 0;
  private drainRequested = false;
  private ticking = false;
  private stopped = false;
  private lastRate = -1;

  constructor(options: LocalLimiterOptions) {
    if (!(options.rate > 0)) throw new RangeError('rate must be > 0');
    if (!(options.burst >= 1)) throw new RangeError('burst must be >= 1');
    this.burst = Math.floor(options.burst);
    this.logger = options.logger;
    this.options = options;
    this.controller = new ThrottleController({
      rate: options.rate,
      factor: options.throttleFactor,
      recoveryMs: options.throttleRecoveryMs,
    });
    // Empty at start: see the file comment (no burst after every restart).
    this.bottleneck = new Bottleneck({ reservoir: 0, maxConcurrent: null, minTime: 0 });
    this.bottleneck.on('error', (err) => this.logger?.error({ err }, 'limiter: bottleneck error'));
    this.timer = setInterval(() => void this.tick(), options.tickMs ?? 10);
    this.timer.unref();
    limiterRate.set(options.rate);
    limiterAvailable.set(1);
    this.publishRate(performance.now());
  }

  private publishRate(now: number): void {
    const rate = this.controller.effectiveRate(now);
    if (rate !== this.lastRate) {
      this.lastRate = rate;
      limiterEffectiveRate.set(rate);
    }
  }

  private async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      if (this.drainRequested) {
        this.drainRequested = false;
        this.carry = 0;
        this.refund = 0;
        await this.bottleneck.updateSettings({ reservoir: 0 });
      }
      const reservoir = (await this.bottleneck.currentReservoir()) ?? 0;
      const now = performance.now();
      const earned = this.controller.tokensBetween(this.lastTick, now) + this.refund;
      this.lastTick = now;
      this.refund = 0;
      this.applyPendingRate();
      this.publishRate(now);
      const virtual = Math.min(this.burst, reservoir + this.carry + earned);
      const add = Math.max(0, Math.floor(virtual - reservoir + 1e-9));
      this.carry = Math.max(0, virtual - reservoir - add);
      if (add > 0 && !this.stopped) await this.bottleneck.incrementReservoir(add);
    } catch (err) {
      if (!this.stopped) this.logger?.error({ err }, 'limiter: refill failed');
    } finally {
      this.ticking = false;
    }
  }

  acquire(recipients: number, signal?: AbortSignal): Promise<void> {
    const refusal = acquireRefusal(recipients, this.burst, this.stopped, signal);
    if (refusal) return Promise.reject(refusal);
    if (recipients === 0) return Promise.resolve();
    const started = performance.now();
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const onAbort = () => {
        if (settled) return;
        settled = true;
        reject(new LimiterUnavailableError('acquire aborted', signal?.reason));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.bottleneck
        .schedule({ weight: recipients }, () => Promise.resolve())
        .then(
          () => {
            signal?.removeEventListener('abort', onAbort);
            if (settled) {
              // The wait was aborted but the job still took its tokens: give them back.
              this.refund += recipients;
              return;
            }
            settled = true;
            limiterWaitSeconds.observe((performance.now() - started) / 1000);
            resolve();
          },
          (err: unknown) => {
            signal?.removeEventListener('abort', onAbort);
            if (settled) return;
            settled = true;
            reject(new LimiterUnavailableError('limiter stopped', err));
          },
        );
    });
  }

  throttled(): void {
    if (this.stopped) return;
    const now = performance.now();
    const rate = this.controller.throttled(now);
    this.drainRequested = true;
    limiterThrottledTotal.inc();
    this.publishRate(now);
    this.logger?.warn(
      {
        event: 'limiter:throttled',
        effectiveRate: Number(rate.toFixed(3)),
        throttles: this.controller.throttles,
      },
      'SES throttling: slowing down',
    );
  }

  setRate(rate: number): void {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`rate must be > 0, got ${rate}`);
    if (this.stopped) return;
    this.pendingRate = rate === this.controller.rate ? undefined : rate;
    limiterRate.set(rate);
  }

  /** Inside the serialised tick: swap to the rate setRate() asked for. */
  private applyPendingRate(): void {
    const rate = this.pendingRate;
    if (rate === undefined) return;
    this.pendingRate = undefined;
    this.controller = new ThrottleController({
      rate,
      factor: this.options.throttleFactor,
      recoveryMs: this.options.throttleRecoveryMs,
    });
    limiterRate.set(rate);
  }

  status(): LimiterStatus {
    return {
      rate: this.pendingRate ?? this.controller.rate,
      effectiveRate: this.controller.effectiveRate(performance.now()),
      burst: this.burst,
      available: !this.stopped,
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    limiterAvailable.set(0);
    await this.bottleneck.stop({ dropWaitingJobs: true }).catch(() => undefined);
  }
}
