/**
 * SpoolInspector: a read-only view of the spool for operators (Postfix's `mailq`/`postcat`, KumoMTA's
 * queue summary). It never writes and never runs SqliteSpool.open() (whose recovery removes body
 * files without a row, which would race with a running relay's group commit).
 *
 * How it opens `<dir>/spool.db`:
 * - `live`: while the relay runs (or after a crash) the WAL files `spool.db-wal`/`-shm` exist, and a
 *   better-sqlite3 connection with `{ readonly: true, fileMustExist: true }` reads concurrently with
 *   the relay (WAL readers never block the writer and see only committed transactions).
 * - `snapshot`: after a clean stop SQLite has removed the WAL files. A read-only connection to a
 *   WAL-mode database would create them, and when the inspector runs as another user (root via
 *   `docker exec -u 0`) the relay could no longer open them. So the checkpointed database file is read
 *   into memory instead and queried there (its header is switched to rollback mode in the copy only).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import type { Envelope, MessageId, Reception } from '../types';
import { bodyFilePath } from './body-files';
import {
  DEFERRED_COUNT_SQL,
  OLDEST_SQL,
  parseReception,
  type MessageRow,
  type RecipientRow,
} from './spool-schema';

export type InspectState = 'pending' | 'deferred' | 'failed';
export type StoredRecipientStatus = RecipientRow['status'];

/** The spool database is missing or cannot be read. */
export class SpoolUnreadableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'SpoolUnreadableError';
  }
}

export interface SpoolSummary {
  /** When the summary was taken (ms since epoch). */
  at: number;
  /** Messages with pending recipients (includes deferred ones, as SpoolCounts.pending). */
  pendingMessages: number;
  pendingRecipients: number;
  /** Pending messages waiting for a retry time in the future. */
  deferredMessages: number;
  /** Messages kept as permanently failed. */
  failedMessages: number;
  oldestPendingReceivedAt?: number;
  oldestPendingAgeMs?: number;
  /** Earliest next attempt among pending messages. */
  nextAttemptAt?: number;
  /** Recipients of the messages still in the spool, by status. */
  recipientsByStatus: Record<StoredRecipientStatus, number>;
  /** Body bytes of the messages still in the spool, and how many bodies are files. */
  bodyBytes: number;
  bodiesInFiles: number;
}

export interface QueueEntry {
  id: MessageId;
  state: 'pending' | 'failed';
  receivedAt: number;
  mailFrom: string;
  recipients: number;
  pendingRecipients: number;
  /** Recipients failed or expired. */
  failedRecipients: number;
  attempts: number;
  /** Next attempt (pending messages only). */
  nextAttemptAt?: number;
  finishedAt?: number;
  size: number;
  /** Most relevant stored reply: of a pending recipient if any, else of any recipient. */
  lastReply?: string;
  lastCode?: number;
}

export interface RecipientDetail {
  recipient: string;
  status: StoredRecipientStatus;
  code?: number;
  reply?: string;
}

export interface MessageDetail {
  id: MessageId;
  state: 'pending' | 'failed';
  envelope: Envelope;
  reception: Reception;
  receivedAt: number;
  attempts: number;
  nextAttemptAt?: number;
  finishedAt?: number;
  size: number;
  /** Where the body is: inline in the database, or the path of its `.eml` file. */
  body: { storage: 'inline' } | { storage: 'file'; path: string };
  recipients: RecipientDetail[];
}

export interface ListOptions {
  /** pending: all messages with pending recipients, oldest first; deferred: those waiting for a retry,
   * next due first; failed: permanently failed ones, most recent first. Default pending. */
  state?: InspectState;
  /** Default 100. */
  limit?: number;
  now?: number;
}

const STATUSES: StoredRecipientStatus[] = ['pending', 'delivered', 'failed', 'suppressed', 'expired'];

const ENTRY_COLUMNS = `m.*,
  (SELECT count(*) FROM recipients r WHERE r.message_id = m.id) AS recipient_count,
  (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.status IN ('failed', 'expired'))
    AS failed_count,
  (SELECT r.reply FROM recipients r WHERE r.message_id = m.id AND r.reply IS NOT NULL
    ORDER BY r.status = 'pending' DESC, r.position LIMIT 1) AS last_reply,
  (SELECT r.code FROM recipients r WHERE r.message_id = m.id AND r.reply IS NOT NULL
    ORDER BY r.status = 'pending' DESC, r.position LIMIT 1) AS last_code`;

