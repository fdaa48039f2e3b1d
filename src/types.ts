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
 * Where a message is. A message is `queued` until it is due, `leased` while a delivery attempt holds
 * it, `deferred` after a transient failure until its next attempt, and ends `delivered` (removed),
 * `failed` (kept for inspection) or `suppressed` (every recipient on the suppression list).
 */
export type MessageState = 'queued' | 'leased' | 'deferred' | 'delivered' | 'failed' | 'suppressed';

/** Final or interim outcome for one recipient. */
export type RecipientStatus = 'delivered' | 'deferred' | 'failed' | 'suppressed' | 'expired';

/** How an upstream reply is classified. */
export type ReplyClass = 'delivered' | 'throttled' | 'transient' | 'permanent';

/** Why a delivery attempt was put off. */
export type DeferralReason =
  | 'throttled-by-ses' // 454 Throttling failure from SES
  | 'upstream-transient' // other 4xx from upstream
  | 'network' // connection refused/reset/timeout
  | 'policy-unavailable' // suppression list could not be consulted
  | 'limiter-unavailable' // shared limiter (Redis) unreachable
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
