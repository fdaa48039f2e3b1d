/**
 * Egress transport: one upstream transaction (<= 50 recipients) per `send`. Implementations:
 * SES over SMTP (ses-smtp-transport.ts, nodemailer pool), SES over the v2 API (ses-api-transport.ts,
 * SendEmail with raw content) and the embedded outbox (outbox-transport.ts, .eml files). A transport never
 * throws for an SMTP, API or network outcome: it classifies every recipient.
 */
import type { Readable } from 'node:stream';
import type { MessageId, ReplyClass } from '../../types';

export interface Transaction {
  id: MessageId;
  mailFrom: string;
  recipients: string[];
  /** Opens a fresh stream of the body (a retry on another connection needs a new one). */
  body: () => Readable;
  size: number;
  /** The tenant's SES configuration set (overrides SES_CONFIGURATION_SET). */
  configurationSet?: string;
  /** The tenant's SES message tags (name -> value). */
  tags?: Record<string, string>;
}

/**
 * An account-wide condition SES reported with this reply, beyond its class (which stays the retry decision):
 * - `daily-quota-exceeded`: the 24-hour sending quota is spent (SMTP `454 Throttling failure: Daily message
 *   quota exceeded`, or the API's error with that text); waiting for the window to roll is the only cure.
 * - `sending-paused`: SES paused or suspended sending for the whole account (API SendingPausedException,
 *   AccountSuspendedException); nothing will go out until an operator acts.
 * Both come with class `transient`; a later step pauses all delivery on them.
 */
export type UpstreamSignal = 'daily-quota-exceeded' | 'sending-paused';

export interface RecipientResult {
  recipient: string;
  class: ReplyClass;
  /** SMTP reply code (for the API: the SMTP code that means the same); 0 for network errors. */
  code: number;
  /** Reply text as received (or the network error), for logs and the spool. */
  reply: string;
  /** The id SES gave the message it accepted (SendEmail's MessageId), when known. */
  sesMessageId?: string;
  signal?: UpstreamSignal;
}

export interface Transport {
  /** Human-readable target, e.g. `email-smtp.eu-west-1.amazonaws.com:587` or `outbox:/path`. */
  readonly name: string;
  send(tx: Transaction): Promise<RecipientResult[]>;
  /** True when the upstream looks reachable (last attempt did not fail at network level). */
  healthy(): boolean;
  close(): Promise<void>;
}
