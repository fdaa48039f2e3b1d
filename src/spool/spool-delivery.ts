/**
 * The delivery side of SqliteSpool: `lease`, `nextDueAt`, `openBody`, `record`, `settle` and `release`.
 * The durability rules of spool.ts for them are kept here (with the lease table, spool-leases.ts):
 * - `lease` hands out due messages at most once until settled or released, in weighted fair order across
 *   tenants and oldest due first within one (spool-fair.ts); leases live only in memory, so after a
 *   restart every unfinished message is due again (at-least-once). A message of an ordered group
 *   (spool-group.ts) is skipped while its predecessor is still to be delivered.
 * - `record` and `settle` write their outcomes (spool-outcomes.ts) in ONE group-commit operation, together
 *   with any notification they make owed (spool-notifications.ts), and resolve only after its COMMIT.
 * - A record or settle whose write fails on the storage keeps its lease (and the message out of
 *   circulation) until it is retried successfully; the lease is marked uncertain, because the failed
 *   COMMIT may have reached the disk after all, so a retry that finds the work done is not an error and
 *   outcomes already written are not applied twice.
 * - `release(id, dueAt)` keeps `dueAt` in memory even when it cannot write it (no durable commit: after a
 *   restart everything unfinished is due anyway).
 */
import fs from 'node:fs';
import { Readable } from 'node:stream';
import type { MessageId, MessageState, RecipientOutcome } from '../types';
import { bodyFilePath, removeQuietly } from './body-files';
import type { OpResult } from './group-commit';
import { SpoolWriteError, type QueuedMessage, type SettleOptions } from './spool';
import type { SpoolContext } from './spool-context';
import { isBlocked } from './spool-group';
import { spoolWriteErrors } from './spool-metrics';
import { applyOutcomes, finishAttempt } from './spool-outcomes';
import { leaseFair } from './spool-fair';
import type { MessageRow } from './spool-schema';

/** Up to `max` due, unleased messages in weighted fair order across tenants (spool-fair.ts); each is leased. */
export function leaseDue(ctx: SpoolContext, max: number, now: number): QueuedMessage[] {
  return leaseFair(ctx, max, now);
}

/** Earliest dueAt among unleased pending messages (held-back ones at their hold time), or undefined. */
export function earliestDueAt(ctx: SpoolContext): number | undefined {
  const { stmt, leases } = ctx;
  const next = leases.earliestHold();
  for (const row of stmt.nextDue.iterate() as IterableIterator<{ id: string; due_at: number }>) {
    if (leases.has(row.id) || leases.heldBack(row.id) || isBlocked(stmt, row.id)) continue;
    return next === undefined ? row.due_at : Math.min(next, row.due_at);
  }
  return next;
}

/** The body exactly as accepted: its file, or the inline BLOB. */
export function openStoredBody(ctx: SpoolContext, id: MessageId): Readable {
  const row = ctx.stmt.bodyInfo.get(id) as { body_in_file: number } | undefined;
  if (!row) throw new Error(`spool has no message ${id}`);
  if (row.body_in_file) return fs.createReadStream(bodyFilePath(ctx.bodiesDir, id));
  const data = ctx.stmt.body.pluck().get(id) as Buffer | undefined;
  if (!data) throw new Error(`spool has no body for message ${id}`);
  return Readable.from([data], { objectMode: false });
}

/** Make final outcomes of some recipients durable while the lease stays (one SMTP transaction's). */
export async function recordOutcomes(
  ctx: SpoolContext,
  id: MessageId,
  outcomes: RecipientOutcome[],
): Promise<void> {
  if (outcomes.some((o) => o.status === 'deferred')) {
    throw new TypeError('record: only final outcomes (delivered, failed, suppressed, expired)');
  }
  if (outcomes.length === 0) return;
  const { stmt, leases, ledger } = ctx;
  await writeOutcomes(ctx, id, () => {
    const row = stmt.message.get(id) as MessageRow | undefined;
    if (!row || row.state === 'failed') {
      if (leases.isUncertain(id)) return { value: undefined }; // the failed write did commit
      throw new Error(row ? `message ${id} is already finished (failed)` : `spool has no message ${id}`);
    }
    const before = ledger.before(row);
    const { unmatched, stillPending } = applyOutcomes(stmt, id, outcomes);
    if (stillPending === 0) throw new TypeError('record: it would finish the message; use settle');
    stmt.setPendingRecipients.run(stillPending, id);
    // Composed once the attempt is settled (the settlement may add recipients to the same notification).
    ledger.onOutcomes(row, before, outcomes, Date.now());
    const delta = stillPending - row.pending_recipients;
    return {
      value: undefined,
      onCommit: () => {
        ctx.counters.pendingRecipients += delta;
        warnUnmatched(ctx, id, unmatched);
      },
    };
  });
}

