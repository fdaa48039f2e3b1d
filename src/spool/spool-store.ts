/**
 * Storing accepted mail: SqliteSpool.store (one message) and storeGroup (an ordered group, spool-group.ts).
 * The durability rules of spool.ts for `store` and `storeGroup` are kept here:
 * - Bodies up to `inlineMax` (256 KiB) are kept in memory and inserted as a BLOB in the same transaction.
 *   Larger ones are streamed to `bodies/<id>.tmp` as they arrive (never buffered whole), fsynced, renamed
 *   to `<id>.eml` (body-files.ts); the operation asks the group committer to fsync the directory before
 *   the COMMIT that creates their rows (`syncBodiesDir`), so a committed row always has its file.
 * - The promise resolves only after that COMMIT (group-commit.ts), so "250 OK only after fsync" holds.
 * - On failure it rejects with SpoolWriteError and nothing half-written survives: the transaction left no
 *   row, and `onAbort` removes the body files unless their rows exist after all (a COMMIT that reported
 *   an error may still have reached the disk); a file left in doubt is removed by the next `open()`.
 * - A group is inserted by ONE operation of one group commit: all of its messages or none.
 */
import type { Readable } from 'node:stream';
import type { Envelope, MessageId, Reception } from '../types';
import { bodyFilePath, readBody, removeQuietly, type ReadBody } from './body-files';
import { newQueueId } from './queue-id';
import { SpoolWriteError, type GroupMessage } from './spool';
import type { SpoolContext } from './spool-context';
import { bodyFileMembers, insertGroup, readGroupBodies, type GroupMember } from './spool-group';
import { spoolWriteErrors } from './spool-metrics';
import { NotificationNotOwedError } from './spool-notifications';
import { insertMessage } from './spool-outcomes';
import { receptionJson } from './spool-schema';
import { isStorageError } from './write-health';

/** Store one message in one group-commit operation; resolves with its queue id once durable. */
export async function storeMessage(
  ctx: SpoolContext,
  envelope: Envelope,
  body: Readable,
  reception: Omit<Reception, 'receivedAt'>,
): Promise<MessageId> {
  if (ctx.isClosed()) {
    body.resume();
    throw new SpoolWriteError('spool is closed');
  }
  if (envelope.recipients.length === 0) {
    body.resume();
    throw new TypeError('an envelope needs at least one recipient');
  }
  const id = newQueueId();
  const bodyFile = bodyFilePath(ctx.bodiesDir, id);
  let read: ReadBody;
  try {
    read = await readBody(body, { id, bodiesDir: ctx.bodiesDir, inlineMax: ctx.inlineMax });
  } catch (err) {
    throw bodyNotStored(ctx, err, { queueId: id }, 'message body not stored');
  }
  const inFile = read.content === undefined;
  const receivedAt = Date.now();
  const stored = receptionJson(reception);
  const tenant = reception.tenant;
  const recipients = [...envelope.recipients];
  try {
    await ctx.committer.run<void>(
      () => {
        const dsn = envelope.dsn;
        insertMessage(
          ctx.stmt,
          { id, mailFrom: envelope.mailFrom, receptionJson: stored, receivedAt, recipients, dsn, tenant },
          read,
        );
        return {
          value: undefined,
          onCommit: () => {
            ctx.counters.byState.queued += 1;
            ctx.counters.pendingRecipients += recipients.length;
          },
        };
      },
      {
        syncBodiesDir: inFile,
        onAbort: inFile ? () => removeUncommittedBody(ctx, id, bodyFile) : undefined,
      },
    );
  } catch (err) {
    spoolWriteErrors.inc({ stage: 'commit' });
    ctx.logger.warn({ queueId: id, err }, 'message not committed to spool');
    throw err instanceof SpoolWriteError ? err : new SpoolWriteError('message could not be committed', err);
  }
  return id;
}

/**
 * Store an ordered group in ONE group-commit operation; resolves with the ids, in order, once durable.
 * `inOp` runs first inside the commit's operation; when it throws nothing is stored.
 */
export async function storeGroupMessages(
  ctx: SpoolContext,
  messages: GroupMessage[],
  inOp?: () => void,
): Promise<MessageId[]> {
  if (ctx.isClosed() || messages.some((m) => m.envelope.recipients.length === 0)) {
    for (const m of messages) m.body.destroy();
    if (ctx.isClosed()) throw new SpoolWriteError('spool is closed');
    throw new TypeError('an envelope needs at least one recipient');
  }
  let members: GroupMember[];
  try {
    members = await readGroupBodies(messages, { bodiesDir: ctx.bodiesDir, inlineMax: ctx.inlineMax });
  } catch (err) {
    throw bodyNotStored(ctx, err, {}, 'message group bodies not stored');
  }
  if (members.length === 0) return [];
  const files = bodyFileMembers(members);
  try {
    await ctx.committer.run<void>(
      () => {
        inOp?.();
        const recipients = insertGroup(ctx.stmt, members, Date.now());
        return {
          value: undefined,
          onCommit: () => {
            ctx.counters.byState.queued += members.length;
            ctx.counters.pendingRecipients += recipients;
          },
        };
      },
      {
        syncBodiesDir: files.length > 0,
        onAbort: files.length
          ? async () => {
              for (const m of files)
                await removeUncommittedBody(ctx, m.id, bodyFilePath(ctx.bodiesDir, m.id));
            }
          : undefined,
      },
    );
  } catch (err) {
    if (err instanceof NotificationNotOwedError) throw err;
    spoolWriteErrors.inc({ stage: 'commit' });
    ctx.logger.warn({ queueIds: members.map((m) => m.id), err }, 'message group not committed to spool');
    throw err instanceof SpoolWriteError
      ? err
      : new SpoolWriteError('message group could not be committed', err);
  }
  return members.map((m) => m.id);
}

/** A body that could not be read into the spool: counted, a storage failure marks the spool unwritable. */
function bodyNotStored(
  ctx: SpoolContext,
  err: unknown,
  fields: { queueId?: MessageId },
  message: string,
): SpoolWriteError {
  spoolWriteErrors.inc({ stage: 'body' });
  if (isStorageError(err)) ctx.writeHealth.failed(err);
  ctx.logger.warn({ ...fields, err }, message);
  return new SpoolWriteError('message body could not be stored', err);
}

/**
 * After a failed commit, remove the body file unless the row exists after all (a COMMIT that
 * reported an error may still have reached the disk); when in doubt keep it: open() cleans up.
 */
async function removeUncommittedBody(ctx: SpoolContext, id: MessageId, file: string): Promise<void> {
  try {
    if (ctx.db.open && !ctx.stmt.bodyInfo.get(id)) await removeQuietly(file);
  } catch {
    // database unusable: leave the file to the orphan cleanup of the next open()
  }
}
