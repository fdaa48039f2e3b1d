/**
 * SqliteSpool: the durable spool on one SQLite database plus a directory of large bodies. This file is the
 * class (the one implementing `Spool` of spool.ts), opening and closing; the work is done in files named
 * for it, each handed the shared parts (spool-context.ts):
 * - spool-store.ts: `store`, `storeGroup` (reading bodies, the commit, removing body files on abort);
 * - spool-delivery.ts: `lease`, `nextDueAt`, `openBody`, `record`, `settle`, `release`;
 * - spool-maintenance.ts: recovery at open (orphan body files, counters), `prune`, the write probe;
 * - spool-actions.ts: queue actions (`act`); spool-notifications.ts: the ledger of owed notifications;
 * - spool-schema.ts (tables, statements, migrations), spool-outcomes.ts (the rows of a message and its
 *   outcomes), spool-group.ts (ordered groups), spool-leases.ts (what lives in memory only),
 *   spool-counters.ts (counts by state), group-commit.ts, write-health.ts, body-files.ts, spool-lock.ts.
 *
 * Why this design:
 * - One better-sqlite3 database `<dir>/spool.db` in WAL mode with `synchronous=FULL` (spool-schema.ts): a
 *   committed transaction has been fsynced to the WAL, so "250 OK only after fsync" is one COMMIT. SQLite
 *   gives atomic multi-row updates (message + recipients + body) and indexed queries, so a 100 000-message
 *   backlog costs disk, not memory: the process keeps only the leases and a few counters.
 * - One process per spool: `<dir>/spool.lock` is held with flock for as long as the spool is open
 *   (spool-lock.ts); a second relay on the same SPOOL_DIR refuses to start.
 * - Group commit (group-commit.ts): every write (store, record, settle, prune, probe) is queued and the
 *   queue is flushed as ONE transaction — everything that arrives while a commit runs goes into the next
 *   one, so concurrent sessions share a single WAL fsync. Every promise resolves only after its COMMIT.
 * - Bodies up to `inlineBodyMaxBytes` (256 KiB) are kept in memory and inserted as a BLOB in the same
 *   transaction. Larger ones are streamed to `bodies/<id>.tmp` as they arrive (never buffered whole),
 *   fsynced, renamed to `<id>.eml`; the directory is fsynced once per batch before the COMMIT that
 *   creates their rows, so a committed row always has its file (body-files.ts writes it, spool-store.ts
 *   asks group-commit.ts to fsync the directory). A crash in between leaves a file with no row, which
 *   `open()` removes (as it removes `.tmp` leftovers; spool-maintenance.ts).
 * - Ordered groups (`storeGroup`, the autoresponder's replies to one request, spool-group.ts): all
 *   messages of a group are inserted by ONE operation of one group commit (spool-store.ts), each linked to
 *   its predecessor by `after_id`; `lease` and `nextDueAt` skip a message whose predecessor is still to be
 *   delivered (spool-delivery.ts).
 * - Delivery status notifications (spool-notifications.ts): the outcome that makes one owed writes its row
 *   in the same transaction (spool-delivery.ts, spool-actions.ts); `storeNotification` stores the composed
 *   notification and deletes the row in one transaction, so a crash can neither lose one nor store it twice.
 * - Queue actions (`act`, spool-actions.ts): pin the messages (never leased meanwhile), wait for an attempt
 *   in progress to end, then change all of them in one transaction.
 * - Leases live in memory (spool-leases.ts): after a restart every unfinished message is due again
 *   (at-least-once). A record or settle whose write fails keeps its lease (and the message out of
 *   circulation) until it is retried successfully; `release(id, dueAt)` keeps `dueAt` in memory even when
 *   it cannot write it (spool-delivery.ts).
 * - The commit runs on the main thread (better-sqlite3 is synchronous); it is one WAL append + fsync
 *   per batch, measured in milliseconds (see `ses_relay_spool_commit_seconds`).
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import type { Logger } from '../observability/logger';
import { silentLogger } from '../observability/logger';
import type {
  Envelope,
  MessageId,
  MessageState,
  Reception,
  RecipientOutcome,
  StoredMessageState,
} from '../types';
import { bodyFilePath, fsyncDir, removeQuietly } from './body-files';
import { GroupCommitter, type CommitStats } from './group-commit';
import {
  configureAndMigrate,
  prepareStatements,
  SCHEMA_VERSION,
  SpoolSchemaError,
  type MessageRow,
  type RecipientRow,
  type SpoolStatements,
} from './spool-schema';
import { failedMessageOf } from './spool-outcomes';
import { SpoolCounters } from './spool-counters';
import { FairClock } from './fair-clock';
import { LeaseTable } from './spool-leases';
import type { SpoolContext } from './spool-context';
import { storeGroupMessages, storeMessage } from './spool-store';
import {
  earliestDueAt,
  leaseDue,
  openStoredBody,
  recordOutcomes,
  releaseLease,
  settleAttempt,
} from './spool-delivery';
import { storedRoute } from './spool-group';
import { probeWrites, pruneFailed, recoverAtOpen } from './spool-maintenance';
import { lockSpoolWaiting, type SpoolLock } from './spool-lock';
import {
  performAction,
  prepareActionStatements,
  type ActionEffects,
  type ActionStatements,
  type QueueAction,
  type QueueActionResult,
} from './spool-actions';
import {
  NotificationLedger,
  NotificationNotOwedError,
  type NotificationPolicy,
  type PendingNotification,
} from './spool-notifications';
import { WriteHealth } from './write-health';
import {
  SpoolWriteError,
  type FailedMessage,
  type GroupMessage,
  type OrderedGroupSpool,
  type QueuedMessage,
  type SettleOptions,
  type Spool,
  type SpoolCounts,
  type SpoolHealth,
} from './spool';

export interface SqliteSpoolOptions {
  /** Spool directory; created if missing. Holds `spool.db`, `spool.lock` and `bodies/`. */
  dir: string;
  /** How long permanently failed messages are kept for inspection (default 7 days). */
  failedRetentionMs?: number;
  logger?: Logger;
  /** Bodies up to this size are stored inside the database (default 256 KiB). */
  inlineBodyMaxBytes?: number;
  /** When delivery status notifications are owed (BOUNCE_FROM set); undefined: never. */
  notifications?: NotificationPolicy;
  /** Called after a commit that made a notification owed (the notifier composes it). */
  onNotificationOwed?: () => void;
  /** How long to wait for the spool lock while a queue tool holds it (default 0: fail at once). */
  lockWaitMs?: number;
  /** Written into the lock file with the pid (`queue` for the queue tool; for error messages). */
  lockHolder?: string;
}