/** Record the rest of one attempt and end the lease; resolves once durable with where the message is. */
export async function settleAttempt(
  ctx: SpoolContext,
  id: MessageId,
  outcomes: RecipientOutcome[],
  options: SettleOptions,
): Promise<MessageState> {
  const now = Date.now();
  const { stmt, leases, ledger, counters } = ctx;
  if (outcomes.some((o) => o.status === 'deferred') && options.retryAt === undefined) {
    leases.end(id);
    throw new TypeError('settle: retryAt is required when a recipient is deferred');
  }
  let owedNotification = false;
  const state = await writeOutcomes<MessageState>(ctx, id, () => {
    const row = stmt.message.get(id) as MessageRow | undefined;
    if (!row || row.state === 'failed') {
      // A failed write of this settlement may have committed after all: then this retry is done.
      if (leases.isUncertain(id)) return { value: row ? 'failed' : 'delivered' };
      throw new Error(row ? `message ${id} is already finished (failed)` : `spool has no message ${id}`);
    }
    const before = ledger.before(row);
    const { unmatched, stillPending } = applyOutcomes(stmt, id, outcomes);
    // Owed before finishAttempt: a delivered message's row (and inline body) is deleted there.
    let owed = ledger.onOutcomes(row, before, outcomes, now);
    const finish = finishAttempt(stmt, row, outcomes, stillPending, { ...options, now });
    if (finish.state === 'deferred') owed = ledger.onDeferred(row, before, now) || owed;
    const delta = stillPending - row.pending_recipients;
    return {
      value: finish.state,
      onCommit: () => {
        counters.byState[row.state] -= 1;
        if (finish.stored) counters.byState[finish.stored] += 1;
        counters.pendingRecipients += delta;
        warnUnmatched(ctx, id, unmatched);
        if (finish.removed && row.body_in_file) void removeQuietly(bodyFilePath(ctx.bodiesDir, id));
        owedNotification = owed;
      },
    };
  });
  leases.end(id);
  // After the lease ended: the notifier composes only notifications of messages not being delivered.
  if (owedNotification) ctx.notificationOwed();
  return state;
}

/**
 * One record/settle write. A storage failure keeps the lease (the caller retries; the message stays out
 * of circulation); any other failure ends it (the caller's mistake, or the message is gone).
 */
async function writeOutcomes<T>(ctx: SpoolContext, id: MessageId, apply: () => OpResult<T>): Promise<T> {
  try {
    const value = await ctx.committer.run<T>(apply);
    ctx.leases.settled(id);
    return value;
  } catch (err) {
    if (err instanceof SpoolWriteError && !ctx.isClosed()) {
      ctx.leases.markUncertain(id);
      spoolWriteErrors.inc({ stage: 'settle' });
      throw err;
    }
    ctx.leases.end(id);
    throw err;
  }
}

/** End a lease without an outcome; the message is due again at `dueAt` (held in memory if unwritable). */
export function releaseLease(ctx: SpoolContext, id: MessageId, dueAt?: number): void {
  if (!ctx.leases.has(id)) return;
  // In memory first: the message stays out of circulation until dueAt even if the row cannot be written.
  ctx.leases.release(id, dueAt);
  if (dueAt === undefined || ctx.isClosed()) return;
  // Not worth a durable commit: after a restart everything unfinished is due anyway.
  try {
    ctx.stmt.setDue.run(dueAt, id);
  } catch (err) {
    ctx.logger.warn({ queueId: id, err }, 'could not reschedule released message');
  }
}

function warnUnmatched(ctx: SpoolContext, id: MessageId, unmatched: string[]): void {
  if (unmatched.length === 0 || ctx.leases.isUncertain(id)) return;
  ctx.logger.warn({ queueId: id, recipients: unmatched }, 'outcome for a recipient that is not waiting');
}
