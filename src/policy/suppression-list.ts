/**
 * The DynamoDB suppression list (USE_BLOCKLIST). A table keyed by `email` holds lowercase addresses and
 * whole domains (`@example.com`) that must not receive mail; the Lambda in lambda/ fills it from SES bounce
 * and complaint notifications, operators use src/cli/blocklist.ts (`ses-relay blocklist`).
 *
 * Cost: one BatchGetItem per check for every recipient and its domain (chunks of 100 keys), UnprocessedKeys
 * retried a bounded number of times; every answer, found or not, is cached for cacheTtlMs, so recipients
 * seen recently cost no request at all. When DynamoDB cannot answer, check() rejects with
 * PolicyUnavailableError (the caller defers the message) and healthy() is false until a request succeeds.
 */
import { BatchGetItemCommand, type AttributeValue, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { LRUCache } from 'lru-cache';
import type { Logger } from '../observability/logger';
import { normalizeAddress, suppressionKeys } from './address';
import {
  suppressionAvailable,
  suppressionBlocked,
  suppressionCacheHits,
  suppressionCacheMisses,
  suppressionErrors,
  suppressionLookupSeconds,
  suppressionLookups,
} from './policy-metrics';
import { PolicyUnavailableError, type PolicyDecision, type RecipientPolicy } from './policy';

/** DynamoDB's limit of keys in one BatchGetItem. */
export const BATCH_GET_MAX_KEYS = 100;

/** DynamoDB's limit for a partition key value: longer keys cannot be in the table (and would fail the batch). */
const MAX_KEY_BYTES = 2048;

export interface SuppressionListOptions {
  client: DynamoDBClient;
  table: string;
  /** How long an answer (suppressed or not) is reused; 0 disables the cache. */
  cacheTtlMs: number;
  /** Most keys kept in the cache. */
  cacheMax: number;
  logger: Logger;
  /** Extra BatchGetItem rounds for UnprocessedKeys before giving up (default 5). */
  maxUnprocessedRetries?: number;
  /** First backoff before retrying UnprocessedKeys, doubled each round (default 50 ms). */
  unprocessedBackoffMs?: number;
  /** While unhealthy, probe the table this often so /readyz recovers without traffic (default 5 s; 0: off). */
  recoveryProbeMs?: number;
}

/** What the table says about one key; cached for hits and misses alike. */
interface Entry {
  suppressed: boolean;
  reason?: string;
}

export class SuppressionList implements RecipientPolicy {
  private readonly client: DynamoDBClient;
  private readonly table: string;
  private readonly logger: Logger;
  private readonly cache?: LRUCache<string, Entry>;
  private readonly maxUnprocessedRetries: number;
  private readonly unprocessedBackoffMs: number;
  private readonly recoveryProbeMs: number;
  private available = true;
  private probeTimer?: NodeJS.Timeout;
  private closed = false;

  constructor(options: SuppressionListOptions) {
    this.client = options.client;
    this.table = options.table;
    this.logger = options.logger;
    this.maxUnprocessedRetries = options.maxUnprocessedRetries ?? 5;
    this.unprocessedBackoffMs = options.unprocessedBackoffMs ?? 50;
    this.recoveryProbeMs = options.recoveryProbeMs ?? 5_000;
    if (options.cacheTtlMs > 0 && options.cacheMax > 0) {
      this.cache = new LRUCache<string, Entry>({ max: options.cacheMax, ttl: options.cacheTtlMs });
    }
    suppressionAvailable.set(1);
  }

  async check(recipients: string[]): Promise<PolicyDecision> {
    const keysOf = recipients.map((r) => suppressionKeys(r));
    const known = new Map<string, Entry>();
    const missing: string[] = [];
    for (const key of new Set(keysOf.flat())) {
      const cached = this.cache?.get(key);
      if (cached) known.set(key, cached);
      else if (Buffer.byteLength(key) > MAX_KEY_BYTES) known.set(key, { suppressed: false });
      else missing.push(key);
    }
    suppressionCacheHits.inc(known.size);
    suppressionCacheMisses.inc(missing.length);

    if (missing.length > 0) {
      const fetched = await this.lookup(missing);
      for (const key of missing) {
        const entry: Entry = fetched.get(key) ?? { suppressed: false };
        known.set(key, entry);
        this.cache?.set(key, entry);
      }
    }

    const decision: PolicyDecision = { allowed: [], suppressed: [] };
    recipients.forEach((recipient, i) => {
      const matched = keysOf[i].find((k) => known.get(k)?.suppressed);
      if (matched === undefined) {
        decision.allowed.push(recipient);
      } else {
        const reason = known.get(matched)?.reason;
        decision.suppressed.push({ recipient, matched, ...(reason ? { reason } : {}) });
      }
    });
    suppressionBlocked.inc(decision.suppressed.length);
    return decision;
  }

  /** Is this one address suppressed? (The operator CLI; same rules as check.) */
  async isSuppressed(address: string): Promise<boolean> {
    const d = await this.check([normalizeAddress(address)]);
    return d.suppressed.length > 0;
  }

  healthy(): boolean {
    return this.available;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    this.cache?.clear();
  }

  /** Forget cached answers (tests, operator tooling). */
  clearCache(): void {
    this.cache?.clear();
  }

  /** Look keys up, all chunks in parallel; found keys only. Marks the table (un)available. */
  private async lookup(keys: string[]): Promise<Map<string, Entry>> {
    const stop = suppressionLookupSeconds.startTimer();
    try {
      const chunks: string[][] = [];
      for (let i = 0; i < keys.length; i += BATCH_GET_MAX_KEYS)
        chunks.push(keys.slice(i, i + BATCH_GET_MAX_KEYS));
      const results = await Promise.all(chunks.map((chunk) => this.batchGet(chunk)));
      this.markAvailable();
      return new Map(results.flatMap((r) => [...r]));
    } catch (err) {
      suppressionErrors.inc();
      this.markUnavailable(err);
      throw err instanceof PolicyUnavailableError
        ? err
        : new PolicyUnavailableError(`suppression list unavailable: ${describe(err)}`, err);
    } finally {
      stop();
    }
  }

  /** One BatchGetItem for at most 100 keys, then bounded retries of UnprocessedKeys with backoff. */
  private async batchGet(keys: string[]): Promise<Map<string, Entry>> {
    const found = new Map<string, Entry>();
    let pending: Record<string, AttributeValue>[] = keys.map((email) => ({ email: { S: email } }));
    for (let round = 0; pending.length > 0; round++) {
      if (round > this.maxUnprocessedRetries) {
        throw new PolicyUnavailableError(
          `suppression list throttled: ${pending.length} keys still unprocessed after ${round} requests`,
        );
      }
      if (round > 0) await sleep(this.unprocessedBackoffMs * 2 ** (round - 1) * (0.5 + Math.random()));
      suppressionLookups.inc();
      const out = await this.client.send(
        new BatchGetItemCommand({
          RequestItems: {
            [this.table]: {
              Keys: pending,
              ProjectionExpression: '#email, #reason',
              ExpressionAttributeNames: { '#email': 'email', '#reason': 'reason' },
            },
          },
        }),
      );
      for (const item of out.Responses?.[this.table] ?? []) {
        const email = item.email?.S;
        if (email)
          found.set(email, { suppressed: true, ...(item.reason?.S ? { reason: item.reason.S } : {}) });
      }
      pending = out.UnprocessedKeys?.[this.table]?.Keys ?? [];
    }
    return found;
  }

  private markAvailable(): void {
    if (!this.available) this.logger.info({ table: this.table }, 'suppression list reachable again');
    this.available = true;
    suppressionAvailable.set(1);
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  private markUnavailable(err: unknown): void {
    if (this.available) {
      this.logger.warn({ table: this.table, err: describe(err) }, 'suppression list unavailable');
    }
    this.available = false;
    suppressionAvailable.set(0);
    this.scheduleProbe();
  }

  /** While unavailable, a lookup of a key that never exists tells when the table answers again. */
  private scheduleProbe(): void {
    if (this.closed || this.recoveryProbeMs <= 0 || this.probeTimer) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      if (this.closed || this.available) return;
      this.lookup(['@probe.invalid']).catch(() => {
        /* lookup() already recorded the failure and scheduled the next probe */
      });
    }, this.recoveryProbeMs);
    this.probeTimer.unref();
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