/** How long a queue action waits for attempts in progress on its messages (default). */
export const ACTION_WAIT_MS = 30_000;

export type { CommitStats } from './group-commit';
export { NotificationNotOwedError };
export { LEASE_SQL, NEXT_DUE_SQL, OLDEST_SQL, STATE_COUNTS_SQL } from './spool-schema';

const DEFAULT_INLINE_MAX = 256 * 1024;
const DEFAULT_FAILED_RETENTION = 7 * 24 * 3600_000;
const PRUNE_INTERVAL = 3600_000;

export class SqliteSpool implements Spool, OrderedGroupSpool {
  private readonly leases = new LeaseTable();
  private readonly storesInFlight = new Set<Promise<unknown>>();
  private closed = false;
  private closing?: Promise<void>;
  private pruneTimer?: NodeJS.Timeout;
  /** Messages by stored state, and recipients still to be delivered. */
  private readonly counters = new SpoolCounters();
  private probing?: Promise<boolean>;

  private readonly stmt: SpoolStatements;
  private readonly committer: GroupCommitter;
  private readonly bodiesDir: string;
  private readonly writeHealth: WriteHealth;
  private readonly ledger: NotificationLedger;
  private readonly actionStmt: ActionStatements;
  private readonly onNotificationOwed: () => void;
  private readonly ctx: SpoolContext;

