/**
 * Admission state shared by every replica of one LIMITER_ID through Redis (REDIS_URL set): the rate
 * formula runs as one Lua script (redis-rate-script.ts) on Redis's clock, so the replicas share one
 * bucket, one in-flight count, one AIMD fraction and one delivery pause.
 *
 * - Tokens: each admission is one script call; a replica whose oldest waiter must wait sleeps for the
 *   script's estimate (at most LIMITER_HEARTBEAT) and asks again. A late poll loses nothing: tokens
 *   accrue from elapsed time, only the bucket's cap bounds them.
 * - In flight: one sorted-set entry per transaction, `<replica>:<seq>:<recipients>`, counted until the
 *   transaction finished. While it runs the replica renews it every `inFlightTtlMs / 4` (a 40 MB body can
 *   take far longer than the TTL); a replica killed mid-transaction stops renewing and its entries stop
 *   counting `inFlightTtlMs` after the last renewal (by then the transaction arrived at SES or never will).
 * - Tenants: a take for a tenant passes its key (`tenant:<name>`: its rate_limit bucket and its finish tag)
 *   and its weight; the script checks the limit, then the tenant's turn on one weighted virtual clock
 *   shared by every replica (the `waiting` registry: a tenant whose start tag is ahead of another asking
 *   tenant's waits for it), so weights hold across replicas, not only within each one's fair turn.
 * - Throttling, pause, probe: the script's `throttle`, `pause`, `resume` and `probe` operations. Every
 *   replica polls the state every `probeMs` (a cheap read that is also the health check) to learn a pause,
 *   its end, or the fraction another replica set.
 * - Redis unreachable: nothing is admitted. Calls reject at once with LimiterUnavailableError (delivery
 *   defers and tries again), `available()` is false and each change is logged once. Every command has a
 *   timeout, so no admission waits on a dead socket.
 * - Keys without data (first start, or Redis lost its data): the bucket starts EMPTY, as the local one
 *   does (nothing is known about what was sent in the last second); the state key lives one day after
 *   its last use, so an idle relay finds its bucket full again, not missing.
 */
import { randomBytes } from 'node:crypto';
import Redis, { type RedisOptions } from 'ioredis';
import type { Logger } from '../../observability/logger';
import { LimiterUnavailableError } from './admission-errors';
import {
  isPauseReason,
  type AdmissionBackend,
  type BackendReading,
  type DeliveryPauseState,
  type PauseReason,
  type TakeAnswer,
  type TenantShare,
} from './backend';
import type { PauseLedger } from './pause-ledger';
import type { RateParams, Reaction } from './rate-state';
import { RATE_LUA, parseRateReply, type RateReply } from './redis-rate-script';

export interface RedisBackendOptions {
  redisUrl: string;
  limiterId: string;
  params: RateParams;
  ledger: PauseLedger;
  logger?: Logger;
  /** Timeout of every Redis command and connection attempt (default 1000 ms). */
  commandTimeoutMs?: number;
  /** How long create() waits for Redis before returning an unavailable back end (default 3000 ms). */
  connectTimeoutMs?: number;
  /** State poll and health check period (default 250 ms). */
  probeMs?: number;
  /** In-flight entries stop counting this long after their last renewal (default 2000 ms). */
  inFlightTtlMs?: number;
  /** LIMITER_HEARTBEAT: the longest a waiting transaction goes without asking again (default 50 ms). */
  heartbeatMs?: number;
}

type RateCommand = (...args: string[]) => Promise<unknown>;

export class RedisBackend implements AdmissionBackend {
  readonly kind = 'redis';
  readonly keys: string[];
  /** Prefix of the tenants' keys (same hash tag). */
  private readonly tenantKeyPrefix: string;
  /** The tenants with a transaction waiting for the shared bucket: by start tag, by last ask. */
  private readonly waitingKeys: [string, string];
  /** A waiting tenant no replica asked for this long is forgotten (it stopped waiting or died). */
  private readonly waitingTtlMs: number;
  private readonly params: RateParams;
  private readonly client: Redis;
  private readonly replica = randomBytes(4).toString('hex');
  private readonly ttlMs: number;
  private readonly logger?: Logger;
  private readonly ledger: PauseLedger;
  private readonly timer: NodeJS.Timeout;
  private renewTimer?: NodeJS.Timeout;
  /** Entries of transactions admitted here and not finished: renewed while they run. */
  private readonly mine = new Set<string>();
  private isAvailable = false;
  private loggedAvailable?: boolean;
  private stopped = false;
  private polling = false;
  private last: BackendReading = { fraction: 1, inFlight: 0, events: 0 };
  private readonly listeners = new Set<() => void>();

