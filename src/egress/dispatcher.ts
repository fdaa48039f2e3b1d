/**
 * The delivery loop: lease due messages from the spool in small batches, consult the suppression
 * policy, split the allowed recipients into SMTP transactions of at most min(50, burst) recipients,
 * ask admission (rate/admission.ts: connection slot, tokens, the delivery pause) for each, send,
 * classify each recipient's reply, tell admission what SES answered, and settle the outcome in the spool.
 *
 * - At most `poolSize * 2` messages are in flight (policy lookups overlap with sending) and at most
 *   `poolSize` SMTP transactions (admission's slots). The backlog stays on disk.
 * - Between batches the loop sleeps until the spool's next due time, a finished delivery, or `wake()`
 *   (the ingress calls it after each store, so new mail leaves at once).
 * - Retries: transient replies and network errors follow RETRY_SCHEDULE (by counted attempts, with a
 *   little jitter); SES throttling (454), an unreachable policy or limiter, and shutdown defer without
 *   counting the attempt, with a short retry. A message older than MAX_QUEUE_AGE expires (time while
 *   delivery was paused not counted).
 * - While SES's daily quota is spent or sending is paused (admission's delivery pause) nothing is leased
 *   but one probe message when admission says one is due; refusals then are not counted.
 * - Outcomes are durable per SMTP transaction: a message sent in several transactions (more than
 *   min(50, burst) recipients) records each one's final outcomes (`spool.record`) as soon as SES answered
 *   it, and settles the rest after the last, so a crash re-sends at most the transaction in flight.
 * - A spool that cannot be written pauses delivery (outcome-writer.ts): an outcome that could not be
 *   written is kept in memory and its write retried with backoff, the message stays leased (never sent
 *   again because of the write error), nothing is leased or sent meanwhile, and delivery resumes by
 *   itself when a write (a retry or a probe) succeeds.
 * - stop(grace): stop leasing, abort admission waits, let in-flight SMTP transactions finish within grace,
 *   release the rest to the spool (due again at once, or after a restart).
 */
import type { EgressConfig } from '../config';
import type { Logger } from '../observability/logger';
import type { RecipientPolicy } from '../policy/policy';
import type { QueuedMessage, Spool } from '../spool/spool';
import { DEFAULT_SPOOL_RETRY_MS, OutcomeWriter } from './outcome-writer';
import {
  classifyResults,
  consultPolicy,
  expiredOutcomes,
  retryDelay,
  type RetryPolicy,
} from './delivery-outcomes';
import type { DeferralReason } from '../types';
import { DeliveryPausedError, LimiterUnavailableError } from './rate/admission-errors';
import { outcomeCounts, type Admission, type Ticket } from './rate/admission';
import type { RecipientResult, Transport } from './transport/transport';
import { sendUpstream } from './upstream-send';
import { tenantChunk } from './rate/tenant-bucket';
import { releaseAbandoned, type Attempt, type Task } from './delivery-task';
import { reportAttempt } from './delivery-report';

export interface DispatcherOptions {
  spool: Spool;
  transport: Transport;
  /** Decides when a transaction may go to SES (slot, tokens, window, throttle feedback). */
  admission: Admission;
  policy: RecipientPolicy;
  config: Pick<
    EgressConfig,
    'retryScheduleMs' | 'maxQueueAgeMs' | 'poolSize' | 'maxRecipientsPerTransaction'
  >;
  /** Send even when the suppression list cannot be consulted (BLOCKLIST_FAIL_OPEN). */
  failOpen?: boolean;
  logger: Logger;
  now?: () => number;
  /** Retry delay range after a 454 Throttling failure (default 1-5 s). */
  throttleRetryMs?: [number, number];
  /** Retry delay when the policy or the limiter is unavailable (default 5 s). */
  unavailableRetryMs?: number;
  /** Longest sleep between spool polls when nothing is due (default 5 s). */
  maxSleepMs?: number;
  /** Backoff while the spool cannot be written: first and longest delay (default 250 ms .. 10 s). */
  spoolRetryMs?: [number, number];
}

export class Dispatcher {
  readonly spool: Spool;
  readonly transport: Transport;
  private readonly admission: Admission;
  readonly policy: RecipientPolicy;
  private readonly config: DispatcherOptions['config'];
  readonly logger: Logger;
  private readonly now: () => number;
  readonly failOpen: boolean;
  private readonly chunkSize: number;
  private readonly maxInFlight: number;
  private readonly retryPolicy: RetryPolicy;
  private readonly unavailableRetryMs: number;
  private readonly maxSleepMs: number;

