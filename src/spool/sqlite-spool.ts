/**
 * SqliteSpool: the durable spool on one SQLite database plus a directory of large bodies.
 *
 * Why this design:
 * - One better-sqlite3 database `<dir>/spool.db` in WAL mode with `synchronous=FULL`: a committed
 *   transaction has been fsynced to the WAL, so "250 OK only after fsync" is one COMMIT. SQLite gives
 *   atomic multi-row updates (message + recipients + body) and indexed queries, so a 100 000-message
 *   backlog costs disk, not memory: the process keeps only the leases and a few counters.
 * - Group commit: every write (store, settle, prune) is queued and the queue is flushed as ONE
 *   transaction — everything that arrives while a commit runs goes into the next one, so concurrent
 *   sessions share a single WAL fsync. Each op runs in its own SAVEPOINT, so one bad op fails alone;
 *   a failed COMMIT fails the whole batch (and removes its body files). Every promise resolves only
 *   after its COMMIT returned.
 * - Bodies up to `inlineBodyMaxBytes` (256 KiB) are kept in memory and inserted as a BLOB in the same
 *   transaction. Larger ones are streamed to `bodies/<id>.tmp` as they arrive (never buffered whole),
 *   fsynced, renamed to `<id>.eml`; the directory is fsynced once per batch before the COMMIT that
 *   creates their rows, so a committed row always has its file. A crash in between leaves a file with
 *   no row, which `open()` removes (as it removes `.tmp` leftovers).
 * - Leases live in memory: after a restart every unfinished message is due again (at-least-once).
 * - Ordered groups (`storeGroup`, the autoresponder's replies to one request): all messages of a group
 *   are inserted by ONE operation of one group commit, each linked to its predecessor by `after_id`;
 *   `lease` and `nextDueAt` skip a message whose predecessor is still pending.
 * - The commit runs on the main thread (better-sqlite3 is synchronous); it is one WAL append + fsync
 *   per batch, measured in milliseconds (see `ses_relay_spool_commit_seconds`).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import type { Logger } from '../observability/logger';
import { silentLogger } from '../observability/logger';
import type { Envelope, MessageId, MessageState, Reception, RecipientOutcome } from '../types';
import { bodyFilePath, fsyncDir, readBody, removeQuietly, writeAll, type ReadBody } from './body-files';
import { GroupCommitter, type CommitStats, type OpResult } from './group-commit';
import { isQueueId, newQueueId } from './queue-id';
import { insertGroup, type GroupMember } from './spool-group';
import {
  SCHEMA,
  migrateGroupSchema,
  parseReception,
  prepareGroupStatements,
  prepareStatements,
  type GroupStatements,
  type MessageRow,
  type RecipientRow,
  type SpoolStatements,
} from './spool-schema';
import { spoolWriteErrors } from './spool-metrics';
import {
  SpoolWriteError,
  type FailedMessage,
  type GroupMessage,
  type OrderedGroupSpool,
  type QueuedMessage,
  type SettleOptions,
  type Spool,
  type SpoolCounts,
} from './spool';

export interface SqliteSpoolOptions {
  /** Spool directory; created if missing. Holds `spool.db` and `bodies/`. */
  dir: string;
  /** How long permanently failed messages are kept for inspection (default 7 days). */
  failedRetentionMs?: number;
  logger?: Logger;
  /** Bodies up to this size are stored inside the database (default 256 KiB). */
  inlineBodyMaxBytes?: number;
}

export type { CommitStats } from './group-commit';
export { DEFERRED_COUNT_SQL, LEASE_SQL, NEXT_DUE_SQL, OLDEST_SQL } from './spool-schema';

const DEFAULT_INLINE_MAX = 256 * 1024;
const DEFAULT_FAILED_RETENTION = 7 * 24 * 3600_000;
const PRUNE_INTERVAL = 3600_000;
const PRUNE_CHUNK = 1000;

export class SqliteSpool implements Spool, OrderedGroupSpool {
  private readonly leases = new Set<MessageId>();
  private readonly storesInFlight = new Set<Promise<unknown>>();
  private closed = false;
  private closing?: Promise<void>;
  private pruneTimer?: NodeJS.Timeout;
  /** Messages with pending recipients, their pending recipients, and failed messages kept. */
  private pendingMessages = 0;
  private pendingRecipients = 0;
  private failedMessages = 0;

  private readonly stmt: SpoolStatements;
  private readonly groupStmt: GroupStatements;
  private readonly committer: GroupCommitter;
  private readonly bodiesDir: string;

