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
 *
 * States and recipient states are the words of src/types.ts (MESSAGE_STATES, RECIPIENT_STATES). A spool
 * written by an older relay (schema version 0) is migrated in the in-memory copy; read live, it is refused
 * with a clear error until the relay of this version has opened (and migrated) it once.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import {
  RECIPIENT_STATES,
  STORED_MESSAGE_STATES,
  type Envelope,
  type MessageId,
  type Reception,
  type RecipientState,
  type StoredMessageState,
} from '../types';
import { bodyFilePath } from './body-files';
import {
  migrateSchema,
  OLDEST_SQL,
  parseReception,
  schemaVersion,
  SCHEMA_VERSION,
  STATE_COUNTS_SQL,
  type MessageRow,
  type RecipientRow,
} from './spool-schema';

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
  /** Messages in the spool by state (a message being sent shows its stored state: queued or deferred). */
  messages: Record<StoredMessageState, number>;
  /** Messages still to be delivered (queued + deferred + held) and their waiting recipients. */
  waitingMessages: number;
  waitingRecipients: number;
  oldestWaitingReceivedAt?: number;
  oldestWaitingAgeMs?: number;
  /** Earliest next attempt among queued and deferred messages. */
  nextAttemptAt?: number;
  /** Recipients of the messages still in the spool, by state. */
  recipients: Record<RecipientState, number>;
  /** Body bytes of the messages still in the spool, and how many bodies are files. */
  bodyBytes: number;
  bodiesInFiles: number;
}

export interface QueueEntry {
  id: MessageId;
  state: StoredMessageState;
  receivedAt: number;
  mailFrom: string;
  /** The tenant's name (`trusted-networks` for mail without one). */
  tenant: string;
  recipients: number;
  /** Recipients still queued or deferred. */
  waitingRecipients: number;
  /** Recipients failed or expired. */
  failedRecipients: number;
  attempts: number;
  /** Next attempt (messages still to be delivered only). */
  nextAttemptAt?: number;
  finishedAt?: number;
  size: number;
  /** Most relevant stored reply: of a pending recipient if any, else of any recipient. */
  lastReply?: string;
  lastCode?: number;
}

export interface RecipientDetail {
  recipient: string;
  status: RecipientState;
  code?: number;
  reply?: string;
  /** The client's DSN parameters for this recipient (RFC 3461). */
  notify?: string;
  orcpt?: string;
}

export interface MessageDetail {
  id: MessageId;
  state: StoredMessageState;
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
  /** The client's RET and ENVID (RFC 3461), when given. */
  dsn?: { ret?: string; envid?: string };
  /** Held since (state `held`), and the time held before (not counted by MAX_QUEUE_AGE). */
  heldSince?: number;
  heldMs: number;
  /** Delivery status notifications owed for this message and not yet composed, by type. */
  notificationsOwed: string[];
}

export interface ListOptions {
  /** Only messages in this state: queued and held oldest first, deferred next due first, failed most
   * recent first. Default: every message still to be delivered (queued, deferred, held), oldest first. */
  state?: StoredMessageState;
  /** Default 100. */
  limit?: number;
}

const ENTRY_COLUMNS = `m.*,
  (SELECT count(*) FROM recipients r WHERE r.message_id = m.id) AS recipient_count,
  (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.status IN ('failed', 'expired'))
    AS failed_count,
  (SELECT r.reply FROM recipients r WHERE r.message_id = m.id AND r.reply IS NOT NULL
    ORDER BY r.status IN ('queued', 'deferred') DESC, r.position LIMIT 1) AS last_reply,
  (SELECT r.code FROM recipients r WHERE r.message_id = m.id AND r.reply IS NOT NULL
    ORDER BY r.status IN ('queued', 'deferred') DESC, r.position LIMIT 1) AS last_code`;

