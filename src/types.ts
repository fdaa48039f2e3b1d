/**
 * The shared vocabulary of the relay. Stages talk to each other only through these types:
 * a queue id, an envelope, a body stream, and closed unions for where a message is and why.
 */

/** Queue id given by the spool when a message is accepted (like Postfix's queue id). */
export type MessageId = string;

/** The SMTP envelope: who it is from and who it goes to (never the headers). */
export interface Envelope {
  /** MAIL FROM address; empty string for the null sender `<>`. */
  mailFrom: string;
  /** RCPT TO addresses, as the client gave them. */
  recipients: string[];
}

/** Who handed the message to us, kept for logs and policy. */
export interface Reception {
  clientAddress: string;
  heloName?: string;
  /** Authenticated user or API key label, if the session authenticated. */
  authUser?: string;
  /** Time the spool acknowledged the message (ms since epoch). */
  receivedAt: number;
}

/**
 * Where a message is: ONE closed set of words, shared by the spool database (`messages.state`), the queue
 * CLI's filters (`npm run queue -- list deferred`), the `state` label of `ses_relay_queue_messages` and the
 * log events (`message:delivered`, `message:deferred`, ...).
 *
 * - `queued`: in the spool, waiting for its first attempt (or its turn; due now or at its due time).
 * - `sending`: a delivery attempt holds it (a lease, in memory only: after a crash it is `queued` or
 *   `deferred` again, as the spool last recorded it).
 * - `deferred`: in the spool after a transient failure (4xx, network, throttling, an unavailable
 *   suppression list or limiter), until its next attempt on RETRY_SCHEDULE.
 * - `held`: reserved for an operator's hold/release (a later release); the schema accepts it, nothing sets
 *   it yet, and the dispatcher never leases a held message.
 * - `failed`: finished with at least one recipient `failed` or `expired`; kept for SPOOL_FAILED_RETENTION.
 * - `delivered`: finished, every recipient `delivered` or `suppressed`; removed from the spool.
 */
export const MESSAGE_STATES = ['queued', 'sending', 'deferred', 'held', 'failed', 'delivered'] as const;
export type MessageState = (typeof MESSAGE_STATES)[number];

/** The states a message has in the spool database (its CHECK constraint) and the queue CLI's filters. */
export const STORED_MESSAGE_STATES = ['queued', 'deferred', 'held', 'failed'] as const;
export type StoredMessageState = (typeof STORED_MESSAGE_STATES)[number];

/** The states of a message still to be delivered (the `state` label of `ses_relay_queue_messages`). */
export const WAITING_MESSAGE_STATES = ['queued', 'sending', 'deferred', 'held'] as const;
export type WaitingMessageState = (typeof WAITING_MESSAGE_STATES)[number];

/** States the dispatcher leases from. */
export const LEASABLE_MESSAGE_STATES = ['queued', 'deferred'] as const;

/**
 * Where one recipient is (the spool's `recipients.status`, the queue CLI's recipient counts): `queued`
 * until an attempt, then `deferred` after a transient failure, or one of the final `delivered`, `failed`
 * (5xx), `suppressed` (on the suppression list), `expired` (MAX_QUEUE_AGE passed).
 */
export const RECIPIENT_STATES = [
  'queued',
  'deferred',
  'delivered',
  'failed',
  'suppressed',
  'expired',
] as const;
export type RecipientState = (typeof RECIPIENT_STATES)[number];

/** Outcome of one recipient in one attempt: every recipient state but `queued`. */
export const RECIPIENT_STATUSES = ['delivered', 'deferred', 'failed', 'suppressed', 'expired'] as const;
export type RecipientStatus = (typeof RECIPIENT_STATUSES)[number];

/** Recipient states that end a recipient's delivery. */
export const FINAL_RECIPIENT_STATUSES = ['delivered', 'failed', 'suppressed', 'expired'] as const;
export type FinalRecipientStatus = (typeof FINAL_RECIPIENT_STATUSES)[number];

/**
 * Log events of a message's life: `message:accepted` (250 sent), one `message:<status>` line per
 * recipient status an attempt reached, and `message:released` (back to the spool unsettled at shutdown).
 */
export const MESSAGE_EVENTS = [
  'message:accepted',
  ...RECIPIENT_STATUSES.map((s) => `message:${s}` as const),
  'message:released',
] as const;
export type MessageEvent = (typeof MESSAGE_EVENTS)[number];

/** How an upstream reply is classified. */
export type ReplyClass = 'delivered' | 'throttled' | 'transient' | 'permanent';

/** Why a delivery attempt was put off. */
export type DeferralReason =
  | 'throttled-by-ses' // 454 Throttling failure from SES
  | 'upstream-transient' // other 4xx from upstream
  | 'network' // connection refused/reset/timeout
  | 'policy-unavailable' // suppression list could not be consulted
  | 'limiter-unavailable' // shared limiter (Redis) unreachable
  | 'daily-quota-exceeded' // SES's daily sending quota is spent: all delivery paused, not counted
  | 'sending-paused' // SES paused or suspended sending for the account: all delivery paused, not counted
  | 'shutdown'; // relay stopping

/** Outcome of one recipient in one attempt, as the spool records it. */
export interface RecipientOutcome {
  recipient: string;
  status: RecipientStatus;
  /** Upstream reply text (or our reason) for logs and inspection. */
  reply?: string;
  /** Upstream SMTP code, 0 for network errors, absent when no upstream was involved. */
  code?: number;
}
