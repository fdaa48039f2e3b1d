/**
 * The spool's SQLite schema, its migrations and prepared statements. One row per message (its state is
 * one of STORED_MESSAGE_STATES), one row per recipient with its state and last reply, and inline bodies
 * in their own table so that scans over messages never touch body pages. Partial indexes keep `lease`,
 * `nextDueAt` and the oldest-message query indexed however large the backlog gets.
 *
 * Versions (`PRAGMA user_version`): 0 = the first release (message states `pending`/`failed`, recipient
 * `pending` for queued and deferred alike); 1 = the shared vocabulary of src/types.ts, enforced by CHECK
 * constraints; 2 = `messages.after_id`, the predecessor of a message stored in an ordered group
 * (`storeGroup`: it is not leased while its predecessor is still to be delivered); 3 = delivery status
 * notifications and queue actions: the client's DSN parameters (`messages.dsn_ret`, `dsn_envid`,
 * `recipients.dsn_notify`, `dsn_orcpt`), the hold bookkeeping (`held_at`, `held_ms`), `delay_warned`, and
 * the `notifications` table of notifications owed but not yet composed (spool-notifications.ts).
 * `migrateSchema` upgrades a spool in place, in one transaction, keeping every message.
 */
import type Database from 'better-sqlite3';
import {
  LEASABLE_MESSAGE_STATES,
  TENANT_PRIORITIES,
  UNAUTHENTICATED_TENANT,
  NOTIFICATION_TYPES,
  RECIPIENT_STATES,
  STORED_MESSAGE_STATES,
  type Reception,
  type RecipientState,
  type StoredMessageState,
  type Tenant,
} from '../types';

export const SCHEMA_VERSION = 4;

const list = (values: readonly string[]) => values.map((v) => `'${v}'`).join(', ');
/** `state IN ('queued', 'deferred')`: the predicate of the partial indexes, repeated verbatim by queries. */
const LEASABLE = `state IN (${list(LEASABLE_MESSAGE_STATES)})`;
/** Messages still to be delivered (every stored state but failed). */
const WAITING = `state <> 'failed'`;

const MESSAGES_TABLE = (name: string) => `CREATE TABLE ${name} (
  id TEXT PRIMARY KEY,
  mail_from TEXT NOT NULL,
  reception TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  size INTEGER NOT NULL,
  body_in_file INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN (${list(STORED_MESSAGE_STATES)})),
  due_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  pending_recipients INTEGER NOT NULL,
  finished_at INTEGER,
  after_id TEXT,
  dsn_ret TEXT,
  dsn_envid TEXT,
  held_at INTEGER,
  held_ms INTEGER NOT NULL DEFAULT 0,
  delay_warned INTEGER NOT NULL DEFAULT 0,
  tenant TEXT NOT NULL DEFAULT '${UNAUTHENTICATED_TENANT}',
  tenant_weight REAL NOT NULL DEFAULT 4
)`;

const RECIPIENTS_TABLE = (name: string) => `CREATE TABLE ${name} (
  message_id TEXT NOT NULL,
  position INTEGER NOT NULL,
  recipient TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN (${list(RECIPIENT_STATES)})),
  reply TEXT,
  code INTEGER,
  dsn_notify TEXT,
  dsn_orcpt TEXT,
  PRIMARY KEY (message_id, position)
) WITHOUT ROWID`;

/**
 * Notifications owed to a message's sender, written in the same transaction as the outcome that makes them
 * owed and deleted in the same transaction that stores the composed notification (spool-notifications.ts).
 * One row per message and type at a time: outcomes of one attempt (several transactions) join one row.
 */
const NOTIFICATIONS_TABLE = `CREATE TABLE notifications (
  id INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN (${list(NOTIFICATION_TYPES)})),
  created_at INTEGER NOT NULL,
  report TEXT NOT NULL,
  headers BLOB NOT NULL,
  UNIQUE (message_id, type)
)`;

/** Each tenant's leasable messages in due order: the fair lease's per-tenant queues (spool-fair.ts). */
const TENANT_INDEX = `CREATE INDEX messages_tenant_due ON messages (tenant, due_at) WHERE ${LEASABLE};`;

const INDEXES = `
CREATE INDEX messages_due ON messages (due_at) WHERE ${LEASABLE};
CREATE INDEX messages_received ON messages (received_at) WHERE ${WAITING};
CREATE INDEX messages_finished ON messages (finished_at) WHERE state = 'failed';
${TENANT_INDEX}
`;

const CURRENT_SCHEMA = `
${MESSAGES_TABLE('messages')};
${RECIPIENTS_TABLE('recipients')};
CREATE TABLE bodies (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
${NOTIFICATIONS_TABLE};
${INDEXES}
PRAGMA user_version = ${SCHEMA_VERSION};
`;

