/**
 * The per-requester daily limit and the "already answered" check, decided in ONE atomic step per request.
 *
 * - The window is aligned to the Unix epoch (AUTORESPONDER_QUOTA_WINDOW, default 1d: the UTC day). The
 *   requester key is the whole address case-folded; only answered requests count.
 * - The requester and the request's Message-ID are stored only as keyed hashes: HMAC-SHA-256 with
 *   AUTORESPONDER_HASH_KEY (required with a shared table, so every replica hashes alike; generated once and
 *   kept in the local database otherwise). Without the key nobody can test whether an address asked.
 * - One item (row) per requester and window: `answered` (count) and `message_ids` (hashes of the Message-IDs
 *   answered in that window, at most the limit). A claim is granted when `answered < limit` and the
 *   Message-ID is not among them; granting increments and adds it in the same step. So a resent request in
 *   the same window gets no second set of replies, and concurrent requests on several replicas never
 *   exceed the limit.
 * - DynamoDB (AUTORESPONDER_QUOTA_TABLE, shared): one conditional UpdateItem per request; items carry
 *   `expires_at` (epoch seconds) for DynamoDB TTL. Local (no table): a SQLite database
 *   `<SPOOL_DIR>/autoresponder/quota.db` (its own file beside the spool, so it never contends with the
 *   spool's group commit or its locking), one transaction per request.
 * - `release` undoes a granted claim whose replies could not be stored (the request then gets a 4xx and is
 *   retried by its sender). A crash between a granted claim and the spool commit loses that request's
 *   replies (its retry is "already answered"): the window is one spool commit, and it never sends twice.
 */
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import {
  ConditionalCheckFailedException,
  GetItemCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';

export type QuotaDecision = 'granted' | 'daily-limit' | 'already-answered';

export interface QuotaClaim {
  /** The requester's address (case-folded here). */
  requester: string;
  /** The request's Message-ID token, when it has one. */
  messageId?: string;
  /** ms since epoch: which window. */
  now: number;
}

export interface QuotaStore {
  claim(claim: QuotaClaim): Promise<QuotaDecision>;
  /** Undo a granted claim (best effort; never throws). */
  release(claim: QuotaClaim): Promise<void>;
  /** Short keyed hash of a requester, for logs. */
  requesterHash(requester: string): string;
  close(): Promise<void>;
}

/** The quota store could not be consulted: the request is answered 451 and retried by its sender. */
export class QuotaUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'QuotaUnavailableError';
  }
}

export interface QuotaOptions {
  limit: number;
  windowMs: number;
}

class Hasher {
  constructor(private readonly key: Buffer) {}
  hash(value: string): string {
    return createHmac('sha256', this.key).update(value, 'utf8').digest('base64url');
  }
  requester(address: string): string {
    return this.hash(`requester:${address.toLowerCase()}`);
  }
  messageId(id: string): string {
    return this.hash(`message-id:${id}`);
  }
}

function windowOf(now: number, windowMs: number): { start: number; expiresAt: number } {
  const start = Math.floor(now / windowMs) * windowMs;
  // TTL in epoch seconds, an hour past the window's end (DynamoDB deletes expired items lazily anyway).
  return { start, expiresAt: Math.ceil((start + windowMs) / 1000) + 3600 };
}

// ---------------------------------------------------------------- DynamoDB (shared by all replicas)

export class DynamoQuotaStore implements QuotaStore {
  private readonly hasher: Hasher;

  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    hashKey: Buffer,
    private readonly options: QuotaOptions,
  ) {
    this.hasher = new Hasher(hashKey);
  }

  requesterHash(requester: string): string {
    return this.hasher.requester(requester).slice(0, 16);
  }

  private keyOf(c: QuotaClaim): { key: Record<string, AttributeValue>; expiresAt: number } {
    const { start, expiresAt } = windowOf(c.now, this.options.windowMs);
    return { key: { id: { S: `${this.hasher.requester(c.requester)}#${start / 1000}` } }, expiresAt };
  }

  async claim(c: QuotaClaim): Promise<QuotaDecision> {
    const { key, expiresAt } = this.keyOf(c);
    const mid = c.messageId ? this.hasher.messageId(c.messageId) : undefined;
    const values: Record<string, AttributeValue> = {
      ':one': { N: '1' },
      ':limit': { N: String(this.options.limit) },
      ':exp': { N: String(expiresAt) },
    };
    let condition = '(attribute_not_exists(answered) OR answered < :limit)';
    let update = 'ADD answered :one SET expires_at = :exp';
    if (mid) {
      values[':mid'] = { S: mid };
      values[':mids'] = { SS: [mid] };
      condition += ' AND NOT contains(message_ids, :mid)';
      update = 'ADD answered :one, message_ids :mids SET expires_at = :exp';
    }
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: key,
          UpdateExpression: update,
          ConditionExpression: condition,
          ExpressionAttributeValues: values,
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return 'granted';
    } catch (err) {
      if (!(err instanceof ConditionalCheckFailedException)) {
        throw new QuotaUnavailableError(`quota table ${this.table}: ${(err as Error).message}`, err);
      }
      let item = err.Item;
      if (!item) {
        // Local DynamoDB implementations may not return the item: read it (strongly consistent).
        try {
          const got = await this.client.send(
            new GetItemCommand({ TableName: this.table, Key: key, ConsistentRead: true }),
          );
          item = got.Item;
        } catch (e) {
          throw new QuotaUnavailableError(`quota table ${this.table}: ${(e as Error).message}`, e);
        }
      }
      return mid && item?.message_ids?.SS?.includes(mid) ? 'already-answered' : 'daily-limit';
    }
  }

  async release(c: QuotaClaim): Promise<void> {
    const { key } = this.keyOf(c);
    const mid = c.messageId ? this.hasher.messageId(c.messageId) : undefined;
    const values: Record<string, AttributeValue> = { ':minus': { N: '-1' }, ':zero': { N: '0' } };
    if (mid) values[':mids'] = { SS: [mid] };
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: key,
          UpdateExpression: mid ? 'ADD answered :minus DELETE message_ids :mids' : 'ADD answered :minus',
          ConditionExpression: 'answered > :zero',
          ExpressionAttributeValues: values,
        }),
      );
    } catch {
      // best effort: the request is retried by its sender and may then be counted once more
    }
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------- local SQLite (one replica)

