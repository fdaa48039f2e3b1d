/**
 * Admission to SES: the one place that decides whether an upstream transaction may go now.
 *
 *   const ticket = await admission.admit(recipients, signal);   // slot, pause, tokens (in flight)
 *   const results = await transport.send(...);
 *   await ticket.settle(outcomeCounts(results));                 // in flight done, SES's feedback
 *
 * What it owns, in the order admit() applies it:
 * 1. The delivery pause (delivery-pause.ts): while SES's daily quota is spent or sending is paused,
 *    nothing is admitted but the probe (DeliveryPausedError for the rest).
 * 2. The turn (fair-turn.ts): one transaction at a time takes a slot and asks for tokens; the waiting ones
 *    are served in weighted fair order by tenant (TENANT_WEIGHTS, by recipients), arrival order within a
 *    tenant, so one tenant's backlog of transactions does not stand in front of another's message. A
 *    tenant at its own rate_limit is passed over until its bucket has room (no head-of-line blocking).
 * 3. A connection slot (SES_POOL_SIZE), taken by the turn's holder: tokens are never spent on a
 *    transaction that would then queue inside the transport's pool waiting for a connection.
 * 4. The recipient tokens of the rate formula (rate-state.ts), in the process or shared through Redis
 *    (local-backend.ts, redis-backend.ts), and with them, for a tenant with a rate_limit, its own bucket
 *    (same back end: shared across replicas with Redis, where the script also keeps the weights across
 *    replicas on one virtual clock). A granted transaction counts as in flight until
 *    settled, and the bucket leaves room for what is in flight, so arrivals at SES stay within SES's
 *    bucket whatever the grant-to-arrival delays.
 * 5. Feedback: a throttled outcome drives the throttle reaction (drain and hold, or AIMD decrease), a
 *    quota or paused outcome starts the delivery pause, the probe's answer ends it.
 * And queueAge(): a message's age without the time delivery was paused (MAX_QUEUE_AGE).
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../observability/logger';
import type { RecipientResult } from '../transport/transport';
import { DeliveryPausedError, LimiterUnavailableError } from './admission-errors';
import {
  limiterRate,
  limiterThrottledTotal,
  limiterThrottleReactions,
  limiterWaitSeconds,
  registerAdmissionMetrics,
} from './admission-metrics';
import type { AdmissionBackend, DeliveryPauseState, PauseReason, TenantShare } from './backend';
import { DeliveryPause, type ProbeVerdict } from './delivery-pause';
import type { PauseLedger } from './pause-ledger';
import type { SesAccount } from './ses-account';
import { SendSlots } from './send-slots';
import { FairTurn } from './fair-turn';
import { TENANT_WEIGHTS, UNAUTHENTICATED_TENANT, type Tenant } from '../../types';

/** What became of the recipients of one admitted transaction, as admission needs to know it. */
export const TRANSACTION_OUTCOMES = [
  'delivered', // SES accepted
  'throttled', // 454 Throttling failure / TooManyRequestsException: over SES's rate
  'quota', // the daily sending quota is spent
  'paused', // SES paused or suspended sending for the account
  'transient', // another 4xx or API error: SES answered
  'permanent', // 5xx: SES answered
  'network', // no answer from SES
] as const;
export type TransactionOutcome = (typeof TRANSACTION_OUTCOMES)[number];

/** Recipients per outcome. */
export type OutcomeCounts = Partial<Record<TransactionOutcome, number>>;

/** The admission outcome of one classified recipient result. */
export function outcomeOf(r: RecipientResult): TransactionOutcome {
  if (r.signal === 'daily-quota-exceeded') return 'quota';
  if (r.signal === 'sending-paused') return 'paused';
  if (r.class === 'delivered' || r.class === 'throttled' || r.class === 'permanent') return r.class;
  return r.code === 0 ? 'network' : 'transient';
}

/** Count the recipient results of one transaction by admission outcome. */
export function outcomeCounts(results: RecipientResult[]): OutcomeCounts {
  const counts: OutcomeCounts = {};
  for (const r of results) {
    const o = outcomeOf(r);
    counts[o] = (counts[o] ?? 0) + 1;
  }
  return counts;
}

/** An admitted transaction: its slot, its recipients in flight, until settled or cancelled. */
export interface Ticket {
  readonly recipients: number;
  /** This transaction is the one probe let through while delivery is paused. */
  readonly probe: boolean;
  /** SES answered (or the transport failed): feed the outcome back and free the slot. Once. */
  settle(outcomes: OutcomeCounts, reply?: string): Promise<void>;
  /** Nothing was sent after all: the tokens go back, the slot is freed. */
  cancel(): Promise<void>;
}

export interface AdmitOptions {
  /** The one probe let through while delivery is paused (after probe() said `send-probe`). */
  probe?: boolean;
  /** Awaited after the connection slot and before the tokens (the dispatcher waits for a writable spool). */
  beforeTokens?: () => Promise<void>;
  /** The tenant of the message: its weight in the fair turn, its rate_limit. Absent: trusted networks. */
  tenant?: Tenant;
}

