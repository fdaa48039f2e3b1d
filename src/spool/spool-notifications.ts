/**
 * Which delivery status notifications (RFC 3464) a message's sender is owed, and the spool's ledger of them.
 *
 * The durability rule (the reason this lives in the spool): a notification is owed in the SAME transaction
 * as the outcome that makes it owed — the settlement that fails or expires recipients, the record of a
 * transaction's 5xx, an operator's `bounce` — as one row of the `notifications` table, and that row is
 * deleted in the SAME transaction that stores the composed notification as a new message
 * (`SqliteSpool.storeNotification`). A crash before the first commit re-delivers the attempt (at-least-once,
 * as for any outcome) and nothing is owed yet; a crash between the two leaves the row, and the next start
 * composes the notification; a crash after the second finds no row. So a notification is never lost and
 * never stored twice. This is Postfix's design: the delivery agent appends the recipient's failure to the
 * queue file's bounce log before the queue manager moves on, and the bounce daemon turns that log into one
 * notification later (Postfix BOUNCE_README, "bounce(8)"); the row carries what the notification needs
 * (the original header section, each recipient's outcome), so it survives the message's removal.
 *
 * The rules, RFC 3461 section 4.1: NOTIFY=NEVER gets nothing; no NOTIFY means FAILURE,DELAY (DELAY only
 * does anything with DELAY_WARNING_TIME set, as Postfix's delay_warning_time); SUCCESS is explicit only.
 * Never for the null sender `<>` (RFC 5321 section 4.5.5), never for a notification itself (its reception
 * carries `notification`), never for mail from BOUNCE_FROM itself: no loops. A suppressed recipient is
 * not a failure (the operator's suppression list dropped it on purpose) and gets none. One row per message
 * and type: every recipient one attempt failed (its transactions' records and its settlement) joins it, and
 * the notifier composes it only once the attempt has ended (the message is no longer leased).
 */
import fs from 'node:fs';
import type Database from 'better-sqlite3';
import type {
  DsnReturn,
  MessageId,
  NotificationType,
  RecipientOutcome,
  RecipientState,
  Tenant,
} from '../types';
import { bodyFilePath } from './body-files';
import { storedTenant, type MessageRow, type RecipientDsnRow } from './spool-schema';

/** storeNotification found its owed row gone: the notification was stored already (never twice). */
export class NotificationNotOwedError extends Error {
  override name = 'NotificationNotOwedError';
}

/** When notifications are owed (undefined in SqliteSpoolOptions: never; BOUNCE_FROM unset). */
export interface NotificationPolicy {
  /** The notifications' envelope sender (BOUNCE_FROM): mail from it is never answered. */
  bounceFrom: string;
  /** DELAY_WARNING_TIME: warn once when a message is still deferred this long after arrival; 0 = never. */
  delayWarningMs: number;
  /** MAX_QUEUE_AGE, for the warning's Will-Retry-Until. */
  maxQueueAgeMs: number;
}

/** One recipient of a notification, as RFC 3464 section 2.3 reports it. */
export interface NotificationRecipient {
  recipient: string;
  /** The client's ORCPT (`rfc822;user@example.com`). */
  orcpt?: string;
  action: 'failed' | 'delayed' | 'relayed';
  /** RFC 3463 status code. */
  status: string;
  /** SES's reply, code first, one line of printable ASCII (`550 5.1.1 Mailbox unavailable`). */
  diagnostic?: string;
  lastAttemptAt: number;
  /** Delay warnings: when the relay gives up (arrival + time held + MAX_QUEUE_AGE). */
  willRetryUntil?: number;
}

/** What a notification reports, stored with the owed row (it must not depend on the message's row). */
export interface NotificationReport {
  mailFrom: string;
  receivedAt: number;
  size: number;
  envid?: string;
  ret?: DsnReturn;
  recipients: NotificationRecipient[];
  /**
   * The tenant of the message reported on: the notification is stored with it, so it takes that tenant's
   * fair share (a bulk sender's bounces queue behind its own mail, not in front of others').
   */
  tenant?: Tenant;
}

export interface PendingNotification extends NotificationReport {
  /** The owed row (consumed by storeNotification). */
  id: number;
  messageId: MessageId;
  type: NotificationType;
  createdAt: number;
  /** The original message's header section (through its last header line's CRLF). */
  headers: Buffer;
}