  private readonly tasks = new Map<string, Task>();
  private running = false;
  private loopDone: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private abort = new AbortController();
  private idleWaiters: Array<() => void> = [];
  private readonly writer: OutcomeWriter;

  constructor(options: DispatcherOptions) {
    this.spool = options.spool;
    this.transport = options.transport;
    this.admission = options.admission;
    this.policy = options.policy;
    this.config = options.config;
    this.logger = options.logger;
    this.now = options.now ?? Date.now;
    this.failOpen = options.failOpen ?? false;
    this.chunkSize = Math.max(
      1,
      Math.min(
        options.config.maxRecipientsPerTransaction || 50,
        50,
        Math.floor(this.admission.status().burst),
      ),
    );
    this.maxInFlight = Math.max(1, options.config.poolSize * 2);
    this.unavailableRetryMs = options.unavailableRetryMs ?? 5000;
    this.retryPolicy = {
      retryScheduleMs: options.config.retryScheduleMs,
      throttleRetryMs: options.throttleRetryMs ?? [1000, 5000],
      unavailableRetryMs: this.unavailableRetryMs,
    };
    this.maxSleepMs = options.maxSleepMs ?? 5000;
    this.writer = new OutcomeWriter(
      this.spool,
      this.logger,
      options.spoolRetryMs ?? DEFAULT_SPOOL_RETRY_MS,
      () => this.wake(),
    );
    this.admission.onChange(() => this.wake());
  }

  /** Delivery is paused: the spool cannot be written, or SES's quota or account pauses it (for /readyz). */
  get paused(): boolean {
    return this.writer.blocked() || this.admission.pausedReason() !== undefined;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.abort = new AbortController();
    this.loopDone = this.loop().catch((err) => {
      this.logger.fatal({ err }, 'dispatcher loop crashed');
    });
  }

  /** New mail was stored (or something finished): look at the spool now. */
  wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  /** Messages currently being delivered. */
  get inFlight(): number {
    return this.tasks.size;
  }

  /** Resolves when nothing is in flight and nothing is due now (tests). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private isIdle(): boolean {
    if (this.tasks.size > 0) return false;
    const next = this.spool.nextDueAt();
    return next === undefined || next > this.now();
  }

  private checkIdle(): void {
    if (!this.idleWaiters.length || !this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private async loop(): Promise<void> {
    let pauseMs = this.writer.retryMs[0];
    while (this.running) {
      this.woken = false;
      if (this.writer.blocked()) {
        // The spool cannot be written: lease nothing. Retries of unwritten outcomes probe by themselves;
        // otherwise probe here, with backoff, until a write works.
        await this.sleepUntilWoken(pauseMs);
        if (!this.running) break;
        if (this.writer.retryingWrites === 0) await this.writer.probe();
        else if (this.spool.health().writable) this.writer.wakeAll(); // another write worked: retry now
        pauseMs = Math.min(pauseMs * 2, this.writer.retryMs[1]);
        continue;
      }
      if (pauseMs !== this.writer.retryMs[0]) {
        pauseMs = this.writer.retryMs[0];
        this.writer.wakeAll(); // the spool recovered on its own (a store committed): release the gates
      }
      if (this.admission.pausedReason()) {
        await this.whilePaused();
        continue;
      }
      const room = this.maxInFlight - this.tasks.size;
      let leased: QueuedMessage[] = [];
      if (room > 0) {
        try {
          leased = this.spool.lease(room, this.now());
        } catch (err) {
          if (!this.running) break;
          this.logger.error({ err }, 'dispatcher: cannot lease from the spool');
        }
        for (const m of leased) this.begin(m);
      }
      if (!this.running) break;
      if (leased.length > 0 && leased.length === room) {
        // Possibly more due: wait for a free slot (a finishing task wakes us).
        if (this.tasks.size >= this.maxInFlight) await this.sleepUntilWoken(this.maxSleepMs);
        continue;
      }
      this.checkIdle();
      if (this.woken) continue;
      let next: number | undefined;
      try {
        next = this.spool.nextDueAt();
      } catch {
        next = undefined;
      }
      const delay =
        next === undefined ? this.maxSleepMs : Math.max(0, Math.min(this.maxSleepMs, next - this.now()));
      if (delay === 0 && this.tasks.size < this.maxInFlight) {
        // Due now but nothing leasable (all leased): wait for a task to finish.
        await this.sleepUntilWoken(this.tasks.size ? this.maxSleepMs : 50);
      } else {
        await this.sleepUntilWoken(delay);
      }
    }
  }

  /**
   * All delivery is paused (daily quota spent, sending paused): lease nothing, except one message when
   * admission says a probe is due (at most one per SES_QUOTA_PROBE_INTERVAL across replicas).
   */
  private async whilePaused(): Promise<void> {
    const probing = [...this.tasks.values()].some((t) => t.probe);
    if (!probing && (await this.admission.probe()) === 'send-probe' && this.running) {
      let leased: QueuedMessage[] = [];
      try {
        leased = this.spool.lease(1, this.now());
      } catch (err) {
        this.logger.error({ err }, 'dispatcher: cannot lease from the spool');
      }
      for (const m of leased) {
        this.logger.info(
          { event: 'delivery:probe', queueId: m.id, reason: this.admission.pausedReason() },
          'delivery paused: sending one message as the probe',
        );
        this.begin(m, true);
      }
    }
    this.checkIdle();
    await this.sleepUntilWoken(Math.min(this.maxSleepMs, 1000));
  }