export interface AdmissionStatus {
  /** Recipients per second at the full rate (SES_RATE_LIMIT, or read from SES with auto). */
  rate: number;
  /** The rate now, after SES throttling (<= rate). */
  effectiveRate: number;
  burst: number;
  /** False while the shared store is unreachable (delivery waits). */
  available: boolean;
  pause?: DeliveryPauseState;
}

export interface Admission {
  /**
   * Wait until a transaction of `recipients` may go to SES. Rejects with DeliveryPausedError while
   * delivery is paused (unless `probe`), LimiterUnavailableError when admission cannot decide safely or
   * `signal` aborts, RangeError for more recipients than the burst.
   */
  admit(recipients: number, signal: AbortSignal, options?: AdmitOptions): Promise<Ticket>;
  /** Why all delivery is paused now, if it is. */
  pausedReason(): PauseReason | undefined;
  /** While paused: is a check due, and must a real message be the probe? */
  probe(): Promise<ProbeVerdict>;
  /** Called when the pause began or ended, or availability changed. */
  onChange(listener: () => void): void;
  /** Age of a message received at `receivedAt`, paused time not counted (MAX_QUEUE_AGE). */
  queueAge(receivedAt: number, now: number): number;
  setRate(rate: number): void;
  status(): AdmissionStatus;
  stop(): Promise<void>;
}

export interface RateAdmissionOptions {
  backend: AdmissionBackend;
  ledger: PauseLedger;
  /** Connection slots: at most this many transactions at once (SES_POOL_SIZE). */
  slots: number;
  /** SES_QUOTA_PROBE_INTERVAL. */
  probeIntervalMs: number;
  /** GetAccount, for the pause checks (when the relay can call it). */
  account?: SesAccount;
  /** MAX_QUEUE_AGE: pauses older than can matter are forgotten. */
  maxQueueAgeMs?: number;
  logger: Logger;
  /** Longest sleep of a waiting transaction between two asks (LIMITER_HEARTBEAT; default 50 ms). */
  maxPollMs?: number;
}

export class RateAdmission implements Admission {
  private readonly backend: AdmissionBackend;
  private readonly pause: DeliveryPause;
  private readonly slots: SendSlots;
  /** One transaction at a time takes a slot and asks for tokens; the others wait in fair order. */
  private readonly turn = new FairTurn(() => performance.now());
  private readonly logger: Logger;
  private readonly maxPollMs: number;
  private readonly wakers = new Set<() => void>();
  private readonly listeners = new Set<() => void>();
  private readonly unregister: () => void;
  private seq = 0;
  private stopped = false;

  constructor(private readonly options: RateAdmissionOptions) {
    this.backend = options.backend;
    this.logger = options.logger;
    this.slots = new SendSlots(options.slots);
    this.maxPollMs = options.maxPollMs ?? 50;
    this.pause = new DeliveryPause({
      backend: this.backend,
      probeIntervalMs: options.probeIntervalMs,
      account: options.account,
      logger: options.logger,
    });
    this.backend.onChange(() => {
      this.wake();
      if (options.maxQueueAgeMs) options.ledger.prune(Date.now(), options.maxQueueAgeMs);
      for (const l of [...this.listeners]) l();
    });
    limiterRate.set(this.backend.rate);
    this.unregister = registerAdmissionMetrics({
      effectiveRate: () => this.status().effectiveRate,
      inFlight: () => this.backend.reading().inFlight,
      available: () => this.backend.available() && !this.stopped,
      pausedReason: () => this.pausedReason(),
    });
  }

  async admit(recipients: number, signal: AbortSignal, options: AdmitOptions = {}): Promise<Ticket> {
    const burst = this.backend.burst;
    if (!Number.isInteger(recipients) || recipients < 1) {
      throw new RangeError(`recipients must be a whole number >= 1, got ${recipients}`);
    }
    if (recipients > burst) {
      throw new RangeError(`cannot admit ${recipients} recipients at once: more than the burst of ${burst}`);
    }
    const probe = options.probe === true;
    this.check(signal, probe);
    const tenant = options.tenant;
    const name = tenant?.name || UNAUTHENTICATED_TENANT;
    const weight = TENANT_WEIGHTS[tenant?.priority ?? 'normal'] ?? TENANT_WEIGHTS.normal;
    const limit = tenant?.rateLimit !== undefined && tenant.rateLimit > 0 ? tenant.rateLimit : undefined;
    const id = String(++this.seq);
    const started = performance.now();
    for (;;) {
      await this.turn.acquire({ tenant: name, weight }, signal).catch((err: unknown) => {
        throw new LimiterUnavailableError('admission aborted', err);
      });
      let granted = false;
      try {
        await this.slots.acquire(signal).catch((err: unknown) => {
          throw new LimiterUnavailableError('admission aborted', err);
        });
        try {
          await options.beforeTokens?.();
          const waitMs = await this.tokens(
            recipients,
            id,
            probe,
            signal,
            limit !== undefined ? { name, weight, rate: limit } : { name, weight },
          );
          if (waitMs === 0) {
            granted = true;
            this.turn.charge(name, recipients, weight);
            limiterWaitSeconds.observe((performance.now() - started) / 1000);
            return this.ticket(recipients, id, probe);
          }
          // The tenant is at its rate_limit: step aside (keeping its place) and let the others go.
          this.turn.defer(name, waitMs);
        } finally {
          if (!granted) this.slots.release();
        }
      } finally {
        this.turn.release();
      }
    }
  }

