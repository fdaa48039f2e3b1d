/**
 * A tenant's daily quota (`daily_quota` of an API key or SMTP_USER_POLICY_FILE entry): recipients accepted
 * per UTC day. The ingress asks `check` before it accepts a MAIL FROM or RCPT TO and calls `add` once a
 * message is acknowledged (250 after fsync), with the recipients it stored; src/ingress/quota-gate.ts
 * holds the recipients of transactions in progress.
 *
 * - Local (no REDIS_URL): a count per tenant in memory, for the current UTC day. A restart resets it (the
 *   day starts again from 0 for this process); each replica counts alone.
 * - Redis (REDIS_URL): one counter per tenant per UTC day, `ses-relay:{LIMITER_ID}:tenant-quota:<day>:<tenant>`,
 *   INCRBY on acknowledgement, expiring after 2 days; shared by every replica with the same LIMITER_ID.
 * - Redis unreachable: `check` rejects with TenantQuotaUnavailableError at once (no offline queue, every
 *   command with a timeout): the client gets 451 4.3.0 and retries, as for an unavailable limiter. The
 *   relay never accepts mail for a quota it cannot read (fail closed: a quota is a promise to the tenant's
 *   owner). An `add` that fails is logged and lost: the day's count is then low by that message.
 * - The day is the UTC day of the injected clock (`now`), so it rolls over at 00:00 UTC.
 *
 * Tenants without a daily_quota are never counted here (no Redis call).
 */
import Redis, { type RedisOptions } from 'ioredis';
import type { Logger } from '../observability/logger';
import type { Tenant } from '../types';

export class TenantQuotaUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'TenantQuotaUnavailableError';
  }
}

export interface QuotaCheck {
  /** True when `n` more recipients fit in today's quota (always true without one). */
  allowed: boolean;
  /** Recipients counted today (0 for a tenant without a quota). */
  used: number;
  limit?: number;
}

export interface TenantQuota {
  readonly kind: 'local' | 'redis';
  /** Would `n` more recipients fit in the tenant's quota today? Rejects with TenantQuotaUnavailableError. */
  check(tenant: Tenant, n: number): Promise<QuotaCheck>;
  /** Count `n` recipients accepted now (after the 250). */
  add(tenant: Tenant, n: number): Promise<void>;
  close(): Promise<void>;
}

/** The UTC day of a time: `2025-01-31`. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Counter storage for one tenant per UTC day. */
interface QuotaStore {
  used(tenant: string, day: string): Promise<number>;
  add(tenant: string, day: string, n: number): Promise<void>;
  close(): Promise<void>;
}

class DailyQuota implements TenantQuota {
  constructor(
    readonly kind: 'local' | 'redis',
    private readonly store: QuotaStore,
    private readonly now: () => number,
  ) {}

  async check(tenant: Tenant, n: number): Promise<QuotaCheck> {
    const limit = tenant.dailyQuota;
    if (limit === undefined) return { allowed: true, used: 0 };
    const used = await this.store.used(tenant.name, utcDay(this.now()));
    return { allowed: used + n <= limit, used, limit };
  }

  async add(tenant: Tenant, n: number): Promise<void> {
    if (tenant.dailyQuota === undefined || n <= 0) return;
    await this.store.add(tenant.name, utcDay(this.now()), n);
  }

  close(): Promise<void> {
    return this.store.close();
  }
}

class LocalStore implements QuotaStore {
  private readonly counts = new Map<string, { day: string; used: number }>();

  used(tenant: string, day: string): Promise<number> {
    const c = this.counts.get(tenant);
    return Promise.resolve(c && c.day === day ? c.used : 0);
  }

  add(tenant: string, day: string, n: number): Promise<void> {
    const c = this.counts.get(tenant);
    this.counts.set(tenant, { day, used: (c && c.day === day ? c.used : 0) + n });
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** How long a day's counter is kept: the day itself plus one (a late replica's clock, inspection). */
const KEY_TTL_MS = 2 * 24 * 3600_000;

class RedisStore implements QuotaStore {
  private readonly client: Redis;
  private stopped = false;

  constructor(
    redisUrl: string,
    private readonly prefix: string,
    commandTimeoutMs: number,
  ) {
    const options: RedisOptions = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: commandTimeoutMs,
      connectTimeout: commandTimeoutMs,
      retryStrategy: () => 250,
    };
    this.client = new Redis(redisUrl, options);
    this.client.on('error', () => {
      /* reported through the calls */
    });
  }

  private key(tenant: string, day: string): string {
    return `${this.prefix}:${day}:${encodeURIComponent(tenant)}`;
  }

  private unavailable(err: unknown): TenantQuotaUnavailableError {
    const detail = err instanceof Error ? err.message : String(err);
    return new TenantQuotaUnavailableError(`tenant quota unavailable: Redis unreachable (${detail})`, err);
  }

  async used(tenant: string, day: string): Promise<number> {
    if (this.stopped) throw new TenantQuotaUnavailableError('tenant quota stopped');
    let raw: string | null;
    try {
      raw = await this.client.get(this.key(tenant, day));
    } catch (err) {
      throw this.unavailable(err);
    }
    const used = raw === null ? 0 : Number(raw);
    return Number.isFinite(used) ? used : 0;
  }

  async add(tenant: string, day: string, n: number): Promise<void> {
    if (this.stopped) throw new TenantQuotaUnavailableError('tenant quota stopped');
    const key = this.key(tenant, day);
    try {
      await this.client.multi().incrby(key, n).pexpire(key, KEY_TTL_MS).exec();
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.client.disconnect();
    return Promise.resolve();
  }
}

export interface TenantQuotaOptions {
  /** Shared counters in Redis when set; in memory otherwise. */
  redisUrl?: string;
  /** Replicas with the same id share the counters (LIMITER_ID). */
  limiterId?: string;
  /** Timeout of every Redis command and connection attempt (default 1000 ms). */
  commandTimeoutMs?: number;
  /** The clock (tests); Date.now otherwise. */
  now?: () => number;
  logger?: Logger;
}

export function createTenantQuota(options: TenantQuotaOptions = {}): TenantQuota {
  const now = options.now ?? Date.now;
  if (!options.redisUrl) return new DailyQuota('local', new LocalStore(), now);
  const prefix = `ses-relay:{${options.limiterId ?? 'ses-email-service'}}:tenant-quota`;
  const store = new RedisStore(options.redisUrl, prefix, options.commandTimeoutMs ?? 1000);
  return new DailyQuota('redis', store, now);
}
