/**
 * The spool's SQLite schema and prepared statements. One row per message (state `pending` or
 * `failed`), one row per recipient with its last outcome, and inline bodies in their own table so
 * that scans over messages never touch body pages. Partial indexes keep `lease`, `nextDueAt` and the
 * `counts` queries indexed however large the backlog gets.
 */
import type Database from 'better-sqlite3';
import type { Reception, RecipientOutcome } from '../types';

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  id TEXT PRIMARY KEY,
  mail_from TEXT NOT NULL,
  reception TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  size INTEGER NOT NULL,
  body_in_file INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'failed')),
  due_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  pending_recipients INTEGER NOT NULL,
  finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (due_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS messages_finished ON messages (finished_at) WHERE state = 'failed';
CREATE TABLE IF NOT EXISTS recipients (
  message_id TEXT NOT NULL,
  position INTEGER NOT NULL,
  recipient TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'suppressed', 'expired')),
  reply TEXT,
  code INTEGER,
  PRIMARY KEY (message_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (
  id TEXT PRIMARY KEY,
  data BLOB NOT NULL
);
`;

/** Due, pending messages in due order (uses the partial index `messages_due`). */
export const LEASE_SQL = `SELECT id, mail_from, reception, received_at, size, attempts, due_at
  FROM messages WHERE state = 'pending' AND due_at <= ? ORDER BY due_at`;
/** Pending messages in due order, for nextDueAt (same index). */
export const NEXT_DUE_SQL = `SELECT id, due_at FROM messages WHERE state = 'pending' ORDER BY due_at`;
/** Pending messages waiting for a future retry time (range scan of `messages_due`). */
export const DEFERRED_COUNT_SQL = `SELECT count(*) FROM messages WHERE state = 'pending' AND due_at > ?`;
/** Oldest pending message (min of the partial index `messages_received`). */
export const OLDEST_SQL = `SELECT min(received_at) FROM messages WHERE state = 'pending'`;

export interface MessageRow {
  id: string;
  mail_from: string;
  reception: string;
  received_at: number;
  size: number;
  body_in_file: number;
  state: 'pending' | 'failed';
  due_at: number;
  attempts: number;
  pending_recipients: number;
  finished_at: number | null;
}

export interface RecipientRow {
  recipient: string;
  status: 'pending' | RecipientOutcome['status'];
  reply: string | null;
  code: number | null;
}

export type SpoolStatements = ReturnType<typeof prepareStatements>;

export function prepareStatements(db: Database.Database) {
  return {
    insertMessage: db.prepare(
      `INSERT INTO messages (id, mail_from, reception, received_at, size, body_in_file, state, due_at,
                             attempts, pending_recipients)
       VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, 0, ?)`,
    ),
    insertRecipient: db.prepare(
      `INSERT INTO recipients (message_id, position, recipient, status) VALUES (?, ?, ?, 'pending')`,
    ),
    insertBody: db.prepare(`INSERT INTO bodies (id, data) VALUES (?, ?)`),
    message: db.prepare(`SELECT * FROM messages WHERE id = ?`),
    bodyInfo: db.prepare(`SELECT body_in_file FROM messages WHERE id = ?`),
    body: db.prepare(`SELECT data FROM bodies WHERE id = ?`),
    due: db.prepare(LEASE_SQL),
    nextDue: db.prepare(NEXT_DUE_SQL),
    deferredCount: db.prepare(DEFERRED_COUNT_SQL),
    oldest: db.prepare(OLDEST_SQL),
    pendingRecipients: db.prepare(
      `SELECT recipient FROM recipients WHERE message_id = ? AND status = 'pending' ORDER BY position`,
    ),
    recipients: db.prepare(
      `SELECT recipient, status, reply, code FROM recipients WHERE message_id = ? ORDER BY position`,
    ),
    recipientStatuses: db.prepare(`SELECT status FROM recipients WHERE message_id = ?`),
    countPendingRecipients: db.prepare(
      `SELECT count(*) FROM recipients WHERE message_id = ? AND status = 'pending'`,
    ),
    noteRecipientReply: db.prepare(
      `UPDATE recipients SET reply = ?, code = ?
        WHERE message_id = ? AND recipient = ? AND status = 'pending'`,
    ),
    finishRecipient: db.prepare(
      `UPDATE recipients SET status = ?, reply = ?, code = ?
        WHERE message_id = ? AND recipient = ? AND status = 'pending'`,
    ),
    reschedule: db.prepare(
      `UPDATE messages SET due_at = ?, attempts = ?, pending_recipients = ? WHERE id = ?`,
    ),
    setDue: db.prepare(`UPDATE messages SET due_at = ? WHERE id = ? AND state = 'pending'`),
    markFailed: db.prepare(
      `UPDATE messages SET state = 'failed', finished_at = ?, attempts = ?, pending_recipients = 0
        WHERE id = ?`,
    ),
    failed: db.prepare(`SELECT * FROM messages WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?`),
    expiredFailed: db.prepare(
      `SELECT id, body_in_file FROM messages WHERE state = 'failed' AND finished_at < ? LIMIT ?`,
    ),
    deleteRecipients: db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
    deleteBody: db.prepare(`DELETE FROM bodies WHERE id = ?`),
    deleteMessage: db.prepare(`DELETE FROM messages WHERE id = ?`),
  };
}

export function parseReception(row: Pick<MessageRow, 'reception' | 'received_at'>): Reception {
  const stored = JSON.parse(row.reception) as Omit<Reception, 'receivedAt'>;
  const reception: Reception = { clientAddress: stored.clientAddress, receivedAt: row.received_at };
  if (stored.heloName !== undefined) reception.heloName = stored.heloName;
  if (stored.authUser !== undefined) reception.authUser = stored.authUser;
  return reception;
}

/**
 * Ordered groups (`storeGroup`): `messages.after_id` names the message that must leave the pending set
 * before this one may be leased. The column came after the first schema, so `migrateGroupSchema` adds it
 * in place to an existing database (`ALTER TABLE ... ADD COLUMN`, a metadata-only change in SQLite) and
 * is a no-op once it is there. NULL for every message stored with `store`.
 */
export function migrateGroupSchema(db: Database.Database): void {
  const columns = db.prepare(`PRAGMA table_info(messages)`).all() as Array<{ name: string }>;
  if (!columns.some((c) => c.name === 'after_id')) db.exec(`ALTER TABLE messages ADD COLUMN after_id TEXT`);
}

/** A message whose predecessor is still pending (two primary-key lookups). */
export const BLOCKED_SQL = `SELECT 1 FROM messages AS m JOIN messages AS p ON p.id = m.after_id
  WHERE m.id = ? AND p.state = 'pending'`;

export type GroupStatements = ReturnType<typeof prepareGroupStatements>;

export function prepareGroupStatements(db: Database.Database) {
  return {
    setAfter: db.prepare(`UPDATE messages SET after_id = ? WHERE id = ?`),
    blocked: db.prepare(BLOCKED_SQL),
    reception: db.prepare(`SELECT reception FROM messages WHERE id = ?`),
  };
}
