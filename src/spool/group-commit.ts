/**
 * Group commit for the SQLite spool: write operations are queued and flushed as ONE transaction, so
 * many concurrent SMTP sessions share a single WAL fsync. Everything queued while a commit runs goes
 * into the next one. Durability rules:
 * - A promise resolves only after the COMMIT that holds its operation returned (WAL fsynced,
 *   `synchronous=FULL`), and an operation's `onCommit` bookkeeping runs only then.
 * - Each operation runs in its own SAVEPOINT (one bad operation fails alone); a failed BEGIN or COMMIT
 *   fails the whole batch, and a failed fsync of the body directory fails every operation that needed it.
 * - A failure the storage caused (disk full, I/O error, read-only) rejects with SpoolWriteError and marks
 *   the spool unwritable (write-health.ts); a batch that commits without one marks it writable again.
 *   Other errors (the operation's own checks) reject as they are and say nothing about the disk.
 * - A rejected operation left nothing in the database; `onAbort` undoes what it did outside (a body file).
 * The operations are SqliteSpool's: stores (spool-store.ts, the ones with `syncBodiesDir` and `onAbort`),
 * records and settlements (spool-delivery.ts), queue actions (spool-actions.ts), prunes and the write probe
 * (spool-maintenance.ts).
 */
import { performance } from 'node:perf_hooks';
import type Database from 'better-sqlite3';
import type { Logger } from '../observability/logger';
import { fsyncDir } from './body-files';
import { spoolCommitBatchSize, spoolCommitSeconds } from './spool-metrics';
import { SpoolWriteError } from './spool';
import { asWriteError, isStorageError, type WriteHealth } from './write-health';

/** What an operation did inside the transaction; `onCommit` runs only once it is durable. */
export interface OpResult<T> {
  value: T;
  onCommit?: () => void;
}

export interface OpOptions {
  /** A new body file must be made durable: fsync `bodiesDir` before the COMMIT. */
  syncBodiesDir?: boolean;
  /** Undo side effects outside the database (remove a body file) when the op did not commit. */
  onAbort?: () => Promise<void> | void;
}

/** Group-commit statistics (for tests and benches). */
export interface CommitStats {
  /** Transactions committed. */
  commits: number;
  /** Operations (stores, settles, prunes) in those transactions. */
  operations: number;
  /** Largest batch so far. */
  maxBatch: number;
}

interface QueuedOp extends OpOptions {
  apply: () => OpResult<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

type Applied = { ok: true; result: OpResult<unknown> } | { ok: false; error: unknown };

/** Upper bound on operations per transaction, to keep one commit short. */
const MAX_BATCH = 500;

export class GroupCommitter {
  private queue: QueuedOp[] = [];
  private flushScheduled = false;
  private flushing = false;
  private idleWaiters: Array<() => void> = [];
  private readonly statistics: CommitStats = { commits: 0, operations: 0, maxBatch: 0 };
  private readonly inSavepoint: (fn: () => OpResult<unknown>) => OpResult<unknown>;
  private readonly runBatch: (ops: QueuedOp[]) => Applied[];

  constructor(
    private readonly db: Database.Database,
    private readonly bodiesDir: string,
    private readonly logger: Logger,
    private readonly health: WriteHealth,
  ) {
    // A transaction function called inside another transaction becomes a SAVEPOINT.
    this.inSavepoint = db.transaction((fn: () => OpResult<unknown>) => fn());
    this.runBatch = (ops) => {
      // Fast path without savepoints (they cost ~20 % of a commit). If an op throws, the whole
      // transaction rolls back and the batch is replayed with one SAVEPOINT per op, so that only the
      // bad op fails. Ops are re-runnable: they only touch the database until their onCommit.
      try {
        return db
          .transaction(() =>
            ops.map((op): Applied => {
              try {
                return { ok: true, result: op.apply() };
              } catch (error) {
                throw new OpFailed(error);
              }
            }),
          )
          .immediate();
      } catch (err) {
        if (!(err instanceof OpFailed)) throw err; // BEGIN or COMMIT failed: the batch fails
      }
      return db
        .transaction(() =>
          ops.map((op): Applied => {
            // After an I/O error SQLite may roll back the whole transaction by itself; running the
            // next op now would autocommit it on its own, so fail the batch instead.
            if (!db.inTransaction) throw new Error('SQLite rolled back the spool transaction');
            try {
              return { ok: true, result: this.inSavepoint(op.apply) };
            } catch (error) {
              return { ok: false, error };
            }
          }),
        )
        .immediate();
    };
  }

