/**
 * Delivery status notifications in tests: send one message with exact DSN parameters over a raw SMTP
 * connection, and take a received notification apart with mailparser, part by part, the
 * message/delivery-status part field by field (RFC 3464 section 2.1: blocks separated by empty lines).
 */
import { simpleParser, type Attachment, type ParsedMail } from 'mailparser';
import { RawSmtpClient } from './smtp-client';
import type { ReceivedMessage } from './fake-ses';

export interface RawRecipient {
  address: string;
  /** RCPT TO parameters as written, e.g. `NOTIFY=NEVER`. */
  params?: string;
}

export interface RawMessage {
  /** `''` for the null sender. */
  mailFrom: string;
  /** MAIL FROM parameters as written, e.g. `RET=HDRS ENVID=abc`. */
  mailParams?: string;
  rcpts: RawRecipient[];
  /** Header section and body, CRLF lines, without the final dot. */
  data: string;
}

/** Send one message; resolves with the queue id from the 250 (throws on any other reply). */
export async function sendRaw(port: number, m: RawMessage): Promise<string> {
  const c = await RawSmtpClient.connect(port);
  try {
    await c.read();
    expect(await c.command('EHLO client.test'), 250);
    expect(await c.command(`MAIL FROM:<${m.mailFrom}>${m.mailParams ? ` ${m.mailParams}` : ''}`), 250);
    for (const r of m.rcpts)
      expect(await c.command(`RCPT TO:<${r.address}>${r.params ? ` ${r.params}` : ''}`), 250);
    expect(await c.command('DATA'), 354);
    const reply = await c.command(`${m.data.replace(/\r?\n/g, '\r\n').replace(/\r\n$/, '')}\r\n.`, 15_000);
    expect(reply, 250);
    await c.command('QUIT').catch(() => undefined);
    return /queued as (\S+)/.exec(reply.text)![1];
  } finally {
    c.close();
  }
}

function expect(reply: { code: number; text: string }, code: number): void {
  if (reply.code !== code) throw new Error(`expected ${code}, got ${reply.text}`);
}

/** A simple message body with a Subject that names it. */
export function messageData(subject: string, body = 'hello\r\n'): string {
  return `From: app@example.com\r\nTo: someone@example.net\r\nSubject: ${subject}\r\n\r\n${body}`;
}

export type FieldBlock = Map<string, string>;

export interface ParsedNotification {
  mail: ParsedMail;
  /** The human-readable first part. */
  text: string;
  /** message/delivery-status: per-message fields, then one block per recipient (field names lower case). */
  perMessage: FieldBlock;
  perRecipient: FieldBlock[];
  /** The third part: text/rfc822-headers or message/rfc822. */
  returned: Attachment;
}

function fieldBlocks(text: string): FieldBlock[] {
  return text
    .split(/\r?\n\r?\n/)
    .map((block) => block.trim())
    .filter(Boolean)
    .map((block) => {
      const fields: FieldBlock = new Map();
      // Continuation lines (folding) join the previous field.
      for (const line of block.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
        const colon = line.indexOf(':');
        if (colon > 0) fields.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
      return fields;
    });
}

/** Parse a notification as received upstream; throws when it is not a multipart/report of three parts. */
export async function parseNotification(body: Buffer): Promise<ParsedNotification> {
  const mail = await simpleParser(body, { keepDeliveryStatus: true });
  const type = mail.headers.get('content-type') as { value: string; params: Record<string, string> };
  if (type.value !== 'multipart/report' || type.params['report-type'] !== 'delivery-status') {
    throw new Error(`not a delivery status notification: ${JSON.stringify(type)}`);
  }
  const status = mail.attachments.find((a) => a.contentType === 'message/delivery-status');
  const returned = mail.attachments.find((a) =>
    ['text/rfc822-headers', 'message/rfc822'].includes(a.contentType),
  );
  if (!status || !returned || mail.attachments.length !== 2) {
    throw new Error(`unexpected parts: ${mail.attachments.map((a) => a.contentType).join(', ')}`);
  }
  const [perMessage, ...perRecipient] = fieldBlocks(status.content.toString('utf8'));
  return { mail, text: mail.text ?? '', perMessage, perRecipient, returned };
}

/** The notifications among messages received upstream (sent from `bounceFrom`). */
export function notificationsIn(messages: ReceivedMessage[], bounceFrom: string): ReceivedMessage[] {
  return messages.filter((m) => m.mailFrom === bounceFrom);
}

/** The recipient block for `recipient`. */
export function blockFor(n: ParsedNotification, recipient: string): FieldBlock {
  const block = n.perRecipient.find((b) => b.get('final-recipient') === `rfc822; ${recipient}`);
  if (!block) throw new Error(`no recipient block for ${recipient}`);
  return block;
}
