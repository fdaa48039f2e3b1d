/**
 * The turn of asking for tokens, served in weighted fair order by tenant (not in arrival order): of the
 * transactions waiting, the next turn goes to the first waiter of the tenant with the smallest start tag
 * (start-time fair queuing by recipients, spool/fair-clock.ts, weights TENANT_WEIGHTS), so a tenant's single
 * message waits for at most about one transaction per other tenant, not for every bulk transaction that
 * arrived before it. Within a tenant, arrival order.
 *
 * A tenant at its own rate_limit is set aside (`defer`) until its bucket has room again: its waiters keep
 * their place but are not eligible, and the turn goes on to the others (no head-of-line blocking). The
 * clock is charged only for recipients actually granted (`charge`).
 */
import { FairClock } from '../../spool/fair-clock';

export interface TurnRequest {
  tenant: string;
  /** TENANT_WEIGHTS of the tenant's priority. */
  weight: number;
}

interface Waiter extends TurnRequest {
  grant: () => void;
}

export class FairTurn {
  private readonly clock = new FairClock();
  private readonly waiting: Waiter[] = [];
  /** Tenants at their rate_limit: not eligible before this time (ms, the admission clock). */
  private readonly notBefore = new Map<string, number>();
  private busy = false;
  private timer?: NodeJS.Timeout;
  private timerAt = Infinity;

  constructor(private readonly now: () => number) {}

  /** Resolves once the caller holds the turn (release() it); rejects when `signal` aborts. */
  acquire(request: TurnRequest, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new Error('stopping'));
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new Error('stopping'));
      };
      const waiter: Waiter = {
        ...request,
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
      this.dispatch();
    });
  }

  /** The holder is done asking (granted, or set aside): the next eligible waiter gets the turn. */
  release(): void {
    this.busy = false;
    this.dispatch();
  }

  /** `tenant` is at its rate_limit for `ms` more: its waiters are passed over until then. */
  defer(tenant: string, ms: number): void {
    this.notBefore.set(tenant, this.now() + Math.max(1, ms));
  }

  /** Recipients granted to `tenant` (moves its tag: its next turn comes after the others' share). */
  charge(tenant: string, recipients: number, weight: number): void {
    this.clock.charge(tenant, recipients, weight);
  }

  /** Waiting transactions (tests, metrics). */
  get length(): number {
    return this.waiting.length;
  }

  private eligible(tenant: string, now: number): boolean {
    const until = this.notBefore.get(tenant);
    if (until === undefined) return true;
    if (until > now) return false;
    this.notBefore.delete(tenant);
    return true;
  }

  private dispatch(): void {
    if (this.busy || this.waiting.length === 0) return;
    const now = this.now();
    const firsts = new Map<string, Waiter>();
    for (const w of this.waiting) {
      if (!firsts.has(w.tenant) && this.eligible(w.tenant, now)) firsts.set(w.tenant, w);
    }
    const next = this.clock.pick([...firsts.values()], (w) => w.tenant);
    if (!next) {
      this.wakeAtNextEligible(now);
      return;
    }
    this.waiting.splice(this.waiting.indexOf(next), 1);
    this.busy = true;
    next.grant();
  }

  /** Every waiting tenant is at its limit: look again when the first one has room. */
  private wakeAtNextEligible(now: number): void {
    let at = Infinity;
    for (const w of this.waiting) at = Math.min(at, this.notBefore.get(w.tenant) ?? now);
    if (this.timer && this.timerAt <= at) return;
    this.stop();
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Infinity;
        this.dispatch();
      },
      Math.max(1, Math.ceil(at - now)),
    );
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }
}
