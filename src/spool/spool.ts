/**
 * The spool: durable storage of accepted messages, behind a small interface so the delivery stage
 * never touches the storage engine (KumoMTA's spool trait, BullMQ's backend interface).
 *
 * Contract (the durability rules). SqliteSpool (sqlite-spool.ts) implements them with group-commit.ts
 * (every write one transaction, resolved only after its COMMIT); each rule's code lives in the file named
 * after it: `store`/`storeGroup` in spool-store.ts, `lease`/`record`/`settle`/`release` in spool-delivery.ts
 * (leases in spool-leases.ts), `health`/`isWritable` in write-health.ts and spool-maintenance.ts, ordered
 * groups in spool-group.ts, notifications in spool-notifications.ts, queue actions in spool-actions.ts.
 * - `store` resolves only once the envelope and body are durable (fsync). Many concurrent stores may
 *   share one fsync (group commit). On failure it rejects with SpoolWriteError and nothing half-written
 *   survives.
 * - `lease` hands out due messages (state `queued` or `deferred`) at most once until they are settled or
 *   released; leases live only in memory, so after a crash every unfinished message is due again
 *   (at-least-once delivery). Order: weighted fair across tenants (by recipients, TENANT_WEIGHTS of each
 *   message's tenant as stored with it; spool-fair.ts), oldest due first within a tenant. The order is a
 *   scheduling choice, not a durability rule: which message goes first never changes what is kept.
 * - `record` makes final outcomes (delivered, failed, suppressed, expired) of some recipients durable
 *   while the attempt goes on and the lease stays: a message sent in several SMTP transactions records
 *   each transaction as soon as SES answered it, so a crash re-sends at most the transaction in flight.
 * - `settle` records the outcomes of the rest of the attempt and ends the lease. Recipients that are
 *   delivered, failed, suppressed or expired leave the waiting set; deferred ones wait until `retryAt`.
 *   A message with no waiting recipients is finished: removed (`delivered`) when nothing failed,
 *   otherwise kept in state `failed` (with reasons) for inspection until the retention time passes.
 * - A `record` or `settle` that cannot be made durable rejects with SpoolWriteError and KEEPS the lease:
 *   the message stays out of circulation (it is never leased again by this process) until the same
 *   call, retried, succeeds, or the lease is released. Retrying is safe: outcomes already written are
 *   not applied twice. So a write error never makes a message go out again; only a crash does, and
 *   then only what was not yet recorded.
 * - `health()` says whether the last write (store, record, settle or probe) reached the disk;
 *   `isWritable()` probes with a real durable write.
 * - `storeGroup` (OrderedGroupSpool) stores several messages in ONE commit: it resolves with their ids,
 *   in order, only once all of them are durable (fsync), and on failure rejects with SpoolWriteError
 *   and keeps none of them. The messages are delivered in order: message i+1 is not leased while
 *   message i is still waiting (queued, sending or deferred); once i is delivered, suppressed or failed,
 *   i+1 is due. A restart keeps both rules (the link is stored with the message).
 * - Delivery status notifications (SqliteSpool, spool-notifications.ts): a `record`, `settle` or queue
 *   action whose outcome makes a notification owed writes that in the SAME commit; `storeNotification`
 *   stores the composed notification and removes what was owed in ONE commit. So a crash never loses an
 *   owed notification and never stores it twice.
 * - Queue actions (SqliteSpool.act): one commit per action; a message being delivered is not leased again
 *   and is changed only once its attempt has ended (or reported busy, unchanged).
 */
import type { Readable } from 'node:stream';
import type { Envelope, MessageId, MessageState, Reception, RecipientOutcome } from '../types';

export class SpoolWriteError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'SpoolWriteError';
  }
}

/** A message handed to the delivery stage. `envelope.recipients` are the still-pending ones. */
export interface QueuedMessage {
  id: MessageId;
  envelope: Envelope;
  reception: Reception;
  /** Body size in bytes. */
  size: number;
  /** Delivery attempts that counted (throttling does not count). */
  attempts: number;
  /** When it became due (ms since epoch). */
  dueAt: number;
  /** Time it spent held by an operator: MAX_QUEUE_AGE does not count it. */
  heldMs?: number;
}

