/**
 * The last guard before SES: a sliding one-second window over what actually went upstream.
 *
 * The token bucket bounds the moments tokens are GRANTED. SES counts the moments transactions ARRIVE, and
 * these can bunch: tokens granted while the first TLS connections are still opening (or while the event
 * loop is busy taking in a burst) reach SES together a few hundred milliseconds later. Measured at
 * 200 recipients/s: 426-476 recipients in SES's first second against a bound of 400.
 *
 * So before each upstream transaction the dispatcher also asks this window: recipients SES accepted in the
 * last second + recipients in transactions still in flight + this transaction must fit in
 * `effective rate × 1 s + burst`. Proof sketch: take any one-second window at SES and the last transaction
 * it contains to have started, at time s. Everything else in that window was either accepted within
 * (s - 1 s, s] or in flight at s, so the admission check at s bounded the whole window. In steady state the
 * check is not binding (accepted-last-second + in-flight ≈ rate), so the backlog still drains at the full rate.
 * It is per process: with a Redis-shared limiter each replica guards its own upstream traffic.
 */
import { performance } from 'node:perf_hooks';

export interface UpstreamWindowOptions {
  /** Recipients allowed in any window (rate × window + burst); read at each check, so throttling applies. */
  capacity: () => number;
  windowMs?: number;
  now?: () => number;
}

interface Waiter {
  n: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** An admitted upstream transaction, handed back to done(). */
export interface SendTicket {
  n: number;
  /** Implementation detail (e.g. the shared window's entry name). */
  id?: string;
}

/**
 * The guard as the dispatcher sees it: this in-process window, or the Redis-shared one of a RedisLimiter
 * (redis-upstream-window.ts), which covers every replica's traffic.
 */
export interface SendWindow {
  /** Wait until `n` more recipients fit, then count them as in flight. */
  admit(n: number, signal?: AbortSignal): Promise<SendTicket>;
  /** The admitted transaction finished (accepted, refused or failed). */
  done(ticket: SendTicket): void;
  close(): void;
}

export class UpstreamWindow implements SendWindow {
  private readonly windowMs: number;
  private readonly now: () => number;
  /** Upstream transactions finished within the window: [time, recipients], oldest first. */
  private readonly sent: Array<[number, number]> = [];
  private sentSum = 0;
  private inFlight = 0;
  private readonly waiters: Waiter[] = [];
  private timer?: NodeJS.Timeout;

  constructor(private readonly options: UpstreamWindowOptions) {
    this.windowMs = options.windowMs ?? 1000;
    this.now = options.now ?? (() => performance.now());
  }

  /** Wait until `n` more recipients fit in the window, then count them as in flight. */
  admit(n: number, signal?: AbortSignal): Promise<SendTicket> {
    if (signal?.aborted) return Promise.reject(new Error('aborted'));
    if (this.waiters.length === 0 && this.fits(n)) {
      this.inFlight += n;
      return Promise.resolve({ n });
    }
    return new Promise<SendTicket>((resolve, reject) => {
      const waiter: Waiter = {
        n,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve({ n });
        },
        reject,
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error('aborted'));
        this.wake();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
      this.wake();
    });
  }

  /** The transaction admitted for `n` recipients has finished (accepted, refused or failed). */
  done(ticket: SendTicket): void {
    const n = ticket.n;
    this.inFlight = Math.max(0, this.inFlight - n);
    this.sent.push([this.now(), n]);
    this.sentSum += n;
    this.wake();
  }

  /** Recipients counted against the window right now (sent in the last window + in flight). */
  load(): number {
    this.expire();
    return this.sentSum + this.inFlight;
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.waiters.splice(0)) w.reject(new Error('upstream window closed'));
  }

  private expire(): void {
    const cutoff = this.now() - this.windowMs;
    while (this.sent.length && this.sent[0][0] <= cutoff) this.sentSum -= this.sent.shift()![1];
  }

  private fits(n: number): boolean {
    // A transaction larger than the whole capacity still goes out once the window is empty.
    return this.load() + n <= this.options.capacity() || this.load() === 0;
  }

  /** Admit waiters in order while they fit; otherwise sleep until the oldest sent entry leaves the window. */
  private wake(): void {
    while (this.waiters.length && this.fits(this.waiters[0].n)) {
      const w = this.waiters.shift()!;
      this.inFlight += w.n;
      w.resolve();
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.waiters.length && this.sent.length) {
      const delay = Math.max(1, this.sent[0][0] + this.windowMs - this.now() + 1);
      this.timer = setTimeout(() => this.wake(), delay);
      this.timer.unref();
    }
  }
}
