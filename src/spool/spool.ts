/**
 * The spool: durable storage of accepted messages, behind a small interface so the delivery stage
 * never touches the storage engine (KumoMTA's spool trait, BullMQ's backend interface).
 *
 * Contract:
 * - `store` resolves only once the envelope and body are durable (fsync). Many concurrent stores may
 *   share one fsync (group commit). On failure it rejects with SpoolWriteError and nothing half-written
 *   survives.
 * - `lease` hands out due messages at most once until they are settled or released; leases live only in
 *   memory, so after a crash every unfinished message is due again (at-least-once delivery).
 * - `settle` records per-recipient outcomes of one attempt. Recipients that are delivered, failed,
 *   suppressed or expired leave the pending set; deferred ones stay pending until `retryAt`.
 *   A message with no pending recipients is finished: removed when nothing failed, otherwise kept in
 *   state `failed` (with reasons) for inspection until the retention time passes.
 * - `storeGroup` (OrderedGroupSpool) stores several messages in ONE commit: it resolves with their ids,
 *   in order, only once all of them are durable (fsync), and on failure rejects with SpoolWriteError
 *   and keeps none of them. The messages are delivered in order: message i+1 is not leased while
 *   message i is still pending (queued, leased or deferred); once i is delivered, suppressed or failed,
 *   i+1 is due. A restart keeps both rules (the link is stored with the message).
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
}

export interface SettleOptions {
  /** When deferred recipients are due again (ms since epoch). Required if any outcome is `deferred`. */
  retryAt?: number;
  /** False for SES throttling: the attempt does not count towards the retry schedule. Default true. */
  countAttempt?: boolean;
}

export interface SpoolCounts {
  /** Messages with pending recipients (queued, leased or deferred). */
  pending: number;
  /** Of those, waiting for a retry time in the future. */
  deferred: number;
  leased: number;
  /** Messages kept as permanently failed. */
  failed: number;
  /** Pending recipients across all pending messages. */
  pendingRecipients: number;
  /** receivedAt of the oldest pending message, or undefined when the queue is empty. */
  oldestReceivedAt?: number;
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
  /** Up to `max` due, unleased messages, oldest due first; each is leased. */
  lease(max: number, now?: number): QueuedMessage[];
  /** Earliest dueAt among unleased pending messages (to sleep until then), or undefined. */
  nextDueAt(): number | undefined;
  /** The message body as a stream (exactly the bytes accepted). */
  openBody(id: MessageId): Readable;
  /** Record outcomes of one attempt and end the lease. Resolves once durable. */
  settle(id: MessageId, outcomes: RecipientOutcome[], options?: SettleOptions): Promise<MessageState>;
  /** End a lease without an outcome (shutdown); the message is due again at `dueAt` (default now). */
  release(id: MessageId, dueAt?: number): void;
  counts(): SpoolCounts;
  /** Permanently failed messages kept for inspection. */
  listFailed(limit?: number): FailedMessage[];
  /** True when a probe write+fsync succeeds (for /readyz). */
  isWritable(): Promise<boolean>;
  /** Flush pending writes and close files. */
  close(): Promise<void>;
}