const LOCAL_SCHEMA = `
CREATE TABLE IF NOT EXISTS quota (
  id TEXT PRIMARY KEY,
  answered INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_expires ON quota (expires_at);
CREATE TABLE IF NOT EXISTS answered_messages (
  quota_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  PRIMARY KEY (quota_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
`;
const PRUNE_INTERVAL = 3600_000;

export class LocalQuotaStore implements QuotaStore {
  private readonly hasher: Hasher;
  private readonly claimTx: (c: QuotaClaim) => QuotaDecision;
  private readonly releaseTx: (c: QuotaClaim) => void;
  private readonly pruneTimer: NodeJS.Timeout;

  private constructor(
    private readonly db: Database.Database,
    hashKey: Buffer,
    private readonly options: QuotaOptions,
  ) {
    this.hasher = new Hasher(hashKey);
    const get = db.prepare(`SELECT answered FROM quota WHERE id = ?`);
    const seen = db.prepare(`SELECT 1 FROM answered_messages WHERE quota_id = ? AND message_id = ?`);
    const upsert = db.prepare(
      `INSERT INTO quota (id, answered, expires_at) VALUES (?, 1, ?)
       ON CONFLICT (id) DO UPDATE SET answered = answered + 1`,
    );
    const remember = db.prepare(`INSERT INTO answered_messages (quota_id, message_id) VALUES (?, ?)`);
    const decrement = db.prepare(`UPDATE quota SET answered = answered - 1 WHERE id = ? AND answered > 0`);
    const forget = db.prepare(`DELETE FROM answered_messages WHERE quota_id = ? AND message_id = ?`);
    this.claimTx = db.transaction((c: QuotaClaim): QuotaDecision => {
      const { id, expiresAt, mid } = this.keyOf(c);
      if (mid && seen.get(id, mid)) return 'already-answered';
      const answered = (get.pluck().get(id) as number | undefined) ?? 0;
      if (answered >= this.options.limit) return 'daily-limit';
      upsert.run(id, expiresAt);
      if (mid) remember.run(id, mid);
      return 'granted';
    });
    this.releaseTx = db.transaction((c: QuotaClaim) => {
      const { id, mid } = this.keyOf(c);
      decrement.run(id);
      if (mid) forget.run(id, mid);
    });
    this.pruneTimer = setInterval(() => this.prune(), PRUNE_INTERVAL);
    this.pruneTimer.unref();
  }

  static open(dataDir: string, hashKey: Buffer | undefined, options: QuotaOptions): LocalQuotaStore {
    fs.mkdirSync(dataDir, { recursive: true });
    const db = new Database(path.join(dataDir, 'quota.db'));
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 5000');
    db.exec(LOCAL_SCHEMA);
    let key = hashKey;
    if (!key) {
      const stored = db.prepare(`SELECT value FROM settings WHERE name = 'hash_key'`).pluck().get() as
        string | undefined;
      const value = stored ?? randomBytes(32).toString('hex');
      if (!stored) db.prepare(`INSERT INTO settings (name, value) VALUES ('hash_key', ?)`).run(value);
      key = Buffer.from(value, 'utf8');
    }
    const store = new LocalQuotaStore(db, key, options);
    store.prune();
    return store;
  }

  private keyOf(c: QuotaClaim): { id: string; expiresAt: number; mid?: string } {
    const { start, expiresAt } = windowOf(c.now, this.options.windowMs);
    return {
      id: `${this.hasher.requester(c.requester)}#${start / 1000}`,
      expiresAt,
      mid: c.messageId ? this.hasher.messageId(c.messageId) : undefined,
    };
  }

  requesterHash(requester: string): string {
    return this.hasher.requester(requester).slice(0, 16);
  }

  async claim(c: QuotaClaim): Promise<QuotaDecision> {
    try {
      return this.claimTx(c);
    } catch (err) {
      throw new QuotaUnavailableError(`local quota database: ${(err as Error).message}`, err);
    }
  }

  async release(c: QuotaClaim): Promise<void> {
    try {
      this.releaseTx(c);
    } catch {
      // best effort
    }
  }

  /** Drop windows that are over. */
  prune(now = Date.now()): void {
    try {
      const cutoff = Math.floor(now / 1000);
      this.db.transaction(() => {
        this.db
          .prepare(
            `DELETE FROM answered_messages WHERE quota_id IN (SELECT id FROM quota WHERE expires_at < ?)`,
          )
          .run(cutoff);
        this.db.prepare(`DELETE FROM quota WHERE expires_at < ?`).run(cutoff);
      })();
    } catch {
      // retried at the next interval
    }
  }

  async close(): Promise<void> {
    clearInterval(this.pruneTimer);
    if (this.db.open) this.db.close();
  }
}
