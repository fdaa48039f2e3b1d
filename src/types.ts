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
  /** The client's DSN parameters (RFC 3461), when it gave any (only offered with BOUNCE_FROM set). */
  dsn?: EnvelopeDsn;
}

/** NOTIFY keywords of RFC 3461 section 4.1 (`NEVER` stands alone). */
export const DSN_NOTIFY_KEYWORDS = ['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'] as const;
export type DsnNotifyKeyword = (typeof DSN_NOTIFY_KEYWORDS)[number];

/** RET of RFC 3461 section 4.3: return the full message or only its headers in a failure notification. */
export type DsnReturn = 'FULL' | 'HDRS';

/** DSN parameters of one recipient (RCPT TO ... NOTIFY= ORCPT=), xtext-decoded. */
export interface RecipientDsn {
  notify?: DsnNotifyKeyword[];
  /** `addr-type;address`, e.g. `rfc822;user@example.com`. */
  orcpt?: string;
}

/** DSN parameters of one message (MAIL FROM ... RET= ENVID=) and of its recipients. */
export interface EnvelopeDsn {
  ret?: DsnReturn;
  envid?: string;
  /** By recipient address exactly as in `Envelope.recipients`. */
  recipients?: Record<string, RecipientDsn>;
}

/**
 * Why a delivery status notification (RFC 3464) is sent to a message's envelope sender — the `type` label
 * of `ses_relay_notifications_total`:
 * - `failure`: SES refused recipients for good (5xx);
 * - `expiry`: recipients were still not delivered after MAX_QUEUE_AGE;
 * - `operator-bounce`: an operator returned the message (`queue bounce`);
 * - `delay`: a warning that the message is still being retried after DELAY_WARNING_TIME;
 * - `relayed`: NOTIFY=SUCCESS was asked and SES (a next hop without DSN) accepted the recipient.
 */
export const NOTIFICATION_TYPES = ['failure', 'expiry', 'operator-bounce', 'delay', 'relayed'] as const;
export type NotificationType = (typeof NOTIFICATION_TYPES)[number];

/**
 * Priorities of a tenant's mail and their weights in the fair share of the SES rate: while the rate is the
 * bottleneck, tenants with mail waiting get recipients in proportion to these weights (not first come,
 * first served). The `priority` field of an API-key item or of an SMTP_USER_POLICY_FILE entry.
 */
export const TENANT_PRIORITIES = ['high', 'normal', 'bulk'] as const;
export type TenantPriority = (typeof TENANT_PRIORITIES)[number];
export const TENANT_WEIGHTS: Readonly<Record<TenantPriority, number>> = { high: 8, normal: 4, bulk: 1 };

/** The tenant of mail from trusted networks without AUTH (one tenant of its own, priority normal). */
export const UNAUTHENTICATED_TENANT = 'trusted-networks';

/**
 * Who a message belongs to for fair shares, limits and SES settings: an API key (by its configured
 * `name`) or an SMTP user, with its policy as it was when the message was accepted (stored with the
 * message, so a key changed or deleted later does not change mail already queued).
 */
export interface Tenant {
  /** A bounded label (the key's configured name or the SMTP user name, never a secret). */
  name: string;
  priority: TenantPriority;
  /** Recipients per second this tenant may use at most (within the shared SES rate). */
  rateLimit?: number;
  /** Recipients accepted per UTC day (ingress: 451 4.7.1 over it). */
  dailyQuota?: number;
  /** SES configuration set for its messages (overrides SES_CONFIGURATION_SET). */
  configurationSet?: string;
  /** SES message tags for its messages (name -> value). */
  tags?: Record<string, string>;
}

/** Who handed the message to us, kept for logs and policy. */
export interface Reception {
  clientAddress: string;
  heloName?: string;
  /** Authenticated user or API key label, if the session authenticated. */
  authUser?: string;
  /** The tenant the message belongs to; absent: UNAUTHENTICATED_TENANT with priority normal. */
  tenant?: Tenant;
  /** Time the spool acknowledged the message (ms since epoch). */
  receivedAt: number;
  /** Set on a delivery status notification the relay generated itself: it never gets one of its own. */
  notification?: NotificationType;
  /** The queue id of the message a notification reports on. */
  notificationFor?: MessageId;
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
 * - `held`: put aside by an operator (`queue hold`) until `queue release`: never leased, never expires while
 *   held (the time held does not count towards MAX_QUEUE_AGE).
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
