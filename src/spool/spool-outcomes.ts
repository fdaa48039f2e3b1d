/**
 * Writing a message and its delivery outcomes into the spool's rows, inside a group-commit operation:
 * the SQL half of `SqliteSpool.store` (spool-store.ts), `record` and `settle` (spool-delivery.ts). Pure database work, re-runnable (group-commit.ts replays
 * a batch with savepoints when one operation fails); the callers do the in-memory bookkeeping on commit.
 */
import {
  TENANT_WEIGHTS,
  UNAUTHENTICATED_TENANT,
  type EnvelopeDsn,
  type MessageId,
  type MessageState,
  type RecipientOutcome,
  type StoredMessageState,
  type Tenant,
} from '../types';
import type { FailedMessage } from './spool';
import { parseReception, type MessageRow, type RecipientRow, type SpoolStatements } from './spool-schema';

export interface NewMessage {
  id: MessageId;
  mailFrom: string;
  receptionJson: string;
  receivedAt: number;
  recipients: string[];
  dsn?: EnvelopeDsn;
  /** Its tenant (absent: UNAUTHENTICATED_TENANT, priority normal): the fair lease's queue and weight. */
  tenant?: Tenant;
}

/**
 * Insert a new message (state `queued`, every recipient `queued`) with its DSN parameters and its inline
 * body, if any.
 */
export function insertMessage(
  stmt: SpoolStatements,
  m: NewMessage,
  body: { size: number; content?: Buffer },
): void {
  const inFile = body.content === undefined ? 1 : 0;
  stmt.insertMessage.run(
    m.id,
    m.mailFrom,
    m.receptionJson,
    m.receivedAt,
    body.size,
    inFile,
    m.receivedAt,
    m.recipients.length,
    m.dsn?.ret ?? null,
    m.dsn?.envid ?? null,
    m.tenant?.name || UNAUTHENTICATED_TENANT,
    TENANT_WEIGHTS[m.tenant?.priority ?? 'normal'] ?? TENANT_WEIGHTS.normal,
  );
  m.recipients.forEach((recipient, position) => {
    const dsn = m.dsn?.recipients?.[recipient];
    const notify = dsn?.notify?.length ? dsn.notify.join(',') : null;
    stmt.insertRecipient.run(m.id, position, recipient, notify, dsn?.orcpt ?? null);
  });
  if (body.content) stmt.insertBody.run(m.id, body.content);
}

export interface Applied {
  /** Recipients named in the outcomes that were not waiting (already final, or not in the message). */
  unmatched: string[];
  /** Recipients still queued or deferred after the outcomes. */
  stillPending: number;
}

/** Write each recipient's outcome: final ones end the recipient, deferred ones note the reply. */
export function applyOutcomes(stmt: SpoolStatements, id: MessageId, outcomes: RecipientOutcome[]): Applied {
  const unmatched: string[] = [];
  for (const outcome of outcomes) {
    const reply = outcome.reply ?? null;
    const code = outcome.code ?? null;
    const { changes } =
      outcome.status === 'deferred'
        ? stmt.deferRecipient.run(reply, code, id, outcome.recipient)
        : stmt.finishRecipient.run(outcome.status, reply, code, id, outcome.recipient);
    if (changes === 0) unmatched.push(outcome.recipient);
  }
  const stillPending = stmt.countPendingRecipients.pluck().get(id) as number;
  return { unmatched, stillPending };
}

export interface Finish {
  /** Where the message is now. */
  state: MessageState;
  /** Its row's state now, or undefined when the row was deleted. */
  stored?: StoredMessageState;
  /** The row was deleted: remove its body file after the commit. */
  removed: boolean;
}

/**
 * After an attempt: reschedule a message that still has waiting recipients (`deferred` when any outcome
 * was deferred, else `queued`), keep a finished one as `failed` when a recipient failed or expired, or
 * delete it (`delivered`: every recipient delivered or suppressed).
 */
export function finishAttempt(
  stmt: SpoolStatements,
  row: MessageRow,
  outcomes: RecipientOutcome[],
  stillPending: number,
  options: { retryAt?: number; countAttempt?: boolean; now: number },
): Finish {
  const attempts = row.attempts + (options.countAttempt === false ? 0 : 1);
  if (stillPending > 0) {
    const state: StoredMessageState = outcomes.some((o) => o.status === 'deferred') ? 'deferred' : 'queued';
    stmt.reschedule.run(state, options.retryAt ?? options.now, attempts, stillPending, row.id);
    return { state, stored: state, removed: false };
  }
  const statuses = stmt.recipientStatuses.pluck().all(row.id) as string[];
  if (statuses.some((s) => s === 'failed' || s === 'expired')) {
    stmt.markFailed.run(options.now, attempts, row.id);
    return { state: 'failed', stored: 'failed', removed: false };
  }
  deleteMessage(stmt, row.id);
  return { state: 'delivered', removed: true };
}

/** Remove a message's rows (its body file, if any, is the caller's to remove after the commit). */
export function deleteMessage(stmt: SpoolStatements, id: MessageId): void {
  stmt.deleteRecipients.run(id);
  stmt.deleteBody.run(id);
  stmt.deleteMessage.run(id);
}

/** A failed message as `Spool.listFailed` returns it. */
export function failedMessageOf(row: MessageRow, recipients: RecipientRow[]): FailedMessage {
  return {
    id: row.id,
    envelope: { mailFrom: row.mail_from, recipients: recipients.map((r) => r.recipient) },
    reception: parseReception(row),
    outcomes: recipients.map((r) => {
      const outcome: RecipientOutcome = {
        recipient: r.recipient,
        status: r.status === 'queued' ? 'deferred' : r.status,
      };
      if (r.reply !== null) outcome.reply = r.reply;
      if (r.code !== null) outcome.code = r.code;
      return outcome;
    }),
    finishedAt: row.finished_at ?? 0,
  };
}
