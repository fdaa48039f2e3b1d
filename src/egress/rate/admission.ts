/**
 * Admission to SES: the one place that decides whether an upstream transaction may go now.
 *
 *   const ticket = await admission.admit(recipients, signal);   // slot, tokens, window
 *   const results = await transport.send(...);
 *   await ticket.settle(outcomeCounts(results));                 // throttle feedback, slot back
 *
 * The dispatcher asks nothing else about rate: a connection slot, the recipient tokens and the send
 * window are taken in admit(), and what SES answered goes back through settle().
 */
import type { RecipientResult } from '../transport/transport';
import { LimiterUnavailableError, type LimiterStatus, type RecipientLimiter } from './limiter';
import { SendSlots } from './send-slots';
import { UpstreamWindow, type SendWindow } from './upstream-window';

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

/** An admitted transaction: its slot and its recipients, until settled. */
export interface Ticket {
  readonly recipients: number;
  /** SES answered (or the transport failed): feed the outcome back and free the slot. Once. */
  settle(outcomes: OutcomeCounts): Promise<void>;
  /** Nothing was sent after all (the spool became unwritable, shutdown): free the slot. */
  cancel(): void;
}

export interface AdmitOptions {
  /** Awaited after the connection slot and before the tokens (the dispatcher waits for a writable spool). */
  beforeTokens?: () => Promise<void>;
}

export type AdmissionStatus = LimiterStatus;

export interface Admission {
  /**
   * Wait until a transaction of `recipients` may go to SES. Rejects with LimiterUnavailableError when
   * admission cannot decide safely (shared store unreachable, stopped) or `signal` aborts; RangeError for
   * more recipients than the burst.
   */
  admit(recipients: number, signal: AbortSignal, options?: AdmitOptions): Promise<Ticket>;
  /** Run at `rate` recipients per second from now on (SES_RATE_LIMIT=auto). */
  setRate(rate: number): void;
  status(): AdmissionStatus;
  stop(): Promise<void>;
}

export interface LimiterAdmissionOptions {
  limiter: RecipientLimiter;
  /** Connection slots: at most this many transactions at once (SES_POOL_SIZE). */
  slots: number;
}

/** Admission over a recipient limiter, its send window and the dispatcher's connection slots. */
export class LimiterAdmission implements Admission {
  private readonly limiter: RecipientLimiter;
  private readonly slots: SendSlots;
  private readonly window: SendWindow;

  constructor(options: LimiterAdmissionOptions) {
    this.limiter = options.limiter;
    this.slots = new SendSlots(options.slots);
    const burst = Math.max(1, Math.floor(this.limiter.status().burst));
    this.window =
      this.limiter.sendWindow?.() ??
      new UpstreamWindow({ capacity: () => this.limiter.status().effectiveRate + burst });
  }

  async admit(recipients: number, signal: AbortSignal, options: AdmitOptions = {}): Promise<Ticket> {
    // A connection slot first, then the tokens: tokens are never spent on a transaction that would then
    // queue inside the pool waiting for a connection (and reach SES in a bunch).
    await this.slots.acquire(signal);
    try {
      await options.beforeTokens?.();
      await this.limiter.acquire(recipients, signal);
      const sent = await this.window.admit(recipients, signal);
      let done = false;
      const finish = () => {
        if (done) return false;
        done = true;
        this.window.done(sent);
        this.slots.release();
        return true;
      };
      return {
        recipients,
        settle: async (outcomes) => {
          if (finish() && (outcomes.throttled ?? 0) > 0) this.limiter.throttled();
        },
        cancel: () => void finish(),
      };
    } catch (err) {
      this.slots.release();
      if (err instanceof RangeError || err instanceof LimiterUnavailableError) throw err;
      if (signal.aborted) throw new LimiterUnavailableError('admission aborted', signal.reason);
      throw err;
    }
  }

  setRate(rate: number): void {
    this.limiter.setRate(rate);
  }

  status(): AdmissionStatus {
    return this.limiter.status();
  }

  async stop(): Promise<void> {
    this.window.close();
    await this.limiter.stop();
  }
}
