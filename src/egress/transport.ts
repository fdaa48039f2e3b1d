/**
 * Egress transport: one upstream SMTP transaction (<= 50 recipients) per `send`. Implementations:
 * SES over SMTP (ses-smtp-transport.ts, nodemailer pool) and the embedded outbox (outbox-transport.ts,
 * .eml files). A transport never throws for an SMTP or network outcome: it classifies every recipient.
 */
import type { Readable } from 'node:stream';
import type { MessageId, ReplyClass } from '../types';

export interface Transaction {
  id: MessageId;
  mailFrom: string;
  recipients: string[];
  /** Opens a fresh stream of the body (a retry on another connection needs a new one). */
  body: () => Readable;
  size: number;
}

export interface RecipientResult {
  recipient: string;
  class: ReplyClass;
  /** SMTP reply code; 0 for network errors. */
  code: number;
  /** Reply text as received (or the network error), for logs and the spool. */
  reply: string;
}

export interface Transport {
  /** Human-readable target, e.g. `email-smtp.eu-west-1.amazonaws.com:587` or `outbox:/path`. */
  readonly name: string;
  send(tx: Transaction): Promise<RecipientResult[]>;
  /** True when the upstream looks reachable (last attempt did not fail at network level). */
  healthy(): boolean;
  close(): Promise<void>;
}