  private constructor(
    private readonly db: Database.Database,
    private readonly dir: string,
    private readonly failedRetentionMs: number,
    private readonly inlineMax: number,
    private readonly logger: Logger,
  ) {
    this.bodiesDir = path.join(dir, 'bodies');
    this.stmt = prepareStatements(db);
    this.groupStmt = prepareGroupStatements(db);
    this.committer = new GroupCommitter(db, this.bodiesDir, logger);
  }

  static async open(options: {
    dir: string;
    failedRetentionMs?: number;
    logger?: Logger;
    inlineBodyMaxBytes?: number;
  }): Promise<SqliteSpool> {
    const dir = path.resolve(options.dir);
    const logger = options.logger ?? silentLogger;
    const bodiesDir = path.join(dir, 'bodies');
    try {
      await fsp.mkdir(bodiesDir, { recursive: true });
    } catch (err) {
      throw new SpoolWriteError(`cannot create spool directory ${bodiesDir}`, err);
    }
    let db: Database.Database;
    try {
      db = new Database(path.join(dir, 'spool.db'));
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('journal_size_limit = 67108864');
      db.pragma('busy_timeout = 5000');
      db.exec(SCHEMA);
      migrateGroupSchema(db);
    } catch (err) {
      throw new SpoolWriteError(`cannot open spool database in ${dir}`, err);
    }
    // The database and WAL files may have just been created: make their directory entries durable.
    await fsyncDir(dir);
    const spool = new SqliteSpool(
      db,
      dir,
      options.failedRetentionMs ?? DEFAULT_FAILED_RETENTION,
      options.inlineBodyMaxBytes ?? DEFAULT_INLINE_MAX,
      logger,
    );
    try {
      await spool.removeOrphanBodies();
      spool.loadCounters();
      await spool.prune();
    } catch (err) {
      db.close();
      throw err instanceof SpoolWriteError ? err : new SpoolWriteError('cannot recover spool', err);
    }
    spool.pruneTimer = setInterval(() => {
      spool.prune().catch((err: unknown) => logger.warn({ err }, 'spool prune failed'));
    }, PRUNE_INTERVAL);
    spool.pruneTimer.unref();
    logger.info({ dir, pending: spool.pendingMessages, failed: spool.failedMessages }, 'spool opened');
    return spool;
  }

  // ---------------------------------------------------------------- store