const LIST_SQL: Record<StoredMessageState | 'waiting', string> = {
  waiting: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state <> 'failed' ORDER BY received_at, id LIMIT ?`,
  queued: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'queued' ORDER BY received_at, id LIMIT ?`,
  deferred: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'deferred' ORDER BY due_at, id LIMIT ?`,
  held: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'held' ORDER BY received_at, id LIMIT ?`,
  failed: `SELECT ${ENTRY_COLUMNS} FROM messages m WHERE state = 'failed'
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
        const version = schemaVersion(db);
        if (version !== SCHEMA_VERSION) {
          throw new Error(
            `the running relay uses spool schema version ${version}, this inspector reads ${SCHEMA_VERSION}: ` +
              'run the inspector of the relay version in use',
          );
        }
        return new SpoolInspector(resolved, db, 'live');
      }
      const copy = fs.readFileSync(dbPath);
      // Bytes 18/19 = 2 mark WAL mode, which an in-memory database cannot use; 1 is rollback mode.
      if (copy.length >= 100 && copy[18] === 2 && copy[19] === 2) copy[18] = copy[19] = 1;
      // The copy lives in memory only: migrating an older spool there changes nothing on disk.
      db = new Database(copy);
      db.prepare('SELECT count(*) FROM messages').get();
      migrateSchema(db);
      return new SpoolInspector(resolved, db, 'snapshot');
    } catch (err) {
      db?.close();
      const reason = err instanceof Error ? err.message : String(err);
      throw new SpoolUnreadableError(`cannot read spool ${dbPath}: ${reason}`, err);
    }
  }

  summary(now: number = Date.now()): SpoolSummary {
    const messages = Object.fromEntries(STORED_MESSAGE_STATES.map((st) => [st, 0])) as Record<
      StoredMessageState,
      number
    >;
    let waitingRecipients = 0;
    for (const row of this.db.prepare(STATE_COUNTS_SQL).all() as Array<{
      state: StoredMessageState;
      messages: number;
      recipients: number;
    }>) {
      messages[row.state] = row.messages;
      if (row.state !== 'failed') waitingRecipients += row.recipients;
    }
    const next = this.db
      .prepare(`SELECT min(due_at) FROM messages WHERE state IN ('queued', 'deferred')`)
      .pluck()
      .get() as number | null;
    const oldest = this.db.prepare(OLDEST_SQL).pluck().get() as number | null;
    const bodies = this.db
      .prepare(
        `SELECT coalesce(sum(size), 0) AS bytes, coalesce(sum(body_in_file), 0) AS files FROM messages`,
      )
      .get() as { bytes: number; files: number };
    const recipients = Object.fromEntries(RECIPIENT_STATES.map((st) => [st, 0])) as Record<
      RecipientState,
      number
    >;
    const byStatus = this.db
      .prepare(`SELECT status, count(*) AS n FROM recipients GROUP BY status`)
      .all() as Array<{ status: RecipientState; n: number }>;
    for (const row of byStatus) recipients[row.status] = row.n;
    const summary: SpoolSummary = {
      at: now,
      messages,
      waitingMessages: messages.queued + messages.deferred + messages.held,
      waitingRecipients,
      recipients,
      bodyBytes: bodies.bytes,
      bodiesInFiles: bodies.files,
    };
    if (oldest !== null) {
      summary.oldestWaitingReceivedAt = oldest;
      summary.oldestWaitingAgeMs = Math.max(0, now - oldest);
    }
    if (next !== null) summary.nextAttemptAt = next;
    return summary;
  }

  list(options: ListOptions = {}): QueueEntry[] {
    const state = options.state ?? 'waiting';
    const limit = options.limit ?? 100;
    if (!Object.hasOwn(LIST_SQL, state)) throw new TypeError(`unknown message state "${String(state)}"`);
    if (!Number.isInteger(limit) || limit <= 0) throw new TypeError('limit must be a whole number > 0');
    const rows = this.db.prepare(LIST_SQL[state]).all(limit) as EntryRow[];
    return rows.map((row) => {
      const entry: QueueEntry = {
        id: row.id,
        state: row.state,
        receivedAt: row.received_at,
        mailFrom: row.mail_from,
        tenant: row.tenant,
        recipients: row.recipient_count,
        waitingRecipients: row.state === 'failed' ? 0 : row.pending_recipients,
        failedRecipients: row.failed_count,
        attempts: row.attempts,
        size: row.size,
      };
      if (row.state !== 'failed') entry.nextAttemptAt = row.due_at;
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
      .prepare(
        `SELECT recipient, status, reply, code, dsn_notify, dsn_orcpt FROM recipients
          WHERE message_id = ? ORDER BY position`,
      )
      .all(id) as Array<RecipientRow & { dsn_notify: string | null; dsn_orcpt: string | null }>;
    const owed = this.db
      .prepare(`SELECT type FROM notifications WHERE message_id = ? ORDER BY id`)
      .pluck()
      .all(id) as string[];
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
        if (r.dsn_notify !== null) recipient.notify = r.dsn_notify;
        if (r.dsn_orcpt !== null) recipient.orcpt = r.dsn_orcpt;
        return recipient;
      }),
      heldMs: row.held_ms,
      notificationsOwed: owed,
    };
    if (row.dsn_ret !== null || row.dsn_envid !== null) {
      detail.dsn = {};
      if (row.dsn_ret !== null) detail.dsn.ret = row.dsn_ret;
      if (row.dsn_envid !== null) detail.dsn.envid = row.dsn_envid;
    }
    if (row.state === 'held' && row.held_at !== null) detail.heldSince = row.held_at;
    if (row.state !== 'failed') detail.nextAttemptAt = row.due_at;
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
