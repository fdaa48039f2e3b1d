/**
 * Keeping the spool tidy and knowing it is writable: recovery at open (orphan body files, counters, a
 * first prune), pruning failed messages past their retention, and the write probe behind `isWritable()`.
 * - Recovery runs only under the spool lock (spool-lock.ts): another relay's uncommitted body files would
 *   look orphaned. A body file with no row is what a crash between the file's fsync and the COMMIT leaves
 *   (spool-store.ts); a `.tmp` file is what a crash while a body was being written leaves. Both are
 *   removed (body-files.ts).
 * - Pruning deletes in chunks, each chunk one group-commit operation; body files are removed only after
 *   the COMMIT that deleted their rows, so a committed row always has its file.
 * - The probe makes real durable writes: a file of PROBE_BYTES written and fsynced in the body directory,
 *   and a one-row SQLite commit through the group committer. Either failing makes the spool unwritable
 *   (write-health.ts); both succeeding makes it writable again.
 */
import type { MessageId } from '../types';
import { bodyFilePath, probeDirectory, removeOrphanBodies, removeQuietly } from './body-files';
import { SpoolWriteError } from './spool';
import type { SpoolContext } from './spool-context';
import { deleteMessage } from './spool-outcomes';

const PRUNE_CHUNK = 1000;
/** Bytes the write probe writes and fsyncs in the body directory: about what a small message needs. */
const PROBE_BYTES = 64 * 1024;

/** At open, under the lock: remove orphan body files, load the counters, prune. */
export async function recoverAtOpen(ctx: SpoolContext, failedRetentionMs: number): Promise<void> {
  try {
    const orphans = await removeOrphanBodies(ctx.bodiesDir, (id) => ctx.stmt.bodyInfo.get(id) !== undefined);
    if (orphans)
      ctx.logger.warn({ removed: orphans }, 'removed orphan body files left by an interrupted store');
    ctx.counters.load(ctx.stmt);
    await pruneFailed(ctx, failedRetentionMs, Date.now());
  } catch (err) {
    throw err instanceof SpoolWriteError ? err : new SpoolWriteError('cannot recover spool', err);
  }
}

/** Remove failed messages older than the retention time; resolves with how many. */
export async function pruneFailed(
  ctx: SpoolContext,
  failedRetentionMs: number,
  now: number,
): Promise<number> {
  const cutoff = now - failedRetentionMs;
  let removed = 0;
  for (;;) {
    const count = await ctx.committer.run<number>(() => {
      const victims = ctx.stmt.expiredFailed.all({
        cutoff,
        stale: cutoff - failedRetentionMs,
        limit: PRUNE_CHUNK,
      }) as Array<{ id: MessageId; body_in_file: number }>;
      for (const victim of victims) deleteMessage(ctx.stmt, victim.id);
      return {
        value: victims.length,
        onCommit: () => {
          ctx.counters.byState.failed -= victims.length;
          for (const victim of victims) {
            if (victim.body_in_file) void removeQuietly(bodyFilePath(ctx.bodiesDir, victim.id));
          }
        },
      };
    });
    removed += count;
    if (count < PRUNE_CHUNK) break;
  }
  if (removed > 0) ctx.logger.info({ removed }, 'pruned failed messages past retention');
  return removed;
}

/** One write probe (see the header); true when both writes reached the disk. */
export async function probeWrites(ctx: SpoolContext): Promise<boolean> {
  try {
    await probeDirectory(ctx.bodiesDir, PROBE_BYTES);
  } catch (err) {
    ctx.writeHealth.failed(err);
    ctx.logger.warn({ err }, 'spool directory is not writable');
    return false;
  }
  try {
    await ctx.committer.run(() => {
      ctx.stmt.probe.run(String(Date.now()));
      return { value: undefined };
    });
  } catch {
    return false; // the committer marked the spool unwritable
  }
  ctx.writeHealth.succeeded();
  return true;
}