  private constructor(
    private readonly db: Database.Database,
    dir: string,
    private readonly lock: SpoolLock,
    private readonly failedRetentionMs: number,
    inlineMax: number,
    logger: Logger,
    options: SqliteSpoolOptions,
  ) {
    this.bodiesDir = path.join(dir, 'bodies');
    this.stmt = prepareStatements(db);
    this.ledger = new NotificationLedger(db, this.bodiesDir, options.notifications);
    this.actionStmt = prepareActionStatements(db);
    this.onNotificationOwed = options.onNotificationOwed ?? (() => {});
    this.writeHealth = new WriteHealth(dir, logger);
    this.committer = new GroupCommitter(db, this.bodiesDir, logger, this.writeHealth);
    this.ctx = {
      db,
      stmt: this.stmt,
      committer: this.committer,
      bodiesDir: this.bodiesDir,
      inlineMax,
      logger,
      writeHealth: this.writeHealth,
      leases: this.leases,
      ledger: this.ledger,
      counters: this.counters,
      fair: new FairClock(),
      isClosed: () => this.closed,
      notificationOwed: () => this.onNotificationOwed(),
    };
  }

  /**
   * Open (creating or migrating) the spool in `options.dir`. Throws SpoolLockedError when another
   * process has it open, SpoolSchemaError when a newer version wrote it, SpoolWriteError otherwise.
   */
  static async open(options: SqliteSpoolOptions): Promise<SqliteSpool> {
    const dir = path.resolve(options.dir);
    const logger = options.logger ?? silentLogger;
    const bodiesDir = path.join(dir, 'bodies');
    try {
      await fsp.mkdir(bodiesDir, { recursive: true });
    } catch (err) {
      throw new SpoolWriteError(`cannot create spool directory ${bodiesDir}`, err);
    }
    // The lock first: nothing below (migration, orphan cleanup) may run beside another relay.
    const lock = await lockSpoolWaiting(dir, options.lockWaitMs ?? 0, options.lockHolder);
    let db: Database.Database | undefined;
    try {
      try {
        db = new Database(path.join(dir, 'spool.db'));
        const from = configureAndMigrate(db);
        if (from !== SCHEMA_VERSION) logger.info({ dir, from, to: SCHEMA_VERSION }, 'spool schema migrated');
      } catch (err) {
        if (err instanceof SpoolSchemaError) throw err;
        throw new SpoolWriteError(`cannot open spool database in ${dir}`, err);
      }
      // The database and WAL files may have just been created: make their directory entries durable.
      await fsyncDir(dir);
      const spool = new SqliteSpool(
        db,
        dir,
        lock,
        options.failedRetentionMs ?? DEFAULT_FAILED_RETENTION,
        options.inlineBodyMaxBytes ?? DEFAULT_INLINE_MAX,
        logger,
        options,
      );
      // Only under the lock: another relay's uncommitted body files would look orphaned.
      await recoverAtOpen(spool.ctx, spool.failedRetentionMs);
      spool.pruneTimer = setInterval(() => {
        spool.prune().catch((err: unknown) => logger.warn({ err }, 'spool prune failed'));
      }, PRUNE_INTERVAL);
      spool.pruneTimer.unref();
      logger.info({ dir, ...spool.counters.byState }, 'spool opened');
      return spool;
    } catch (err) {
      if (db?.open) db.close();
      lock.release();
      throw err;
    }
  }

  // ---------------------------------------------------------------- store (spool-store.ts)

  store(envelope: Envelope, body: Readable, reception: Omit<Reception, 'receivedAt'>): Promise<MessageId> {
    return this.tracked(storeMessage(this.ctx, envelope, body, reception));
  }

  storeGroup(messages: GroupMessage[], inOp?: () => void): Promise<MessageId[]> {
    return this.tracked(storeGroupMessages(this.ctx, messages, inOp));
  }