  /** Refuse at once what cannot be admitted now. */
  private check(signal: AbortSignal, probe: boolean): void {
    if (this.stopped) throw new LimiterUnavailableError('limiter stopped');
    if (signal.aborted) throw new LimiterUnavailableError('admission aborted', signal.reason);
    const paused = this.pausedReason();
    if (paused && !probe) throw new DeliveryPausedError(paused);
    if (!this.backend.available()) {
      throw new LimiterUnavailableError('limiter unavailable: Redis unreachable, delivery paused');
    }
  }

  /**
   * Take the tokens (the caller holds the turn): ask the back end until granted (0), or until it says the
   * tenant is at its rate_limit (the estimated wait, ms, > 0).
   */
  private async tokens(
    n: number,
    id: string,
    probe: boolean,
    signal: AbortSignal,
    tenant: TenantShare,
  ): Promise<number> {
    for (;;) {
      this.check(signal, probe);
      const r = await this.backend.take(n, id, probe, tenant);
      if (r.status === 'granted') return 0;
      if (r.status === 'paused') throw new DeliveryPausedError(this.pausedReason() ?? 'daily-quota-exceeded');
      if (r.status === 'tenant-wait') return Math.max(1, r.waitMs);
      await this.nap(Math.min(Math.max(1, r.waitMs), this.maxPollMs), signal);
    }
  }

  /** Sleep `ms`, or less when a transaction finishes, the state changes or `signal` aborts. */
  private nap(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
  }

  private ticket(recipients: number, id: string, probe: boolean): Ticket {
    let done = false;
    const end = async (work: () => Promise<void>) => {
      if (done) return;
      done = true;
      try {
        await work();
      } catch (err) {
        this.logger.warn({ err }, 'admission: could not record a transaction outcome');
      } finally {
        this.slots.release();
        this.wake();
      }
    };
    return {
      recipients,
      probe,
      settle: (outcomes, reply) =>
        end(async () => {
          await this.backend.finish(id, recipients, false);
          await this.feedback(outcomes, probe, reply);
        }),
      cancel: () => end(() => this.backend.finish(id, recipients, true)),
    };
  }

  /** What SES answered, as admission needs it: throttle reaction, pause, the probe's verdict. */
  private async feedback(o: OutcomeCounts, probe: boolean, reply?: string): Promise<void> {
    if ((o.throttled ?? 0) > 0) await this.throttled();
    if ((o.quota ?? 0) > 0) await this.pause.begin('daily-quota-exceeded', reply);
    if ((o.paused ?? 0) > 0) await this.pause.begin('sending-paused', reply);
    const answered = (o.delivered ?? 0) + (o.permanent ?? 0) + (o.transient ?? 0) + (o.throttled ?? 0);
    if (probe && this.pausedReason() && !o.quota && !o.paused && answered > 0) {
      await this.pause.probePassed();
    }
  }

  private async throttled(): Promise<void> {
    limiterThrottledTotal.inc();
    const r = await this.backend.throttle();
    if (r.reaction === 'none') return;
    limiterThrottleReactions.inc({ reaction: r.reaction });
    this.logger.warn(
      {
        event: 'limiter:throttled',
        reaction: r.reaction,
        effectiveRate: Number((this.backend.rate * r.fraction).toFixed(3)),
        shared: this.backend.kind === 'redis',
      },
      r.reaction === 'pause'
        ? 'SES throttling: bucket drained, short hold, then the full rate again'
        : 'SES throttling again: rate lowered, climbing back gradually',
    );
  }

  pausedReason(): PauseReason | undefined {
    return this.backend.reading().pause?.reason;
  }

  probe(): Promise<ProbeVerdict> {
    return this.pause.probe();
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  queueAge(receivedAt: number, now: number): number {
    return now - receivedAt - this.options.ledger.pausedWithin(receivedAt, now);
  }

  setRate(rate: number): void {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`rate must be > 0, got ${rate}`);
    if (this.stopped) return;
    this.backend.setRate(rate);
    limiterRate.set(rate);
  }

  status(): AdmissionStatus {
    const r = this.backend.reading();
    return {
      rate: this.backend.rate,
      effectiveRate: this.backend.rate * r.fraction,
      burst: this.backend.burst,
      available: this.backend.available() && !this.stopped,
      pause: r.pause,
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.turn.stop();
    this.wake();
    this.unregister();
    await this.backend.stop();
  }
}
