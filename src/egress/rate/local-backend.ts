/**
 * Admission state in the process (no REDIS_URL): the rate formula of rate-state.ts on a monotonic clock,
 * the delivery pause in the pause ledger (kept across restarts in the spool directory).
 *
 * The bucket starts EMPTY. An in-process bucket remembers nothing across a restart, so one that started
 * full would grant `burst` recipients at once after every start: a crash loop (or a rolling restart)
 * would be a burst each time, on top of what the previous process sent just before it stopped. Starting
 * empty, a process admits at most `rate × t` in its first t seconds, so over any window the processes
 * that ran one after another on the spool stay within `rate × W + burst`. The cost is one bucket's worth
 * at a cold start (`burst / rate` seconds: 1 s with the default SES_BURST); the drain rate is unchanged.
 */
import { performance } from 'node:perf_hooks';
import type {
  AdmissionBackend,
  BackendReading,
  DeliveryPauseState,
  PauseReason,
  TakeAnswer,
  TenantShare,
} from './backend';
import type { PauseLedger } from './pause-ledger';
import { emptyState, finish, fraction, take, throttle, type RateParams, type RateState } from './rate-state';
import { tenantTatAfter, tenantWait } from './tenant-bucket';

export class LocalBackend implements AdmissionBackend {
  readonly kind = 'local';
  private readonly params: RateParams;
  private readonly state: RateState;
  private readonly inFlight = new Map<string, number>();
  private inFlightSum = 0;
  private probeAt = 0;
  /** Tenants with a rate_limit: when their bucket is full again (GCRA's theoretical arrival time, ms). */
  private readonly tenantTat = new Map<string, number>();
  private readonly listeners = new Set<() => void>();

  constructor(
    params: RateParams,
    private readonly ledger: PauseLedger,
    private readonly clock: () => number = () => performance.now(),
    private readonly wallClock: () => number = Date.now,
  ) {
    this.params = { ...params };
    this.state = emptyState(this.clock());
  }

  get burst(): number {
    return this.params.burst;
  }

  get rate(): number {
    return this.params.rate;
  }

  set rate(rate: number) {
    this.setRate(rate);
  }

  available(): boolean {
    return true;
  }

  async take(n: number, id: string, probe: boolean, tenant?: TenantShare): Promise<TakeAnswer> {
    const now = this.clock();
    // The weight is the fair turn's business in one process; only the tenant's own limit is checked here.
    const limited = tenant?.rate !== undefined ? { name: tenant.name, rate: tenant.rate } : undefined;
    if (limited) {
      const wait = tenantWait(this.tenantTat.get(limited.name) ?? 0, limited.rate, n, now);
      if (wait > 0) return { status: 'tenant-wait', waitMs: wait };
    }
    const paused = this.ledger.current !== undefined;
    const r = take(this.state, this.params, now, n, id, this.inFlightSum, paused, probe);
    if (r.status === 'granted') {
      this.inFlight.set(id, n);
      this.inFlightSum += n;
      if (limited) this.chargeTenant(limited, n, now);
    }
    return r;
  }

  private chargeTenant(tenant: { name: string; rate: number }, n: number, now: number): void {
    this.tenantTat.set(
      tenant.name,
      tenantTatAfter(this.tenantTat.get(tenant.name) ?? 0, tenant.rate, n, now),
    );
    if (this.tenantTat.size > 1000) {
      for (const [name, tat] of this.tenantTat) if (tat <= now) this.tenantTat.delete(name);
    }
  }

  async finish(id: string, n: number, refund: boolean): Promise<void> {
    if (!this.inFlight.has(id)) return;
    finish(this.state, this.params, this.clock(), n, this.inFlightSum, refund);
    this.inFlight.delete(id);
    this.inFlightSum -= n;
  }

  async throttle() {
    return throttle(this.state, this.params, this.clock(), this.inFlightSum);
  }

  async pause(reason: PauseReason, probeIntervalMs: number) {
    if (this.ledger.current) return { changed: false, state: this.ledger.current };
    const state = { reason, since: this.wallClock() };
    this.ledger.start(state);
    // The first probe comes one interval after the pause began.
    this.probeAt = this.wallClock() + probeIntervalMs;
    this.emit();
    return { changed: true, state };
  }

  async resume(): Promise<DeliveryPauseState | undefined> {
    const ended = this.ledger.end(this.wallClock());
    if (ended) this.emit();
    return ended;
  }

  async claimProbe(intervalMs: number): Promise<boolean> {
    const now = this.wallClock();
    // Paused since before this process started: the first probe one interval after the start.
    if (this.probeAt === 0) this.probeAt = now + intervalMs;
    if (now < this.probeAt) return false;
    this.probeAt = now + intervalMs;
    return true;
  }

  pastPauses(): Array<[number, number]> {
    return this.ledger.pastPauses();
  }

  reading(): BackendReading {
    return {
      fraction: fraction(this.state, this.params, this.clock()),
      inFlight: this.inFlightSum,
      pause: this.ledger.current,
      events: this.state.events,
    };
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  private emit(): void {
    for (const l of [...this.listeners]) l();
  }

  /** From now on at `rate`: the tokens earned so far were earned at the old one. */
  setRate(rate: number): void {
    const now = this.clock();
    finish(this.state, this.params, now, 0, this.inFlightSum, false); // a refill up to now
    this.params.rate = rate;
  }

  async stop(): Promise<void> {
    this.listeners.clear();
  }
}