  /** Run `apply` inside the next group transaction; resolves with its value once committed. */
  run<T>(apply: () => OpResult<T>, options: OpOptions = {}): Promise<T> {
    if (!this.db.open) return Promise.reject(new SpoolWriteError('spool is closed'));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ ...options, apply, resolve: resolve as (value: unknown) => void, reject });
      this.scheduleFlush();
    });
  }

  /** Resolves when nothing is queued or committing. */
  whenIdle(): Promise<void> {
    if (!this.flushing && !this.flushScheduled && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  stats(): CommitStats {
    return { ...this.statistics };
  }

  private scheduleFlush(): void {
    if (this.flushing || this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate lets every store that finished reading in this turn of the loop join the batch.
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.queue.length > 0) {
        await this.commitBatch(this.queue.splice(0, MAX_BATCH));
      }
    } finally {
      this.flushing = false;
      if (this.queue.length > 0) this.scheduleFlush();
      else for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  private async commitBatch(batch: QueuedOp[]): Promise<void> {
    const started = performance.now();
    let ops = batch;
    if (ops.some((op) => op.syncBodiesDir)) {
      // One directory fsync makes every renamed `<id>.eml` of this batch durable before its row.
      try {
        await fsyncDir(this.bodiesDir, true);
      } catch (err) {
        const failing = ops.filter((op) => op.syncBodiesDir);
        ops = ops.filter((op) => !op.syncBodiesDir);
        this.health.failed(err);
        await abort(failing, new SpoolWriteError('could not fsync the spool body directory', err));
      }
    }
    if (ops.length === 0) return;
    if (!this.db.open) {
      await abort(ops, new SpoolWriteError('spool is closed'));
      return;
    }
    let results: Applied[];
    try {
      results = this.runBatch(ops);
    } catch (err) {
      this.logger.error({ err, batch: ops.length }, 'spool commit failed');
      this.health.failed(err);
      await abort(ops, new SpoolWriteError('spool commit failed', err));
      return;
    }
    this.statistics.commits += 1;
    this.statistics.operations += ops.length;
    this.statistics.maxBatch = Math.max(this.statistics.maxBatch, ops.length);
    spoolCommitBatchSize.observe(ops.length);
    spoolCommitSeconds.observe((performance.now() - started) / 1000);
    const failed: Array<[QueuedOp, unknown]> = [];
    ops.forEach((op, i) => {
      const applied = results[i];
      if (!applied.ok) {
        failed.push([op, applied.error]);
        return;
      }
      try {
        applied.result.onCommit?.();
      } catch (err) {
        this.logger.error({ err }, 'spool bookkeeping after commit failed');
      }
      op.resolve(applied.result.value);
    });
    const storage = failed.find(([, error]) => isStorageError(error));
    if (storage) this.health.failed(storage[1]);
    else this.health.succeeded();
    for (const [op, error] of failed) await abort([op], asWriteError(error, 'spool write failed'));
  }
}

/** Marks an error thrown by one op (not by BEGIN/COMMIT) in the fast path. */
class OpFailed extends Error {
  constructor(readonly error: unknown) {
    super('spool operation failed');
  }
}

async function abort(ops: QueuedOp[], error: unknown): Promise<void> {
  for (const op of ops) {
    try {
      await op.onAbort?.();
    } catch {
      // best effort: open() removes orphan body files anyway
    }
    op.reject(error);
  }
}