/**
 * Version 0 -> 1: rebuild `messages` and `recipients` under the new CHECK constraints (SQLite cannot alter
 * a CHECK; this is its documented table-rebuild procedure). A pending recipient with a stored reply had an
 * attempt deferred, one without had none; a pending message is `deferred` when one of its recipients is.
 */
const MIGRATE_0_TO_1 = `
${MESSAGES_TABLE('messages_v1')};
INSERT INTO messages_v1 (id, mail_from, reception, received_at, size, body_in_file, state, due_at, attempts,
                         pending_recipients, finished_at)
  SELECT id, mail_from, reception, received_at, size, body_in_file,
         CASE WHEN state = 'failed' THEN 'failed'
              WHEN EXISTS (SELECT 1 FROM recipients r
                            WHERE r.message_id = m.id AND r.status = 'pending' AND r.reply IS NOT NULL)
                THEN 'deferred'
              ELSE 'queued' END,
         due_at, attempts, pending_recipients, finished_at
    FROM messages m;
${RECIPIENTS_TABLE('recipients_v1')};
INSERT INTO recipients_v1 (message_id, position, recipient, status, reply, code)
  SELECT message_id, position, recipient,
         CASE WHEN status <> 'pending' THEN status WHEN reply IS NULL THEN 'queued' ELSE 'deferred' END,
         reply, code
    FROM recipients;
DROP TABLE recipients;
DROP TABLE messages;
ALTER TABLE messages_v1 RENAME TO messages;
ALTER TABLE recipients_v1 RENAME TO recipients;
CREATE TABLE IF NOT EXISTS spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
${NOTIFICATIONS_TABLE};
${INDEXES}
PRAGMA user_version = ${SCHEMA_VERSION};
`;

/** Version 1 -> 2: ordered groups. A metadata-only change in SQLite; NULL for every existing message. */
const MIGRATE_1_TO_2 = `
ALTER TABLE messages ADD COLUMN after_id TEXT;
PRAGMA user_version = 2;
`;

/**
 * Version 2 -> 3: DSN parameters, hold bookkeeping and owed notifications. Metadata-only column additions
 * (no DSN parameters, never held, never warned for every existing message) and one new table.
 */
const MIGRATE_2_TO_3 = `
ALTER TABLE messages ADD COLUMN dsn_ret TEXT;
ALTER TABLE messages ADD COLUMN dsn_envid TEXT;
ALTER TABLE messages ADD COLUMN held_at INTEGER;
ALTER TABLE messages ADD COLUMN held_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recipients ADD COLUMN dsn_notify TEXT;
ALTER TABLE recipients ADD COLUMN dsn_orcpt TEXT;
${NOTIFICATIONS_TABLE};
PRAGMA user_version = 3;
`;

/**
 * Version 3 -> 4: tenants. Metadata-only column additions (every existing message belongs to the
 * trusted-networks tenant with the normal weight, as mail without a tenant does) and one partial index.
 */
const MIGRATE_3_TO_4 = `
ALTER TABLE messages ADD COLUMN tenant TEXT NOT NULL DEFAULT '${UNAUTHENTICATED_TENANT}';
ALTER TABLE messages ADD COLUMN tenant_weight REAL NOT NULL DEFAULT 4;
${TENANT_INDEX}
PRAGMA user_version = 4;
`;

/** The spool was written by a newer version of the relay: refuse rather than misread it. */
export class SpoolSchemaError extends Error {
  override name = 'SpoolSchemaError';
}

/** The schema version of an open database (0 for the first release and for an empty file). */
export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Create the schema in an empty database or bring an older one up to SCHEMA_VERSION, in one transaction.
 * Returns the version found (for the log line).
 */
export function migrateSchema(db: Database.Database): number {
  const found = schemaVersion(db);
  if (found > SCHEMA_VERSION) {
    throw new SpoolSchemaError(
      `spool schema version ${found} was written by a newer ses-email-service (this one reads up to ${SCHEMA_VERSION})`,
    );
  }
  if (found === SCHEMA_VERSION) return found;
  const hasMessages = db
    .prepare(`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'`)
    .pluck()
    .get() as number;
  // MIGRATE_0_TO_1 rebuilds the tables in the current layout (every later column included), so it ends at
  // the current version; later versions apply the steps after theirs, in one transaction.
  const steps = [MIGRATE_1_TO_2, MIGRATE_2_TO_3, MIGRATE_3_TO_4];
  const script = !hasMessages
    ? CURRENT_SCHEMA
    : found === 0
      ? MIGRATE_0_TO_1
      : steps.slice(found - 1).join('\n');
  db.transaction(() => db.exec(script)).immediate();
  return found;
}

/**
 * The relay's connection settings — WAL with `synchronous=FULL` (a COMMIT returns after the WAL's
 * fsync), a bounded WAL, a busy timeout for the inspector's readers — then migrateSchema.
 */
