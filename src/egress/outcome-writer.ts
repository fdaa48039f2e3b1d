/**
 * Writing delivery outcomes to the spool when the spool may refuse writes (disk full, I/O error,
 * read-only file system). The rule: an outcome SES gave us is never thrown away because it could not be
 * written, and a message is never sent again because of a write error.
 *
 * - `persist` retries the same write (spool.record or spool.settle, which keep the lease while they fail)
 *   with exponential backoff — 250 ms doubling to 10 s by default — until it is durable. The outcome stays
 *   in memory meanwhile; the message stays leased, so nothing sends it again.
 * - `blocked()` is true while the spool reports a failed write or an outcome waits to be written: the
 *   dispatcher then leases nothing and starts no SMTP transaction (`whenUnblocked`), and probes the spool
 *   (`probe`, a real durable write) with the same backoff, so delivery resumes by itself once writes work.
 *   (Postfix likewise stops delivering with "queue file write error" until its queue is writable.)
 */
import type { Logger } from '../observability/logger';
import { SpoolWriteError, type Spool } from '../spool/spool';
import { spoolSettleRetries } from '../spool/spool-metrics';
import type { MessageId } from '../types';

export const DEFAULT_SPOOL_RETRY_MS: [number, number] = [250, 10_000];

export class OutcomeWriter {
  /** Writes that failed and are being retried. */
  private retrying = 0;
  private readonly waiters = new Set<() => void>();

  constructor(
    private readonly spool: Spool,
    private readonly logger: Logger,
    /** Backoff between retries and probes: first delay, longest delay. */
    readonly retryMs: [number, number],
    /** Called when the spool looks writable again (the dispatcher wakes its loop). */
    private readonly onUnblocked: () => void,
  ) {}

  /** Delivery must not lease or send now. */
  blocked(): boolean {
    return this.retrying > 0 || !this.spool.health().writable;
  }

  /** An outcome is waiting to be written (the spool's own retries act as probes). */
  get retryingWrites(): number {
    return this.retrying;
  }

  /**
   * Run `write` until it is durable. Resolves with its value, or undefined when `abandoned()` turned true
   * first (shutdown past its grace). Errors other than SpoolWriteError are thrown at once.
   */
  async persist<T>(
    queueId: MessageId,
    write: () => Promise<T>,
    abandoned: () => boolean,
  ): Promise<T | undefined> {
    let delay = this.retryMs[0];
    let failing = false;
    try {
      for (;;) {
        if (abandoned()) return undefined;
        try {
          const value = await write();
          if (failing) {
            this.logger.info(
              { event: 'spool:outcome-written', queueId },
              'delivery outcome written to the spool after retries',
            );
          }
          return value;
        } catch (err) {
          if (!(err instanceof SpoolWriteError) || abandoned()) throw err;
          if (!failing) {
            failing = true;
            this.retrying += 1;
            this.logger.error(
              { event: 'spool:outcome-unwritten', queueId, err: err.message, retryInMs: delay },
              'delivery outcome could not be written to the spool: kept in memory and retried; the message is not sent again',
            );
          }
          spoolSettleRetries.inc();
          await this.pause(delay);
          delay = Math.min(delay * 2, this.retryMs[1]);
        }
      }
    } finally {
      if (failing) {
        this.retrying -= 1;
        if (!this.blocked()) this.unblocked();
      }
    }
  }

  /** Resolves once delivery may go on; rejects when `signal` aborts (shutdown). */
  async whenUnblocked(signal: AbortSignal): Promise<void> {
    while (this.blocked()) {
      if (signal.aborted) throw new Error('dispatcher stopping');
      await new Promise<void>((resolve) => {
        const done = () => {
          this.waiters.delete(done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        this.waiters.add(done);
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** One real durable write to the spool; true (and every waiter woken) when it worked. */
  async probe(): Promise<boolean> {
    const ok = await this.spool.isWritable().catch(() => false);
    if (ok && !this.blocked()) this.unblocked();
    return ok;
  }

  /** Wake every pause and waiter: the spool recovered, or shutdown abandoned the tasks. */
  wakeAll(): void {
    for (const wake of [...this.waiters]) wake();
  }

  private unblocked(): void {
    this.wakeAll();
    this.onUnblocked();
  }

  /** Sleep `ms`, or less when the spool recovers or wakeAll() is called. */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }
}