const LIST_SQL: Record<InspectState, string> = {
  pending: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'pending' AND ? IS NOT NULL
    ORDER BY received_at, id LIMIT ?`,
  deferred: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'pending' AND due_at > ?
    ORDER BY due_at, id LIMIT ?`,
  failed: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'failed' AND ? IS NOT NULL
    ORDER BY finished_at DESC, id LIMIT ?`,
};

type EntryRow = MessageRow & {
  recipient_count: number;
  failed_count: number;
  last_reply: string | null;
  last_code: number | null;
};

export class SpoolInspector {
  readonly dbPath: string;
  private readonly bodiesDir: string;

  private constructor(
    readonly dir: string,
    private readonly db: Database.Database,
    /** `live` reads the database file beside a running relay; `snapshot` reads an in-memory copy. */
    readonly mode: 'live' | 'snapshot',
  ) {
    this.dbPath = path.join(dir, 'spool.db');
    this.bodiesDir = path.join(dir, 'bodies');
  }

  /** Open the spool in `dir` for reading. Throws SpoolUnreadableError when there is none. */
  static open(dir: string): SpoolInspector {
    const resolved = path.resolve(dir);
    const dbPath = path.join(resolved, 'spool.db');
    if (!fs.existsSync(dbPath)) {
      throw new SpoolUnreadableError(`no spool at ${resolved} (spool.db not found; check SPOOL_DIR)`);
    }
    let db: Database.Database | undefined;
    try {
      if (fs.existsSync(`${dbPath}-wal`) && fs.existsSync(`${dbPath}-shm`)) {
        db = new Database(dbPath, { readonly: true, fileMustExist: true });
        db.pragma('busy_timeout = 5000');
        db.prepare('SELECT count(*) FROM messages').get();
        return new SpoolInspector(resolved, db, 'live');
      }
      const copy = fs.readFileSync(dbPath);
      // Bytes 18/19 = 2 mark WAL mode, which an in-memory database cannot use; 1 is rollback mode.
      if (copy.length >= 100 && copy[18] === 2 && copy[19] === 2) copy[18] = copy[19] = 1;
      db = new Database(copy, { readonly: true });
      db.prepare('SELECT count(*) FROM messages').get();
      return new SpoolInspector(resolved, db, 'snapshot');
    } catch (err) {
      db?.close();
      const reason = err instanceof Error ? err.message : String(err);
      throw new SpoolUnreadableError(`cannot read spool ${dbPath}: ${reason}`, err);
    }
  }

  summary(now: number = Date.now()): SpoolSummary {
    const pending = this.db
      .prepare(
        `SELECT count(*) AS messages, coalesce(sum(pending_recipients), 0) AS recipients, min(due_at) AS next
           FROM messages WHERE state = 'pending'`,
      )
      .get() as { messages: number; recipients: number; next: number | null };
    const failed = this.db
      .prepare(`SELECT count(*) FROM messages WHERE state = 'failed'`)
      .pluck()
      .get() as number;
    const deferred = this.db.prepare(DEFERRED_COUNT_SQL).pluck().get(now) as number;
    const oldest = this.db.prepare(OLDEST_SQL).pluck().get() as number | null;
    const bodies = this.db
      .prepare(
        `SELECT coalesce(sum(size), 0) AS bytes, coalesce(sum(body_in_file), 0) AS files FROM messages`,
      )
      .get() as { bytes: number; files: number };
    const recipientsByStatus = Object.fromEntries(STATUSES.map((s) => [s, 0])) as Record<
      StoredRecipientStatus,
      number
    >;
    const byStatus = this.db
      .prepare(`SELECT status, count(*) AS n FROM recipients GROUP BY status`)
      .all() as Array<{
      status: StoredRecipientStatus;
      n: number;
    }>;
    for (const row of byStatus) recipientsByStatus[row.status] = row.n;
    const summary: SpoolSummary = {
      at: now,
      pendingMessages: pending.messages,
      pendingRecipients: pending.recipients,
      deferredMessages: deferred,
      failedMessages: failed,
      recipientsByStatus,
      bodyBytes: bodies.bytes,
      bodiesInFiles: bodies.files,
    };
    if (oldest !== null) {
      summary.oldestPendingReceivedAt = oldest;
      summary.oldestPendingAgeMs = Math.max(0, now - oldest);
    }
    if (pending.next !== null) summary.nextAttemptAt = pending.next;
    return summary;
  }

  list(options: ListOptions = {}): QueueEntry[] {
    const state = options.state ?? 'pending';
    const limit = options.limit ?? 100;
    if (!LIST_SQL[state]) throw new TypeError(`unknown queue state "${String(state)}"`);
    if (!Number.isInteger(limit) || limit <= 0) throw new TypeError('limit must be a whole number > 0');
    const rows = this.db.prepare(LIST_SQL[state]).all(options.now ?? Date.now(), limit) as EntryRow[];
    return rows.map((row) => {
      const entry: QueueEntry = {
        id: row.id,
        state: row.state,
        receivedAt: row.received_at,
        mailFrom: row.mail_from,
        recipients: row.recipient_count,
        pendingRecipients: row.state === 'pending' ? row.pending_recipients : 0,
        failedRecipients: row.failed_count,
        attempts: row.attempts,
        size: row.size,
      };
      if (row.state === 'pending') entry.nextAttemptAt = row.due_at;
      if (row.finished_at !== null) entry.finishedAt = row.finished_at;
      if (row.last_reply !== null) entry.lastReply = row.last_reply;
      if (row.last_code !== null) entry.lastCode = row.last_code;
      return entry;
    });
  }

  /** Everything stored about one message except its body, or undefined when the spool has no such id. */
  show(id: MessageId): MessageDetail | undefined {
    const row = this.db.prepare(`SELECT * FROM messages WHERE id = ?`).get(id) as MessageRow | undefined;
    if (!row) return undefined;
    const recipients = this.db
      .prepare(`SELECT recipient, status, reply, code FROM recipients WHERE message_id = ? ORDER BY position`)
      .all(id) as RecipientRow[];
    const detail: MessageDetail = {
      id: row.id,
      state: row.state,
      envelope: { mailFrom: row.mail_from, recipients: recipients.map((r) => r.recipient) },
      reception: parseReception(row),
      receivedAt: row.received_at,
      attempts: row.attempts,
      size: row.size,
      body: row.body_in_file
        ? { storage: 'file', path: bodyFilePath(this.bodiesDir, row.id) }
        : { storage: 'inline' },
      recipients: recipients.map((r) => {
        const recipient: RecipientDetail = { recipient: r.recipient, status: r.status };
        if (r.code !== null) recipient.code = r.code;
        if (r.reply !== null) recipient.reply = r.reply;
        return recipient;
      }),
    };
    if (row.state === 'pending') detail.nextAttemptAt = row.due_at;
    if (row.finished_at !== null) detail.finishedAt = row.finished_at;
    return detail;
  }

  /** The stored body bytes (inline blob or `.eml` file), or undefined when there is no such message. */
  body(id: MessageId): Buffer | undefined {
    const source = this.bodySource(id);
    if (!source) return undefined;
    return 'data' in source ? source.data : fs.readFileSync(source.path);
  }

  /** The body as a stream, for large bodies (the CLI pipes it to stdout). */
  bodyStream(id: MessageId): Readable | undefined {
    const source = this.bodySource(id);
    if (!source) return undefined;
    if ('data' in source) return Readable.from([source.data], { objectMode: false });
    return fs.createReadStream(source.path);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private bodySource(id: MessageId): { data: Buffer } | { path: string } | undefined {
    const row = this.db.prepare(`SELECT body_in_file FROM messages WHERE id = ?`).get(id) as
      { body_in_file: number } | undefined;
    if (!row) return undefined;
    if (row.body_in_file) return { path: bodyFilePath(this.bodiesDir, id) };
    const data = this.db.prepare(`SELECT data FROM bodies WHERE id = ?`).pluck().get(id) as
      Buffer | undefined;
    if (!data) throw new SpoolUnreadableError(`spool has no body row for message ${id}`);
    return { data };
  }
}