/** Most of the header section kept with an owed notification (text/rfc822-headers). */
export const HEADER_SECTION_MAX = 64 * 1024;
/** Longest diagnostic text in a notification (the DSN field stays well under 998 octets). */
const DIAGNOSTIC_MAX = 900;
/** RFC 3463 code at the start of a reply, after the SMTP code or alone. */
const ENHANCED = /^\s*(?:\d{3}[ -])?([245]\.\d{1,3}\.\d{1,3})(?=\s|$)/;
const WAITING: ReadonlySet<RecipientState> = new Set(['queued', 'deferred']);

type NotifyKind = 'SUCCESS' | 'FAILURE' | 'DELAY';

/** RFC 3461 section 4.1 for one recipient's stored NOTIFY (comma list, or null when none was given). */
export function wantsNotification(notify: string | null, kind: NotifyKind): boolean {
  if (notify === null) return kind !== 'SUCCESS';
  return notify.split(',').includes(kind);
}

/** The RFC 3463 code an SMTP reply carries, when its class is `cls`. */
export function enhancedCode(reply: string | null | undefined, cls: '2' | '4' | '5'): string | undefined {
  const code = reply ? ENHANCED.exec(reply)?.[1] : undefined;
  return code?.startsWith(cls) ? code : undefined;
}