  /** close() waits for stores in progress. */
  private tracked<T>(promise: Promise<T>): Promise<T> {
    this.storesInFlight.add(promise);
    const forget = (): void => {
      this.storesInFlight.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  routeOf(id: MessageId): string | undefined {
    this.assertOpen();
    return storedRoute(this.stmt, id);
  }

  // ---------------------------------------------------------------- delivery side (spool-delivery.ts)

  lease(max: number, now: number = Date.now()): QueuedMessage[] {
    this.assertOpen();
    return leaseDue(this.ctx, max, now);
  }

  nextDueAt(): number | undefined {
    this.assertOpen();
    return earliestDueAt(this.ctx);
  }

  openBody(id: MessageId): Readable {
    this.assertOpen();
    return openStoredBody(this.ctx, id);
  }

  record(id: MessageId, outcomes: RecipientOutcome[]): Promise<void> {
    return recordOutcomes(this.ctx, id, outcomes);
  }

  settle(id: MessageId, outcomes: RecipientOutcome[], options: SettleOptions = {}): Promise<MessageState> {
    return settleAttempt(this.ctx, id, outcomes, options);
  }

  release(id: MessageId, dueAt?: number): void {
    releaseLease(this.ctx, id, dueAt);
  }

  // ---------------------------------------------------------------- notifications and queue actions

  /** Owed notifications whose message is not being delivered (its attempt may still add recipients). */
  pendingNotifications(limit = 50): PendingNotification[] {
    this.assertOpen();
    return this.ledger.pending(limit, (id) => this.leases.has(id) || this.leases.isPinned(id));
  }

  /** Owed notifications not yet composed (the `ses_relay_notifications_pending` gauge). */
  pendingNotificationCount(): number {
    this.assertOpen();
    return this.ledger.count();
  }

  /** Whether the spool still holds the message (a notification returns its body then). */
  hasMessage(id: MessageId): boolean {
    this.assertOpen();
    return this.stmt.bodyInfo.get(id) !== undefined;
  }

  /**
   * Store a composed notification and delete the owed row `pendingId` in ONE commit. Rejects with
   * NotificationNotOwedError (storing nothing) when the row is gone: the notification exists already.
   */
  async storeNotification(pendingId: number, message: GroupMessage): Promise<MessageId> {
    const [id] = await this.storeGroup([message], () => {
      if (!this.ledger.consume(pendingId))
        throw new NotificationNotOwedError(`notification ${pendingId} is not owed`);
    });
    return id;
  }

  /**
   * An operator's queue action (spool-actions.ts) in one transaction. Its messages are pinned (never leased)
   * from now on; an attempt in progress on one of them is waited for up to `waitMs`, after which that message
   * is reported `busy` and left unchanged.
   */
  async act(action: QueueAction, waitMs = ACTION_WAIT_MS): Promise<QueueActionResult> {
    this.assertOpen();
    return performAction(
      {
        stmt: this.stmt,
        a: this.actionStmt,
        ledger: this.ledger,
        leases: this.leases,
        commit: (apply) => this.committer.run(apply),
        committed: (fx) => this.afterAction(fx),
        notificationOwed: () => this.onNotificationOwed(),
      },
      action,
      waitMs,
    );
  }

  private afterAction(fx: ActionEffects): void {
    for (const state of Object.keys(fx.stateDelta) as StoredMessageState[]) {
      this.counters.byState[state] += fx.stateDelta[state];
    }
    this.counters.pendingRecipients += fx.pendingRecipientsDelta;
    for (const id of fx.removedFiles) void removeQuietly(bodyFilePath(this.bodiesDir, id));
    for (const id of fx.due) this.leases.forgetHold(id);
  }

  // ---------------------------------------------------------------- inspection

  counts(): SpoolCounts {
    this.assertOpen();
    const oldest = this.stmt.oldest.pluck().get() as number | null;
    return this.counters.counts(this.leases, oldest ?? undefined);
  }

  listFailed(limit = 100): FailedMessage[] {
    this.assertOpen();
    const rows = this.stmt.failed.all(limit) as MessageRow[];
    return rows.map((row) => failedMessageOf(row, this.stmt.recipients.all(row.id) as RecipientRow[]));
  }

  /** Group-commit statistics since open. */
  commitStats(): CommitStats {
    return this.committer.stats();
  }

  health(): SpoolHealth {
    return this.writeHealth.get();
  }

  /**
   * Probe with real durable writes (spool-maintenance.ts): a file written and fsynced in the body directory,
   * and a one-row SQLite commit through the group committer. Either failing makes the spool unwritable.
   */
  isWritable(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    // Concurrent callers (/readyz, the dispatcher) share one probe.
    this.probing ??= probeWrites(this.ctx).finally(() => (this.probing = undefined));
    return this.probing;
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    await Promise.allSettled([...this.storesInFlight]);
    await this.committer.whenIdle();
    this.leases.clear();
    this.db.close();
    this.lock.release();
  }

  // ---------------------------------------------------------------- maintenance (spool-maintenance.ts)

  /** Remove failed messages older than the retention time. */
  prune(now: number = Date.now()): Promise<number> {
    return pruneFailed(this.ctx, this.failedRetentionMs, now);
  }

  private assertOpen(): void {
    if (!this.db.open) throw new Error('spool is closed');
  }
}