export function configureAndMigrate(db: Database.Database): number {
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('journal_size_limit = 67108864');
  db.pragma('busy_timeout = 5000');
  return migrateSchema(db);
}

const LEASE_COLUMNS = `id, mail_from, reception, received_at, size, attempts, due_at, state, held_ms,
  pending_recipients, tenant, tenant_weight`;
/** Leasable messages in due order (uses the partial index `messages_due`). */
export const LEASE_SQL = `SELECT ${LEASE_COLUMNS} FROM messages WHERE ${LEASABLE} AND due_at <= ? ORDER BY due_at`;
/**
 * One page of a tenant's due messages in (due_at, rowid) order — rowid: the order they were stored in —
 * after the key given: a range of the partial index `messages_tenant_due` (an index entry ends with the
 * rowid), never a scan of other tenants' rows.
 */
export const TENANT_LEASE_SQL = `SELECT rowid AS seq, ${LEASE_COLUMNS} FROM messages
  WHERE tenant = @tenant AND ${LEASABLE} AND due_at <= @now
    AND (due_at > @afterDue OR (due_at = @afterDue AND rowid > @afterSeq))
  ORDER BY due_at, rowid LIMIT @limit`;
/**
 * The tenants that have leasable messages, each with its earliest due time, by a skip scan of
 * `messages_tenant_due`: two index seeks per tenant, however many messages each has.
 */
export const LEASABLE_TENANTS_SQL = `WITH RECURSIVE t(name) AS (
    SELECT (SELECT min(tenant) FROM messages WHERE ${LEASABLE})
    UNION ALL
    SELECT (SELECT min(tenant) FROM messages WHERE ${LEASABLE} AND tenant > t.name) FROM t WHERE t.name IS NOT NULL
  ) SELECT name, (SELECT min(due_at) FROM messages WHERE ${LEASABLE} AND tenant = t.name) AS due
    FROM t WHERE name IS NOT NULL`;
/** Leasable messages in due order, for nextDueAt (same index). */
export const NEXT_DUE_SQL = `SELECT id, due_at FROM messages WHERE ${LEASABLE} ORDER BY due_at`;
/** Oldest message still to be delivered (min of the partial index `messages_received`). */
export const OLDEST_SQL = `SELECT min(received_at) FROM messages WHERE ${WAITING}`;
/** Messages and waiting recipients by stored state. */
export const STATE_COUNTS_SQL = `SELECT state, count(*) AS messages, coalesce(sum(pending_recipients), 0) AS recipients
  FROM messages GROUP BY state`;

export interface MessageRow {
  id: string;
  mail_from: string;
  reception: string;
  received_at: number;
  size: number;
  body_in_file: number;
  state: StoredMessageState;
  due_at: number;
  attempts: number;
  pending_recipients: number;
  finished_at: number | null;
  after_id: string | null;
  dsn_ret: string | null;
  dsn_envid: string | null;
  held_at: number | null;
  held_ms: number;
  delay_warned: number;
  tenant: string;
  tenant_weight: number;
}

export interface StateCountRow {
  state: StoredMessageState;
  messages: number;
  recipients: number;
}

export interface RecipientRow {
  recipient: string;
  status: RecipientState;
  reply: string | null;
  code: number | null;
}

/** A recipient with its DSN parameters (for the notifications owed on its outcome). */
export interface RecipientDsnRow extends RecipientRow {
  position: number;
  dsn_notify: string | null;
  dsn_orcpt: string | null;
}

export type SpoolStatements = ReturnType<typeof prepareStatements>;

const WAITING_RECIPIENT = `status IN ('queued', 'deferred')`;

