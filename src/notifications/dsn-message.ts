/**
 * Composing one delivery status notification (RFC 3464) with nodemailer's MimeNode:
 *
 *   multipart/report; report-type=delivery-status        (RFC 6522)
 *     text/plain; charset=utf-8        what happened, each recipient with SES's reply, for a person
 *     message/delivery-status          the same for programs (RFC 3464 section 2): per-message fields, then
 *                                      one block per recipient
 *     text/rfc822-headers | message/rfc822   the original's header section, or the whole message (RET)
 *
 * Headers: From = BOUNCE_FROM (`Mail Delivery System <...>` unless it names itself), To = the original
 * envelope sender, `Auto-Submitted: auto-replied` (RFC 3834 section 5: responders stay silent), a Subject
 * in Postfix's words, Date, a Message-ID in BOUNCE_FROM's domain.
 *
 * What is returned (RFC 3461 section 4.3): a failure notification (failure, expiry, operator-bounce) returns
 * the full message with RET=FULL when it is at most RETURN_FULL_MAX bytes, and without RET when it is at
 * most RETURN_DEFAULT_MAX bytes (Postfix's bounce_size_limit, 50 000); otherwise, and for RET=HDRS, only the
 * headers. Delay warnings and `relayed` reports always carry the headers only. A message no longer in the
 * spool (deleted by an operator) is reported with its headers too.
 *
 * The Action for NOTIFY=SUCCESS is `relayed`, not `delivered`: SES is the next hop and does not offer DSN
 * to us, and RFC 3461 section 5.2.2 says a DSN-conforming MTA relaying to a server without DSN issues a
 * "relayed" DSN for recipients that asked for SUCCESS (Postfix does the same: "delivery status: relayed").
 * Every field value written here is printable US-ASCII (the spool stores ASCII addresses; replies are
 * flattened by spool-notifications.ts), so no header or field can be injected.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import MimeNode from 'nodemailer/lib/mime-node';
import type { NotificationRecipient, PendingNotification } from '../spool/spool-notifications';
import type { NotificationType } from '../types';

/** Failure notifications return the whole message up to this size with RET=FULL. */
export const RETURN_FULL_MAX = 10 * 1024 * 1024;
/** ...and without RET (Postfix's bounce_size_limit default). */
export const RETURN_DEFAULT_MAX = 50_000;

export interface DsnSettings {
  /** From header (BOUNCE_FROM as configured, with a display name). */
  from: string;
  /** BOUNCE_FROM's bare address (the Message-ID domain). */
  bounceFrom: string;
  /** Reporting-MTA (SERVER_FQDN). */
  reportingMta: string;
  /** Remote-MTA for recipients SES answered (the SES endpoint), when known. */
  remoteMta?: string;
}

/** A prepared header value: written as given (ASCII without CR/LF, built here). */
const prepared = (value: string) => ({ prepared: true, value }) as unknown as string;

const FAILURE_TYPES: ReadonlySet<NotificationType> = new Set(['failure', 'expiry', 'operator-bounce']);

const SUBJECTS: Record<NotificationType, string> = {
  failure: 'Undelivered Mail Returned to Sender',
  expiry: 'Undelivered Mail Returned to Sender',
  'operator-bounce': 'Undelivered Mail Returned to Sender',
  delay: 'Delayed Mail (still being retried)',
  relayed: 'Successful Mail Delivery Report',
};

const INTRODUCTIONS: Record<NotificationType, string> = {
  failure:
    'Your message could not be delivered to the recipients below: Amazon SES refused them permanently. ' +
    'The relay will not try again.',
  expiry:
    'Your message could not be delivered to the recipients below before the maximum queue age ran out; ' +
    'the relay has stopped trying.',
  'operator-bounce':
    "Your message was returned to you by the relay's operator before it was delivered to the recipients below.",
  delay:
    'Your message has not been delivered yet to the recipients below. The relay keeps trying; you do not ' +
    'need to resend it. You will hear again only if it finally fails.',
  relayed:
    'Your message was handed to Amazon SES for the recipients below, as you asked (NOTIFY=SUCCESS). SES ' +
    'does not report final delivery back to this relay: this confirms the hand-over, not the delivery.',
};