  store(envelope: Envelope, body: Readable, reception: Omit<Reception, 'receivedAt'>): Promise<MessageId> {
    const promise = this.storeMessage(envelope, body, reception);
    this.storesInFlight.add(promise);
    const forget = (): void => {
      this.storesInFlight.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  private async storeMessage(
    envelope: Envelope,
    body: Readable,
    reception: Omit<Reception, 'receivedAt'>,
  ): Promise<MessageId> {
    if (this.closed) {
      body.resume();
      throw new SpoolWriteError('spool is closed');
    }
    if (envelope.recipients.length === 0) {
      body.resume();
      throw new TypeError('an envelope needs at least one recipient');
    }
    const id = newQueueId();
    const bodyFile = bodyFilePath(this.bodiesDir, id);
    let read: ReadBody;
    try {
      read = await readBody(body, { id, bodiesDir: this.bodiesDir, inlineMax: this.inlineMax });
    } catch (err) {
      spoolWriteErrors.inc({ stage: 'body' });
      this.logger.warn({ queueId: id, err }, 'message body not stored');
      throw new SpoolWriteError('message body could not be stored', err);
    }
    const inFile = read.content === undefined;
    const receivedAt = Date.now();
    const receptionJson = JSON.stringify({
      clientAddress: reception.clientAddress,
      heloName: reception.heloName,
      authUser: reception.authUser,
    });
    const recipients = [...envelope.recipients];
    try {
      await this.committer.run<void>(
        () => {
          this.stmt.insertMessage.run(
            id,
            envelope.mailFrom,
            receptionJson,
            receivedAt,
            read.size,
            inFile ? 1 : 0,
            receivedAt,
            recipients.length,
          );
          recipients.forEach((recipient, position) => this.stmt.insertRecipient.run(id, position, recipient));
          if (read.content) this.stmt.insertBody.run(id, read.content);
          return {
            value: undefined,
            onCommit: () => {
              this.pendingMessages += 1;
              this.pendingRecipients += recipients.length;
            },
          };
        },
        {
          syncBodiesDir: inFile,
          onAbort: inFile ? () => this.removeUncommittedBody(id, bodyFile) : undefined,
        },
      );
    } catch (err) {
      spoolWriteErrors.inc({ stage: 'commit' });
      this.logger.warn({ queueId: id, err }, 'message not committed to spool');
      throw err instanceof SpoolWriteError ? err : new SpoolWriteError('message could not be committed', err);
    }
    return id;
  }

  // ---------------------------------------------------------------- ordered groups

  storeGroup(messages: GroupMessage[]): Promise<MessageId[]> {
    const promise = this.storeGroupMessages(messages);
    this.storesInFlight.add(promise);
    const forget = (): void => {
      this.storesInFlight.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  routeOf(id: MessageId): string | undefined {
    this.assertOpen();
    const json = this.groupStmt.reception.pluck().get(id) as string | undefined;
    if (json === undefined) return undefined;
    const route = (JSON.parse(json) as { route?: unknown }).route;
    return typeof route === 'string' ? route : undefined;
  }

  /** True when the message was stored after another one (storeGroup) that is still pending. */
  private isBlocked(id: MessageId): boolean {
    return this.groupStmt.blocked.get(id) !== undefined;
  }

  private async storeGroupMessages(messages: GroupMessage[]): Promise<MessageId[]> {
    const discard = (): void => {
      for (const m of messages) m.body.destroy();
    };
    if (this.closed) {
      discard();
      throw new SpoolWriteError('spool is closed');
    }
    if (messages.some((m) => m.envelope.recipients.length === 0)) {
      discard();
      throw new TypeError('an envelope needs at least one recipient');
    }
    const members: GroupMember[] = [];
    const inFile = () => members.filter((m) => m.read.content === undefined);
    try {
      for (const message of messages) {
        const id = newQueueId();
        const read = await readBody(message.body, {
          id,
          bodiesDir: this.bodiesDir,
          inlineMax: this.inlineMax,
        });
        members.push({ id, message, read });
      }
    } catch (err) {
      discard();
      for (const m of inFile()) await removeQuietly(bodyFilePath(this.bodiesDir, m.id));
      spoolWriteErrors.inc({ stage: 'body' });
      this.logger.warn({ err }, 'message group bodies not stored');
      throw new SpoolWriteError('message body could not be stored', err);
    }
    if (members.length === 0) return [];
    const files = inFile();
    try {
      const apply = (): OpResult<void> => {
        const recipients = insertGroup(this.stmt, this.groupStmt, members, Date.now());
        return {
          value: undefined,
          onCommit: () => {
            this.pendingMessages += members.length;
            this.pendingRecipients += recipients;
          },
        };
      };
      await this.committer.run<void>(apply, {
        syncBodiesDir: files.length > 0,
        onAbort: files.length
          ? async () => {
              for (const m of files)
                await this.removeUncommittedBody(m.id, bodyFilePath(this.bodiesDir, m.id));
            }
          : undefined,
      });
    } catch (err) {
      spoolWriteErrors.inc({ stage: 'commit' });
      this.logger.warn({ queueIds: members.map((m) => m.id), err }, 'message group not committed to spool');
      throw err instanceof SpoolWriteError
        ? err
        : new SpoolWriteError('message group could not be committed', err);
    }
    return members.map((m) => m.id);
  }

  // ---------------------------------------------------------------- delivery side

  lease(max: number, now: number = Date.now()): QueuedMessage[] {
    this.assertOpen();
    const leased: QueuedMessage[] = [];
    if (max <= 0) return leased;
    for (const row of this.stmt.due.iterate(now) as IterableIterator<MessageRow>) {
      if (this.leases.has(row.id) || this.isBlocked(row.id)) continue;
      const recipients = this.stmt.pendingRecipients.pluck().all(row.id) as string[];
      if (recipients.length === 0) continue; // cannot happen: pending rows have pending recipients
      leased.push({
        id: row.id,
        envelope: { mailFrom: row.mail_from, recipients },
        reception: parseReception(row),
        size: row.size,
        attempts: row.attempts,
        dueAt: row.due_at,
      });
      if (leased.length >= max) break;
    }
    for (const message of leased) this.leases.add(message.id);
    return leased;
  }

  nextDueAt(): number | undefined {
    this.assertOpen();
    for (const row of this.stmt.nextDue.iterate() as IterableIterator<{ id: string; due_at: number }>) {
      if (!this.leases.has(row.id) && !this.isBlocked(row.id)) return row.due_at;
    }
    return undefined;
  }

  openBody(id: MessageId): Readable {
    this.assertOpen();
    const row = this.stmt.bodyInfo.get(id) as { body_in_file: number } | undefined;
    if (!row) throw new Error(`spool has no message ${id}`);
    if (row.body_in_file) return fs.createReadStream(bodyFilePath(this.bodiesDir, id));
    const data = this.stmt.body.pluck().get(id) as Buffer | undefined;
    if (!data) throw new Error(`spool has no body for message ${id}`);
    return Readable.from([data], { objectMode: false });
  }

  async settle(
    id: MessageId,
    outcomes: RecipientOutcome[],
    options: SettleOptions = {},
  ): Promise<MessageState> {
    const now = Date.now();
    const anyDeferred = outcomes.some((o) => o.status === 'deferred');
    if (anyDeferred && options.retryAt === undefined) {
      this.leases.delete(id);
      throw new TypeError('settle: retryAt is required when a recipient is deferred');
    }
    try {
      return await this.committer.run<MessageState>(() => this.applySettle(id, outcomes, options, now));
    } finally {
      this.leases.delete(id);
    }
  }

  private applySettle(
    id: MessageId,
    outcomes: RecipientOutcome[],
    options: SettleOptions,
    now: number,
  ): OpResult<MessageState> {
    const row = this.stmt.message.get(id) as MessageRow | undefined;
    if (!row) throw new Error(`spool has no message ${id}`);
    if (row.state !== 'pending') throw new Error(`message ${id} is already finished (${row.state})`);
    const unmatched: string[] = [];
    for (const outcome of outcomes) {
      const reply = outcome.reply ?? null;
      const code = outcome.code ?? null;
      const { changes } =
        outcome.status === 'deferred'
          ? this.stmt.noteRecipientReply.run(reply, code, id, outcome.recipient)
          : this.stmt.finishRecipient.run(outcome.status, reply, code, id, outcome.recipient);
      if (changes === 0) unmatched.push(outcome.recipient);
    }
    const warnUnmatched = (): void => {
      if (unmatched.length === 0) return;
      this.logger.warn({ queueId: id, recipients: unmatched }, 'outcome for a recipient that is not pending');
    };
    const attempts = row.attempts + (options.countAttempt === false ? 0 : 1);
    const stillPending = this.stmt.countPendingRecipients.pluck().get(id) as number;
    const recipientDelta = stillPending - row.pending_recipients;

    if (stillPending > 0) {
      const anyDeferred = outcomes.some((o) => o.status === 'deferred');
      const dueAt = options.retryAt ?? now;
      this.stmt.reschedule.run(dueAt, attempts, stillPending, id);
      return {
        value: anyDeferred ? 'deferred' : 'queued',
        onCommit: () => {
          this.pendingRecipients += recipientDelta;
          warnUnmatched();
        },
      };
    }

    const statuses = this.stmt.recipientStatuses.pluck().all(id) as string[];
    if (statuses.some((s) => s === 'failed' || s === 'expired')) {
      this.stmt.markFailed.run(now, attempts, id);
      return {
        value: 'failed',
        onCommit: () => {
          this.pendingMessages -= 1;
          this.pendingRecipients += recipientDelta;
          this.failedMessages += 1;
          warnUnmatched();
        },
      };
    }
    this.deleteMessage(id);
    return {
      value: statuses.every((s) => s === 'suppressed') ? 'suppressed' : 'delivered',
      onCommit: () => {
        this.pendingMessages -= 1;
        this.pendingRecipients += recipientDelta;
        warnUnmatched();
        if (row.body_in_file) void removeQuietly(bodyFilePath(this.bodiesDir, id));
      },
    };
  }

  release(id: MessageId, dueAt?: number): void {
    if (!this.leases.delete(id)) return;
    if (dueAt === undefined || this.closed) return;
    // Not worth a durable commit: after a restart everything unfinished is due anyway.
    try {
      this.stmt.setDue.run(dueAt, id);
    } catch (err) {
      this.logger.warn({ queueId: id, err }, 'could not reschedule released message');
    }
  }

  // ---------------------------------------------------------------- inspection

  counts(): SpoolCounts {
    this.assertOpen();
    const now = Date.now();
    const deferred = this.stmt.deferredCount.pluck().get(now) as number;
    const oldest = this.stmt.oldest.pluck().get() as number | null;
    return {
      pending: this.pendingMessages,
      deferred,
      leased: this.leases.size,
      failed: this.failedMessages,
      pendingRecipients: this.pendingRecipients,
      oldestReceivedAt: oldest ?? undefined,
    };
  }

  listFailed(limit = 100): FailedMessage[] {
    this.assertOpen();
    const rows = this.stmt.failed.all(limit) as MessageRow[];
    return rows.map((row) => {
      const recipients = this.stmt.recipients.all(row.id) as RecipientRow[];
      return {
        id: row.id,
        envelope: { mailFrom: row.mail_from, recipients: recipients.map((r) => r.recipient) },
        reception: parseReception(row),
        outcomes: recipients.map((r) => {
          const outcome: RecipientOutcome = {
            recipient: r.recipient,
            status: r.status === 'pending' ? 'deferred' : r.status,
          };
          if (r.reply !== null) outcome.reply = r.reply;
          if (r.code !== null) outcome.code = r.code;
          return outcome;
        }),
        finishedAt: row.finished_at ?? 0,
      };
    });
  }

  /** Group-commit statistics since open. */
  commitStats(): CommitStats {
    return this.committer.stats();
  }

  async isWritable(): Promise<boolean> {
    if (this.closed) return false;
    const probe = path.join(this.dir, `.probe-${process.pid}-${Date.now().toString(36)}`);
    let file: fsp.FileHandle | undefined;
    try {
      file = await fsp.open(probe, 'w');
      await writeAll(file, Buffer.from('probe\n'));
      await file.sync();
      return true;
    } catch (err) {
      this.logger.warn({ err }, 'spool directory is not writable');
      return false;
    } finally {
      if (file) await file.close().catch(() => undefined);
      await removeQuietly(probe);
    }
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
  }

  // ---------------------------------------------------------------- maintenance

  /** Remove failed messages older than the retention time. */
  async prune(now: number = Date.now()): Promise<number> {
    const cutoff = now - this.failedRetentionMs;
    let removed = 0;
    for (;;) {
      const count = await this.committer.run<number>(() => {
        const victims = this.stmt.expiredFailed.all(cutoff, PRUNE_CHUNK) as Array<{
          id: string;
          body_in_file: number;
        }>;
        for (const victim of victims) this.deleteMessage(victim.id);
        return {
          value: victims.length,
          onCommit: () => {
            this.failedMessages -= victims.length;
            for (const victim of victims) {
              if (victim.body_in_file) void removeQuietly(bodyFilePath(this.bodiesDir, victim.id));
            }
          },
        };
      });
      removed += count;
      if (count < PRUNE_CHUNK) break;
    }
    if (removed > 0) this.logger.info({ removed }, 'pruned failed messages past retention');
    return removed;
  }

  /**
   * After a failed commit, remove the body file unless the row exists after all (a COMMIT that
   * reported an error may still have reached the disk); when in doubt keep it: open() cleans up.
   */
  private async removeUncommittedBody(id: MessageId, file: string): Promise<void> {
    try {
      if (this.db.open && !this.stmt.bodyInfo.get(id)) await removeQuietly(file);
    } catch {
      // database unusable: leave the file to the orphan cleanup of the next open()
    }
  }

  private deleteMessage(id: MessageId): void {
    this.stmt.deleteRecipients.run(id);
    this.stmt.deleteBody.run(id);
    this.stmt.deleteMessage.run(id);
  }

  private loadCounters(): void {
    const pending = this.db
      .prepare(
        `SELECT count(*) AS messages, coalesce(sum(pending_recipients), 0) AS recipients
           FROM messages WHERE state = 'pending'`,
      )
      .get() as { messages: number; recipients: number };
    this.pendingMessages = pending.messages;
    this.pendingRecipients = pending.recipients;
    this.failedMessages = this.db
      .prepare(`SELECT count(*) FROM messages WHERE state = 'failed'`)
      .pluck()
      .get() as number;
  }

  /** Remove `.tmp` leftovers and `.eml` files whose row never committed (crash before COMMIT). */
  private async removeOrphanBodies(): Promise<void> {
    const names = await fsp.readdir(this.bodiesDir);
    let removed = 0;
    for (const name of names) {
      const full = path.join(this.bodiesDir, name);
      const match = /^(.*)\.(tmp|eml)$/.exec(name);
      if (!match) continue;
      const [, id, ext] = match;
      if (ext === 'eml' && isQueueId(id) && this.stmt.bodyInfo.get(id)) continue;
      await removeQuietly(full);
      removed += 1;
    }
    if (removed > 0) {
      await fsyncDir(this.bodiesDir);
      this.logger.warn({ removed }, 'removed orphan body files left by an interrupted store');
    }
  }

  private assertOpen(): void {
    if (!this.db.open) throw new Error('spool is closed');
  }
}