export function prepareStatements(db: Database.Database) {
  return {
    insertMessage: db.prepare(
      `INSERT INTO messages (id, mail_from, reception, received_at, size, body_in_file, state, due_at,
                             attempts, pending_recipients, dsn_ret, dsn_envid, tenant, tenant_weight)
       VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?, ?)`,
    ),
    insertRecipient: db.prepare(
      `INSERT INTO recipients (message_id, position, recipient, status, dsn_notify, dsn_orcpt)
       VALUES (?, ?, ?, 'queued', ?, ?)`,
    ),
    insertBody: db.prepare(`INSERT INTO bodies (id, data) VALUES (?, ?)`),
    message: db.prepare(`SELECT * FROM messages WHERE id = ?`),
    bodyInfo: db.prepare(`SELECT body_in_file FROM messages WHERE id = ?`),
    body: db.prepare(`SELECT data FROM bodies WHERE id = ?`),
    due: db.prepare(LEASE_SQL),
    tenantDue: db.prepare(TENANT_LEASE_SQL),
    leasableTenants: db.prepare(LEASABLE_TENANTS_SQL),
    nextDue: db.prepare(NEXT_DUE_SQL),
    oldest: db.prepare(OLDEST_SQL),
    stateCounts: db.prepare(STATE_COUNTS_SQL),
    pendingRecipients: db.prepare(
      `SELECT recipient FROM recipients WHERE message_id = ? AND ${WAITING_RECIPIENT} ORDER BY position`,
    ),
    recipients: db.prepare(
      `SELECT recipient, status, reply, code FROM recipients WHERE message_id = ? ORDER BY position`,
    ),
    recipientStatuses: db.prepare(`SELECT status FROM recipients WHERE message_id = ?`),
    recipientsWithDsn: db.prepare(
      `SELECT position, recipient, status, reply, code, dsn_notify, dsn_orcpt FROM recipients
        WHERE message_id = ? ORDER BY position`,
    ),
    countPendingRecipients: db.prepare(
      `SELECT count(*) FROM recipients WHERE message_id = ? AND ${WAITING_RECIPIENT}`,
    ),
    deferRecipient: db.prepare(
      `UPDATE recipients SET status = 'deferred', reply = ?, code = ?
        WHERE message_id = ? AND recipient = ? AND ${WAITING_RECIPIENT}`,
    ),
    finishRecipient: db.prepare(
      `UPDATE recipients SET status = ?, reply = ?, code = ?
        WHERE message_id = ? AND recipient = ? AND ${WAITING_RECIPIENT}`,
    ),
    reschedule: db.prepare(
      `UPDATE messages SET state = ?, due_at = ?, attempts = ?, pending_recipients = ? WHERE id = ?`,
    ),
    setPendingRecipients: db.prepare(`UPDATE messages SET pending_recipients = ? WHERE id = ?`),
    setDue: db.prepare(`UPDATE messages SET due_at = ? WHERE id = ? AND ${LEASABLE}`),
    markFailed: db.prepare(
      `UPDATE messages SET state = 'failed', finished_at = ?, attempts = ?, pending_recipients = 0
        WHERE id = ?`,
    ),
    failed: db.prepare(`SELECT * FROM messages WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?`),
    // A failed message whose notification is still owed is kept (RET=FULL returns its body), for one more
    // retention period at most: with BOUNCE_FROM unset nothing composes it (the owed row keeps the headers).
    expiredFailed: db.prepare(
      `SELECT id, body_in_file FROM messages m WHERE state = 'failed' AND finished_at < @cutoff
          AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.message_id = m.id AND n.created_at >= @stale)
        LIMIT @limit`,
    ),
    setAfter: db.prepare(`UPDATE messages SET after_id = ? WHERE id = ?`),
    /** The message's predecessor (ordered groups) is still to be delivered (delivered ones are deleted). */
    blocked: db.prepare(
      `SELECT 1 FROM messages AS m JOIN messages AS p ON p.id = m.after_id
        WHERE m.id = ? AND p.state <> 'failed'`,
    ),
    receptionOf: db.prepare(`SELECT reception FROM messages WHERE id = ?`),
    probe: db.prepare(`INSERT OR REPLACE INTO spool_meta (key, value) VALUES ('write-probe', ?)`),
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
  if (stored.notification !== undefined) reception.notification = stored.notification;
  if (stored.notificationFor !== undefined) reception.notificationFor = stored.notificationFor;
  const tenant = storedTenant(stored.tenant);
  if (tenant) reception.tenant = tenant;
  return reception;
}

/** A tenant as stored in the reception JSON (anything else, e.g. a row of an older spool: undefined). */
export function storedTenant(x: unknown): Tenant | undefined {
  if (typeof x !== 'object' || x === null) return undefined;
  const t = x as Partial<Tenant>;
  if (typeof t.name !== 'string' || !(TENANT_PRIORITIES as readonly unknown[]).includes(t.priority)) {
    return undefined;
  }
  const tenant: Tenant = { name: t.name, priority: t.priority as Tenant['priority'] };
  if (typeof t.rateLimit === 'number') tenant.rateLimit = t.rateLimit;
  if (typeof t.dailyQuota === 'number') tenant.dailyQuota = t.dailyQuota;
  if (typeof t.configurationSet === 'string') tenant.configurationSet = t.configurationSet;
  if (t.tags && typeof t.tags === 'object') tenant.tags = { ...t.tags };
  return tenant;
}

/** The reception as stored (JSON): what parseReception restores, the tenant included. */
export function receptionJson(
  reception: Omit<Reception, 'receivedAt'>,
  extra: { route?: string } = {},
): string {
  return JSON.stringify({
    clientAddress: reception.clientAddress,
    heloName: reception.heloName,
    authUser: reception.authUser,
    route: extra.route,
    notification: reception.notification,
    notificationFor: reception.notificationFor,
    tenant: reception.tenant,
  });
}