export interface SettleOptions {
  /** When deferred recipients are due again (ms since epoch). Required if any outcome is `deferred`. */
  retryAt?: number;
  /** False for SES throttling: the attempt does not count towards the retry schedule. Default true. */
  countAttempt?: boolean;
}

export interface SpoolCounts {
  /** Messages still to be delivered: queued + sending + deferred + held. */
  pending: number;
  /** By state (src/types.ts); a leased message counts as `sending`, not as its stored state. */
  queued: number;
  sending: number;
  deferred: number;
  held: number;
  /** Messages kept as permanently failed. */
  failed: number;
  /** Recipients still to be delivered (queued or deferred) across those messages. */
  pendingRecipients: number;
  /** receivedAt of the oldest pending message, or undefined when the queue is empty. */
  oldestReceivedAt?: number;
}

export interface SpoolHealth {
  /** False after a write failed (disk full, I/O error, read-only file system) until one succeeds. */
  writable: boolean;
  /** Since when (ms since epoch). */
  since: number;
  /** The failing write's error, while not writable. */
  error?: string;
}

export interface FailedMessage {
  id: MessageId;
  envelope: Envelope;
  reception: Reception;
  outcomes: RecipientOutcome[];
  finishedAt: number;
}

/** One message of a group stored with `storeGroup`. */
export interface GroupMessage {
  envelope: Envelope;
  body: Readable;
  reception: Omit<Reception, 'receivedAt'>;
  /** Name of the upstream this message must leave through (see `routeOf`); absent: the default one. */
  route?: string;
}

/** Several messages stored in one commit and delivered one after the other (the autoresponder's replies). */
export interface OrderedGroupSpool {
  /** Consume every body, store all messages in ONE commit; resolves with their ids (in order) after fsync. */
  storeGroup(messages: GroupMessage[]): Promise<MessageId[]>;
  /** The route stored with a message by `storeGroup`, or undefined. */
  routeOf(id: MessageId): string | undefined;
}

export interface Spool {
  /** Consume `body` fully and store it with its envelope; resolves with the queue id after fsync. */
  store(envelope: Envelope, body: Readable, reception: Omit<Reception, 'receivedAt'>): Promise<MessageId>;
  /** Up to `max` due, unleased messages: weighted fair across tenants, oldest due first within one; each is leased. */
  lease(max: number, now?: number): QueuedMessage[];
  /** Earliest dueAt among unleased pending messages (to sleep until then), or undefined. */
  nextDueAt(): number | undefined;
  /** The message body as a stream (exactly the bytes accepted). */
  openBody(id: MessageId): Readable;
  /** Make final outcomes of some recipients durable; the lease stays. Resolves once durable. */
  record(id: MessageId, outcomes: RecipientOutcome[]): Promise<void>;
  /**
   * Record the outcomes of the rest of one attempt and end the lease. Resolves once durable with where
   * the message is now: `queued`, `deferred`, `failed` or `delivered`.
   */
  settle(id: MessageId, outcomes: RecipientOutcome[], options?: SettleOptions): Promise<MessageState>;
  /**
   * End a lease without an outcome; the message is due again at `dueAt` (default now). The due time holds
   * in memory even when it cannot be written.
   */
  release(id: MessageId, dueAt?: number): void;
  counts(): SpoolCounts;
  /** Permanently failed messages kept for inspection. */
  listFailed(limit?: number): FailedMessage[];
  /** Whether the last write reached the disk (no I/O: for the dispatcher's every turn and the metric). */
  health(): SpoolHealth;
  /** True when a probe write+fsync succeeds (for /readyz and to resume delivery); updates health(). */
  isWritable(): Promise<boolean>;
  /** Flush pending writes and close files. */
  close(): Promise<void>;
}