/** `smtp; <this>`: the reply with its code first, on one line of printable ASCII; undefined without one. */
export function diagnosticOf(code: number | null | undefined, reply: string | null | undefined) {
  if (!code || !reply) return undefined;
  const text = reply.startsWith(String(code)) ? reply : `${code} ${reply}`;
  const flat = text
    .replace(/[^\x20-\x7e]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return flat.length > DIAGNOSTIC_MAX ? `${flat.slice(0, DIAGNOSTIC_MAX - 3)}...` : flat;
}

interface StoredReception {
  notification?: unknown;
}

/** The sender may get notifications at all: not `<>`, not a notification, not BOUNCE_FROM itself. */
export function senderNotifiable(row: MessageRow, policy: NotificationPolicy): boolean {
  if (row.mail_from === '' || row.mail_from.toLowerCase() === policy.bounceFrom.toLowerCase()) return false;
  return (JSON.parse(row.reception) as StoredReception).notification === undefined;
}

type Owed = Map<NotificationType, NotificationRecipient[]>;

function add(owed: Owed, type: NotificationType, r: NotificationRecipient): void {
  const list = owed.get(type) ?? [];
  list.push(r);
  owed.set(type, list);
}

function entry(row: RecipientDsnRow, fields: Omit<NotificationRecipient, 'recipient'>) {
  const r: NotificationRecipient = { recipient: row.recipient, ...fields };
  if (row.dsn_orcpt !== null) r.orcpt = row.dsn_orcpt;
  if (r.diagnostic === undefined) delete r.diagnostic;
  return r;
}

/**
 * What the outcomes of one record/settle make owed, from the recipients' rows before the outcomes were
 * applied (an expiry reports SES's last reply, which the outcome overwrites).
 */
export function owedOnOutcomes(before: RecipientDsnRow[], outcomes: RecipientOutcome[], now: number): Owed {
  const owed: Owed = new Map();
  const rows = new Map(before.map((r) => [r.recipient, r]));
  for (const o of outcomes) {
    const row = rows.get(o.recipient);
    if (!row || !WAITING.has(row.status)) continue; // not waiting: the outcome was not applied
    if (o.status === 'failed' && wantsNotification(row.dsn_notify, 'FAILURE')) {
      const status = enhancedCode(o.reply, '5') ?? '5.0.0';
      add(
        owed,
        'failure',
        entry(row, {
          action: 'failed',
          status,
          diagnostic: diagnosticOf(o.code, o.reply),
          lastAttemptAt: now,
        }),
      );
    } else if (o.status === 'expired' && wantsNotification(row.dsn_notify, 'FAILURE')) {
      // RFC 3463 4.4.7: delivery time expired. The diagnostic is what SES said last, if anything.
      const diagnostic = diagnosticOf(row.code, row.reply);
      add(owed, 'expiry', entry(row, { action: 'failed', status: '4.4.7', diagnostic, lastAttemptAt: now }));
    } else if (o.status === 'delivered' && wantsNotification(row.dsn_notify, 'SUCCESS')) {
      const status = enhancedCode(o.reply, '2') ?? '2.0.0';
      add(
        owed,
        'relayed',
        entry(row, {
          action: 'relayed',
          status,
          diagnostic: diagnosticOf(o.code, o.reply),
          lastAttemptAt: now,
        }),
      );
    }
  }
  return owed;
}

/** An operator's `bounce` of the waiting recipients: 5.0.0, with SES's last reply when there was one. */
export function owedOnBounce(before: RecipientDsnRow[], now: number): NotificationRecipient[] {
  return before
    .filter((r) => WAITING.has(r.status) && wantsNotification(r.dsn_notify, 'FAILURE'))
    .map((r) =>
      entry(r, {
        action: 'failed',
        status: '5.0.0',
        diagnostic: diagnosticOf(r.code, r.reply),
        lastAttemptAt: now,
      }),
    );
}

/** The delay warning for the still-waiting recipients (RFC 3464 Action: delayed). */
export function owedDelay(
  row: MessageRow,
  after: RecipientDsnRow[],
  policy: NotificationPolicy,
  now: number,
): NotificationRecipient[] {
  const willRetryUntil = row.received_at + row.held_ms + policy.maxQueueAgeMs;
  return after
    .filter((r) => WAITING.has(r.status) && wantsNotification(r.dsn_notify, 'DELAY'))
    .map((r) =>
      entry(r, {
        action: 'delayed',
        status: enhancedCode(r.reply, '4') ?? '4.0.0',
        diagnostic: diagnosticOf(r.code, r.reply),
        lastAttemptAt: now,
        willRetryUntil,
      }),
    );
}

/** The header section of `bytes`: through the CRLF before the first empty line (or the last whole line). */
export function headerSection(bytes: Buffer): Buffer {
  const end = bytes.indexOf('\r\n\r\n');
  if (end >= 0) return bytes.subarray(0, end + 2);
  if (bytes.length < HEADER_SECTION_MAX) return bytes;
  const last = bytes.lastIndexOf('\r\n');
  return last >= 0 ? bytes.subarray(0, last + 2) : bytes;
}

type NotificationRowShape = {
  id: number;
  message_id: string;
  type: NotificationType;
  created_at: number;
  report: string;
  headers: Buffer;
};

/** The spool's side of owed notifications: written inside record/settle/action operations. */
export class NotificationLedger {
  private readonly stmt;

  constructor(
    db: Database.Database,
    private readonly bodiesDir: string,
    /** Undefined: notifications are off and nothing is ever owed. */
    readonly policy: NotificationPolicy | undefined,
  ) {
    this.stmt = {
      find: db.prepare(`SELECT * FROM notifications WHERE message_id = ? AND type = ?`),
      insert: db.prepare(
        `INSERT INTO notifications (message_id, type, created_at, report, headers) VALUES (?, ?, ?, ?, ?)`,
      ),
      update: db.prepare(`UPDATE notifications SET report = ? WHERE id = ?`),
      consume: db.prepare(`DELETE FROM notifications WHERE id = ?`),
      all: db.prepare(`SELECT * FROM notifications ORDER BY id`),
      count: db.prepare(`SELECT count(*) FROM notifications`),
      inlineHead: db.prepare(`SELECT substr(data, 1, ?) FROM bodies WHERE id = ?`),
      recipients: db.prepare(
        `SELECT position, recipient, status, reply, code, dsn_notify, dsn_orcpt FROM recipients
          WHERE message_id = ? ORDER BY position`,
      ),
      warned: db.prepare(`UPDATE messages SET delay_warned = 1 WHERE id = ?`),
    };
  }

  get enabled(): boolean {
    return this.policy !== undefined;
  }

  /** The recipients' rows before an operation changes them, when the sender may be notified at all. */
  before(row: MessageRow): RecipientDsnRow[] | undefined {
    if (!this.policy || !senderNotifiable(row, this.policy)) return undefined;
    return this.stmt.recipients.all(row.id) as RecipientDsnRow[];
  }

  /** After outcomes were applied (before the row may be deleted): owe what they call for. True if any. */
  onOutcomes(
    row: MessageRow,
    before: RecipientDsnRow[] | undefined,
    outcomes: RecipientOutcome[],
    now: number,
  ) {
    if (!before) return false;
    let wrote = false;
    for (const [type, recipients] of owedOnOutcomes(before, outcomes, now)) {
      wrote = this.owe(row, type, recipients, now) || wrote;
    }
    return wrote;
  }

  /** The message was deferred again: the delay warning, once, after DELAY_WARNING_TIME. True if owed. */
  onDeferred(row: MessageRow, before: RecipientDsnRow[] | undefined, now: number): boolean {
    const policy = this.policy;
    if (!before || !policy || policy.delayWarningMs <= 0 || row.delay_warned) return false;
    if (now - row.received_at - row.held_ms < policy.delayWarningMs) return false;
    this.stmt.warned.run(row.id);
    const after = this.stmt.recipients.all(row.id) as RecipientDsnRow[];
    return this.owe(row, 'delay', owedDelay(row, after, policy, now), now);
  }

  /** An operator bounced the message (before its recipients are failed). True if owed. */
  onBounce(row: MessageRow, before: RecipientDsnRow[] | undefined, now: number): boolean {
    return before ? this.owe(row, 'operator-bounce', owedOnBounce(before, now), now) : false;
  }

  private owe(row: MessageRow, type: NotificationType, recipients: NotificationRecipient[], now: number) {
    if (recipients.length === 0) return false;
    const existing = this.stmt.find.get(row.id, type) as NotificationRowShape | undefined;
    if (existing) {
      // Another transaction of the same attempt (or an earlier attempt not yet notified): one notification.
      const report = JSON.parse(existing.report) as NotificationReport;
      const fresh = new Set(recipients.map((r) => r.recipient));
      report.recipients = [...report.recipients.filter((r) => !fresh.has(r.recipient)), ...recipients];
      this.stmt.update.run(JSON.stringify(report), existing.id);
      return true;
    }
    const report: NotificationReport = {
      mailFrom: row.mail_from,
      receivedAt: row.received_at,
      size: row.size,
      recipients,
    };
    if (row.dsn_envid !== null) report.envid = row.dsn_envid;
    if (row.dsn_ret === 'FULL' || row.dsn_ret === 'HDRS') report.ret = row.dsn_ret;
    const tenant = storedTenant((JSON.parse(row.reception) as { tenant?: unknown }).tenant);
    if (tenant) report.tenant = tenant;
    this.stmt.insert.run(row.id, type, now, JSON.stringify(report), this.headersOf(row));
    return true;
  }

  /** The stored message's header section (at most HEADER_SECTION_MAX bytes; empty if unreadable). */
  private headersOf(row: MessageRow): Buffer {
    if (!row.body_in_file) {
      const head = this.stmt.inlineHead.pluck().get(HEADER_SECTION_MAX, row.id) as Buffer | null;
      return head ? headerSection(Buffer.from(head)) : Buffer.alloc(0);
    }
    let fd: number | undefined;
    try {
      fd = fs.openSync(bodyFilePath(this.bodiesDir, row.id), 'r');
      const buffer = Buffer.alloc(HEADER_SECTION_MAX);
      const n = fs.readSync(fd, buffer, 0, buffer.length, 0);
      return Buffer.from(headerSection(buffer.subarray(0, n)));
    } catch {
      return Buffer.alloc(0); // the notification still goes out, with no headers to return
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }

  /** Owed notifications, oldest first, skipping those `skip` says (messages still being delivered). */
  pending(limit: number, skip: (messageId: MessageId) => boolean): PendingNotification[] {
    const out: PendingNotification[] = [];
    for (const row of this.stmt.all.iterate() as IterableIterator<NotificationRowShape>) {
      if (skip(row.message_id)) continue;
      const report = JSON.parse(row.report) as NotificationReport;
      out.push({
        ...report,
        id: row.id,
        messageId: row.message_id,
        type: row.type,
        createdAt: row.created_at,
        headers: row.headers,
      });
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Inside the operation that stores the notification: the owed row is gone (true) or was already. */
  consume(id: number): boolean {
    return this.stmt.consume.run(id).changes > 0;
  }

  count(): number {
    return this.stmt.count.pluck().get() as number;
  }
}