  /** Connects (waiting up to connectTimeoutMs); resolves even when Redis is down (then unavailable). */
  static async create(options: RedisBackendOptions): Promise<RedisBackend> {
    const backend = new RedisBackend(options);
    const deadline = Date.now() + (options.connectTimeoutMs ?? 3000);
    while (!backend.isAvailable && !backend.stopped && Date.now() < deadline) {
      await backend.poll();
      if (!backend.isAvailable) await new Promise((r) => setTimeout(r, 50));
    }
    if (!backend.isAvailable) backend.setAvailable(false, new Error('Redis not reachable at start'));
    return backend;
  }

  private constructor(options: RedisBackendOptions) {
    this.params = { ...options.params };
    this.ttlMs = options.inFlightTtlMs ?? 2000;
    this.logger = options.logger;
    this.ledger = options.ledger;
    // The hash tag keeps every key in one slot (Redis Cluster friendly).
    this.keys = ['rate', 'inflight', 'pause', 'paused', 'probe'].map(
      (k) => `ses-relay:{${options.limiterId}}:${k}`,
    );
    this.tenantKeyPrefix = `ses-relay:{${options.limiterId}}:tenant:`;
    this.waitingKeys = [
      `ses-relay:{${options.limiterId}}:waiting`,
      `ses-relay:{${options.limiterId}}:waiting-seen`,
    ];
    this.waitingTtlMs = 4 * (options.heartbeatMs ?? 50) + 100;
    const timeout = options.commandTimeoutMs ?? 1000;
    const clientOptions: RedisOptions = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: timeout,
      connectTimeout: timeout,
      retryStrategy: () => 250,
    };
    this.client = new Redis(options.redisUrl, clientOptions);
    this.client.on('error', () => {
      /* reported through the calls and the poll */
    });
    this.client.on('close', () => {
      if (this.isAvailable) this.setAvailable(false, new Error('Redis connection closed'));
    });
    this.client.defineCommand('sesRelayRate', { numberOfKeys: 8, lua: RATE_LUA });
    this.timer = setInterval(() => void this.poll(), options.probeMs ?? 250);
    this.timer.unref();
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
    return this.isAvailable && !this.stopped;
  }

  private async call(op: string, ...args: string[]): Promise<RateReply> {
    return this.callWith(`${this.tenantKeyPrefix}-`, op, ...args);
  }

  /** One script call; `tenantKey` is KEYS[6] (read only by a take for a tenant). */
  private async callWith(tenantKey: string, op: string, ...args: string[]): Promise<RateReply> {
    if (this.stopped) throw new LimiterUnavailableError('limiter stopped');
    const p = this.params;
    const cmd = (this.client as unknown as { sesRelayRate: RateCommand }).sesRelayRate.bind(this.client);
    let raw: unknown;
    try {
      raw = await cmd(
        ...this.keys,
        tenantKey,
        this.waitingKeys[0],
        this.waitingKeys[1],
        op,
        '',
        String(p.rate),
        String(p.burst),
        String(p.factor),
        String(p.recoveryMs),
        String(p.holdMs),
        String(p.debounceMs),
        String(p.repeatMs),
        String(p.floor),
        String(p.claimMs),
        String(this.ttlMs),
        ...args,
      );
    } catch (err) {
      this.setAvailable(false, err);
      throw new LimiterUnavailableError('limiter unavailable: Redis unreachable, delivery paused', err);
    }
    const reply = parseRateReply(raw);
    this.observe(reply);
    return reply;
  }

  /** Learn the shared state from any reply: the fraction, the in-flight count, a pause begun or ended. */
  private observe(r: RateReply): void {
    const before = this.last.pause;
    const pause: DeliveryPauseState | undefined =
      r.pauseReason && isPauseReason(r.pauseReason)
        ? { reason: r.pauseReason, since: r.pauseSince }
        : undefined;
    this.last = { fraction: r.fraction, inFlight: r.inFlight, pause, events: r.events };
    if (!this.isAvailable) this.setAvailable(true);
    if ((before?.since ?? 0) === (pause?.since ?? 0)) return;
    if (before && !pause) {
      this.ledger.end(Date.now());
      void this.syncPastPauses();
    }
    if (pause) {
      if (before) this.ledger.end(pause.since);
      this.ledger.start(pause);
    }
    this.emit();
  }

  private async syncPastPauses(): Promise<void> {
    try {
      const list = await this.client.lrange(this.keys[3], 0, -1);
      this.ledger.merge(
        list
          .map((x) => x.split(':').map(Number) as [number, number])
          .filter((x) => x.length === 2 && x.every(Number.isFinite)),
      );
    } catch {
      /* the next change tries again */
    }
  }

  /** The periodic read: health check and the other replicas' changes; reconnects after an outage. */
  private async poll(): Promise<void> {
    if (this.polling || this.stopped) return;
    this.polling = true;
    try {
      const wasAvailable = this.isAvailable;
      await this.call('read');
      if (!wasAvailable) await this.syncPastPauses();
    } catch {
      /* setAvailable(false) logged it */
    } finally {
      this.polling = false;
    }
  }

  private setAvailable(available: boolean, cause?: unknown): void {
    const changed = this.isAvailable !== available;
    this.isAvailable = available;
    if (changed) this.emit();
    if (this.loggedAvailable === available || this.stopped) return;
    this.loggedAvailable = available;
    if (available) {
      this.logger?.info(
        { event: 'limiter:available', limiterId: this.keys[0] },
        'shared admission connected to Redis: delivery runs',
      );
    } else {
      this.logger?.warn(
        { event: 'limiter:unavailable', limiterId: this.keys[0], err: cause },
        'shared admission cannot reach Redis: delivery paused',
      );
    }
  }

  async take(n: number, id: string, probe: boolean, tenant?: TenantShare): Promise<TakeAnswer> {
    if (!this.available()) {
      throw new LimiterUnavailableError('limiter unavailable: Redis unreachable, delivery paused');
    }
    const member = `${this.replica}:${id}:${n}`;
    const args = [String(n), member, probe ? '1' : '0'];
    if (tenant) {
      const rate = tenant.rate !== undefined ? String(tenant.rate) : '';
      args.push(rate, String(tenant.weight), tenant.name, String(this.waitingTtlMs));
    }
    const key = tenant ? this.tenantKeyPrefix + tenant.name : `${this.tenantKeyPrefix}-`;
    const r = await this.callWith(key, 'take', ...args);
    if (r.status === 'granted') this.track(member);
    if (r.status === 'tenant') return { status: 'tenant-wait', waitMs: r.waitMs };
    const status = r.status === 'granted' || r.status === 'paused' ? r.status : 'wait';
    return { status, waitMs: r.waitMs };
  }

  async finish(id: string, n: number, refund: boolean): Promise<void> {
    const member = `${this.replica}:${id}:${n}`;
    if (!this.mine.has(member)) return;
    this.untrack(member);
    // If Redis is gone the entry simply counts until its TTL runs out.
    await this.call('finish', String(n), member, refund ? '1' : '0').catch(() => undefined);
  }

  async throttle(): Promise<{ reaction: Reaction; fraction: number }> {
    const r = await this.call('throttle');
    const reaction: Reaction = r.reaction === 'pause' || r.reaction === 'decrease' ? r.reaction : 'none';
    return { reaction, fraction: r.fraction };
  }

  async pause(reason: PauseReason, probeIntervalMs: number) {
    const r = await this.call('pause', reason, String(probeIntervalMs));
    const state = this.last.pause ?? { reason, since: r.pauseSince };
    return { changed: r.status === 'changed', state };
  }

  async resume(): Promise<DeliveryPauseState | undefined> {
    const before = this.last.pause;
    const r = await this.call('resume');
    return r.status === 'changed' ? before : undefined;
  }

  async claimProbe(intervalMs: number): Promise<boolean> {
    const r = await this.call('probe', String(intervalMs));
    return r.status === 'claimed';
  }

  pastPauses(): Array<[number, number]> {
    return this.ledger.pastPauses();
  }

  reading(): BackendReading {
    return this.last;
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  private emit(): void {
    for (const l of [...this.listeners]) l();
  }

  /**
   * SES_RATE_LIMIT=auto read a new MaxSendRate: bring the shared bucket up to now at the old rate, then
   * ask at the new one. Every replica of the limiter id reads the same account, so they agree.
   */
  setRate(rate: number): void {
    if (rate === this.params.rate) return;
    // call() builds its arguments at once: this refill still runs at the old rate.
    void this.call('finish', '0', '-', '0').catch(() => undefined);
    this.params.rate = rate;
  }

  private track(member: string): void {
    this.mine.add(member);
    if (this.renewTimer) return;
    this.renewTimer = setInterval(() => this.renew(), Math.max(10, Math.floor(this.ttlMs / 4)));
    this.renewTimer.unref();
  }

  private untrack(member: string): void {
    this.mine.delete(member);
    if (this.mine.size === 0 && this.renewTimer) {
      clearInterval(this.renewTimer);
      this.renewTimer = undefined;
    }
  }

  private renew(): void {
    if (this.stopped || this.mine.size === 0) return;
    // Best effort: a missed renewal is retried at the next tick; the TTL covers three of them.
    void this.call('renew', ...this.mine).catch(() => undefined);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.mine.clear();
    this.isAvailable = false;
    this.listeners.clear();
    this.client.disconnect();
  }
}