  private sleepUntilWoken(ms: number): Promise<void> {
    if (this.woken || !this.running) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private begin(message: QueuedMessage, probe = false): void {
    const task: Task = {
      message,
      promise: Promise.resolve(),
      abandoned: false,
      sending: false,
      unrecordedDelivered: 0,
      probe,
    };
    this.tasks.set(message.id, task);
    task.promise = this.deliver(task)
      .catch((err) => {
        this.logger.error({ err, queueId: message.id }, 'dispatcher: delivery attempt failed unexpectedly');
        if (!task.abandoned) {
          try {
            this.spool.release(message.id, this.now() + this.unavailableRetryMs);
          } catch {
            /* spool closing */
          }
        }
      })
      .finally(() => {
        this.tasks.delete(message.id);
        this.wake();
        this.checkIdle();
      });
  }

  /** One delivery attempt of one message. */
  private async deliver(task: Task): Promise<void> {
    const m = task.message;
    const started = this.now();
    const recipients = m.envelope.recipients;

    // Neither time while all delivery was paused (daily quota, sending paused) nor time held by an
    // operator (spool-actions.ts) counts towards MAX_QUEUE_AGE.
    const age = this.admission.queueAge(m.reception.receivedAt, started) - (m.heldMs ?? 0);
    if (age > this.config.maxQueueAgeMs) {
      const outcomes = expiredOutcomes(recipients, age, started - m.reception.receivedAt);
      await this.settle(task, { recorded: [], outcomes, deferrals: [], attempted: false });
      return;
    }
    const attempt: Attempt = { recorded: [], outcomes: [], deferrals: [], attempted: false };
    const allowed = await consultPolicy(this, m, attempt);
    if (allowed === undefined) {
      await this.settle(task, attempt);
      return;
    }
    // A tenant with a rate_limit sends transactions no larger than its bucket (tenant-bucket.ts).
    const chunkSize = tenantChunk(m.reception.tenant?.rateLimit, this.chunkSize);
    for (let i = 0; i < allowed.length; i += chunkSize) {
      const chunk = allowed.slice(i, i + chunkSize);
      const go = await this.beforeTransaction(task, attempt, allowed.slice(i), chunkSize);
      if (go === 'released' || task.abandoned) return;
      if (go === 'stop') break;
      attempt.attempted = true;
      const results = await this.sendTransaction(task, chunk, go);
      if (task.abandoned) return;
      classifyResults(results, attempt.outcomes, attempt.deferrals);
      const more = i + chunkSize < allowed.length;
      if (more && attempt.outcomes.length > 0) {
        // Make this transaction's outcomes durable before the next one: a crash from here on re-sends
        // only the transaction in flight, never this one.
        const batch = attempt.outcomes.splice(0);
        task.unrecordedDelivered = batch.filter((o) => o.status === 'delivered').length;
        await this.writer.persist(
          m.id,
          () => this.spool.record(m.id, batch),
          () => task.abandoned,
        );
        if (task.abandoned) return;
        task.unrecordedDelivered = 0;
        attempt.recorded.push(...batch);
      }
    }
    await this.settle(task, attempt);
  }

  /**
   * Wait until one transaction of `rest[0..chunk]` may go: the spool writable, a connection slot, the
   * limiter's tokens and room in the upstream window. Returns the window ticket; or `stop` when the rest
   * was deferred (shutdown, limiter unavailable); or `released` when nothing happened yet and the
   * message went back to the spool untouched.
   */
  private async beforeTransaction(
    task: Task,
    attempt: Attempt,
    rest: string[],
    chunkSize: number,
  ): Promise<Ticket | 'stop' | 'released'> {
    const m = task.message;
    const size = Math.min(chunkSize, rest.length);
    const untouched = () => !attempt.attempted && attempt.outcomes.length === 0;
    const deferRest = (reason: DeferralReason, reply: string): 'stop' => {
      for (const recipient of rest) {
        attempt.deferrals.push({ outcome: { recipient, status: 'deferred', reply }, reason, counted: false });
      }
      return 'stop';
    };
    if (!this.running) {
      if (untouched()) {
        this.spool.release(m.id);
        return 'released';
      }
      return deferRest('shutdown', 'relay shutting down');
    }
    try {
      // Nothing goes out while an outcome cannot be written: before admission, and again between the
      // connection slot and the tokens (the wait for a slot may have been long).
      await this.writer.whenUnblocked(this.abort.signal);
      return await this.admission.admit(size, this.abort.signal, {
        probe: task.probe && !attempt.attempted,
        tenant: m.reception.tenant,
        beforeTokens: () => this.writer.whenUnblocked(this.abort.signal),
      });
    } catch (err) {
      if (task.abandoned) return 'released';
      if (err instanceof DeliveryPausedError) {
        // Nothing sent yet: back to the spool untouched (due at once; the pause holds it back).
        if (untouched()) {
          this.spool.release(m.id);
          return 'released';
        }
        return deferRest(err.reason, `delivery paused: ${err.reason}`);
      }
      const shutdown = !this.running;
      if (shutdown && untouched()) {
        this.spool.release(m.id);
        return 'released';
      }
      if (shutdown) return deferRest('shutdown', 'relay shutting down');
      if (!(err instanceof LimiterUnavailableError)) {
        this.logger.error({ err, queueId: m.id }, 'limiter refused a transaction');
      }
      return deferRest('limiter-unavailable', `rate limiter unavailable: ${(err as Error).message}`);
    }
  }

  /** One upstream transaction under `ticket`; the ticket is settled with what SES answered. */
  private async sendTransaction(
    task: Task,
    recipients: string[],
    ticket: Ticket,
  ): Promise<RecipientResult[]> {
    task.sending = true;
    let results: RecipientResult[];
    try {
      results = await sendUpstream(this, task.message, recipients, !task.waitObserved);
      task.waitObserved = true;
    } finally {
      task.sending = false;
    }
    const refusal = results.find((r) => r.signal)?.reply;
    await ticket.settle(outcomeCounts(results), refusal);
    return results;
  }

  /** End the attempt: write what is not yet durable (retrying while the spool refuses), then report. */
  private async settle(task: Task, attempt: Attempt): Promise<void> {
    if (task.abandoned) return;
    const m = task.message;
    const { outcomes, deferrals } = attempt;
    const rest = [...outcomes, ...deferrals.map((d) => d.outcome)];
    let retryAt: number | undefined;
    let countAttempt = true;
    if (deferrals.length) {
      const { delay, counted } = retryDelay(this.retryPolicy, m.attempts, deferrals);
      retryAt = this.now() + delay;
      countAttempt = counted;
    }
    task.unrecordedDelivered = outcomes.filter((o) => o.status === 'delivered').length;
    const state = await this.writer.persist(
      m.id,
      () => this.spool.settle(m.id, rest, { retryAt, countAttempt }),
      () => task.abandoned,
    );
    if (state === undefined) return; // abandoned at shutdown: stop() logged it
    task.unrecordedDelivered = 0;
    reportAttempt({
      logger: this.logger,
      upstream: this.transport.name,
      message: m,
      outcomes: [...attempt.recorded, ...rest],
      deferrals,
      retryAt,
      countAttempt,
      now: this.now(),
    });
  }

  /**
   * Stop leasing, abort admission waits, let SMTP transactions in flight finish within `graceMs`, then
   * release whatever is still leased (due again at once; after a restart anyway).
   */
  async stop(graceMs: number): Promise<void> {
    if (!this.running && this.tasks.size === 0) return;
    this.running = false;
    this.abort.abort(new Error('dispatcher stopping'));
    this.wake();
    await this.loopDone;
    const pending = [...this.tasks.values()];
    if (pending.length) {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        Promise.all(pending.map((t) => t.promise)).then(() => false),
        new Promise<boolean>((r) => {
          timer = setTimeout(() => r(true), Math.max(0, graceMs));
        }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        for (const t of this.tasks.values()) t.abandoned = true;
        this.writer.wakeAll();
        releaseAbandoned(this.spool, this.logger, [...this.tasks.values()]);
        this.tasks.clear();
      }
    }
    // Let callers waiting for idle() go.
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