/** RFC 5322 date-time in UTC. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, '+0000');
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1);
}

/** The message/delivery-status body (RFC 3464 sections 2.2 and 2.3), CRLF lines. */
export function deliveryStatus(p: PendingNotification, s: DsnSettings): string {
  const message = [
    ...(p.envid ? [`Original-Envelope-Id: ${p.envid}`] : []),
    `Reporting-MTA: dns; ${s.reportingMta}`,
    `X-Ses-Relay-Queue-ID: ${p.messageId}`,
    `Arrival-Date: ${rfc5322Date(p.receivedAt)}`,
  ];
  const blocks = p.recipients.map((r) => recipientFields(r, s).join('\r\n'));
  return `${[message.join('\r\n'), ...blocks].join('\r\n\r\n')}\r\n`;
}

function recipientFields(r: NotificationRecipient, s: DsnSettings): string[] {
  const fields: string[] = [];
  if (r.orcpt) fields.push(`Original-Recipient: ${r.orcpt}`);
  fields.push(`Final-Recipient: rfc822; ${r.recipient}`, `Action: ${r.action}`, `Status: ${r.status}`);
  if (r.diagnostic && s.remoteMta) fields.push(`Remote-MTA: dns; ${s.remoteMta}`);
  if (r.diagnostic) fields.push(`Diagnostic-Code: smtp; ${r.diagnostic}`);
  fields.push(`Last-Attempt-Date: ${rfc5322Date(r.lastAttemptAt)}`);
  if (r.willRetryUntil !== undefined) fields.push(`Will-Retry-Until: ${rfc5322Date(r.willRetryUntil)}`);
  return fields;
}

/** Whether the whole message goes back (see the file comment). */
export function returnsFullMessage(p: PendingNotification, bodyAvailable: boolean): boolean {
  if (!FAILURE_TYPES.has(p.type) || !bodyAvailable || p.ret === 'HDRS') return false;
  return p.size <= (p.ret === 'FULL' ? RETURN_FULL_MAX : RETURN_DEFAULT_MAX);
}

function humanText(p: PendingNotification, full: boolean, s: DsnSettings): string {
  const lines = [
    `This is the mail system at ${s.reportingMta}.`,
    '',
    INTRODUCTIONS[p.type],
    '',
    ...p.recipients.map((r) => {
      const why = r.diagnostic ? `SES said: ${r.diagnostic}` : statusText(p.type, r);
      return `<${r.recipient}>: ${why}`;
    }),
    '',
    `Queue id: ${p.messageId}, received ${rfc5322Date(p.receivedAt)}.`,
  ];
  if (p.type === 'delay' && p.recipients[0]?.willRetryUntil !== undefined) {
    lines.push(`The relay gives up at ${rfc5322Date(p.recipients[0].willRetryUntil)}.`);
  }
  if (FAILURE_TYPES.has(p.type)) {
    lines.push(full ? 'Your message is attached.' : 'The headers of your message are attached.');
  }
  return `${lines.join('\r\n')}\r\n`;
}

function statusText(type: NotificationType, r: NotificationRecipient): string {
  if (type === 'expiry') return `not delivered in time (status ${r.status}); SES never answered`;
  if (type === 'operator-bounce') return `returned by the operator (status ${r.status})`;
  return `status ${r.status}`;
}

/**
 * The notification as a byte stream. `originalBody` opens the original message when the spool still has it
 * (only called when the full message is returned).
 */
export function buildNotification(
  p: PendingNotification,
  s: DsnSettings,
  originalBody: (() => Readable) | undefined,
): Readable {
  const full = returnsFullMessage(p, originalBody !== undefined);
  const root = new MimeNode('multipart/report; report-type=delivery-status', { newline: 'win' });
  root.createChild('text/plain; charset=utf-8').setContent(humanText(p, full, s));
  root.createChild('message/delivery-status').setContent(deliveryStatus(p, s));
  if (full && originalBody) {
    // The original's bytes, unchanged (message/* is never re-encoded; it may hold 8-bit text).
    root
      .createChild('message/rfc822')
      .setHeader('Content-Transfer-Encoding', '8bit')
      .setContent(originalBody());
  } else {
    const ascii = !p.headers.some((b) => b > 0x7e);
    root.createChild('text/rfc822-headers').setContent(ascii ? p.headers.toString('latin1') : p.headers);
  }
  root.setHeader('From', s.from);
  root.setHeader('To', p.mailFrom);
  root.setHeader('Subject', SUBJECTS[p.type]);
  root.setHeader('Date', rfc5322Date(Date.now()));
  root.setHeader(
    'Message-ID',
    prepared(`<${Date.now().toString(36)}.${randomBytes(10).toString('hex')}@${domainOf(s.bounceFrom)}>`),
  );
  root.setHeader('Auto-Submitted', prepared('auto-replied'));
  return root.createReadStream();
}
