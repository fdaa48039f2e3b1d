/**
 * Reading SES notifications as SNS delivers them. Two formats exist: identity notifications
 * (`notificationType`: Bounce, Complaint, Delivery) and configuration-set event publishing (`eventType`:
 * Bounce, Complaint, Delivery, Send, Reject, Open, Click, DeliveryDelay, ...). Both carry the same `bounce`,
 * `complaint` and `mail` objects. Only permanent bounces and complaints suppress; the rest is logged.
 */
import { normalizeAddress } from '../../src/policy/address';

export type SuppressionReason = 'bounce' | 'complaint';

/** One address to suppress, with what caused it. */
export interface SuppressionEntry {
  email: string;
  reason: SuppressionReason;
  bounceType?: string;
  bounceSubType?: string;
  complaintFeedbackType?: string;
  /** SES feedback id of the bounce/complaint (or the SNS message id): the idempotency key. */
  feedbackId: string;
  /** SES message id of the mail that bounced or was complained about. */
  messageId?: string;
  /** When SES saw the bounce/complaint (ISO 8601). */
  timestamp: string;
}

export type Classification =
  | { action: 'suppress'; type: string; entries: SuppressionEntry[] }
  | { action: 'ignore'; type: string; detail: string; recipients: string[] };

export class MalformedNotificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MalformedNotificationError';
  }
}

type Json = Record<string, unknown>;

function obj(v: unknown): Json | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function recipientsOf(list: unknown, field: string): string[] {
  if (!Array.isArray(list)) throw new MalformedNotificationError(`${field} is not a list`);
  const out = new Set<string>();
  for (const r of list) {
    const email = normalizeAddress(str(obj(r)?.emailAddress) ?? '');
    if (email && email.includes('@')) out.add(email);
  }
  if (out.size === 0) throw new MalformedNotificationError(`${field} names no address`);
  return [...out];
}

function isoOr(value: unknown, fallback: string): string {
  const s = str(value);
  return s && !Number.isNaN(Date.parse(s)) ? new Date(s).toISOString() : fallback;
}

/**
 * Classify one SNS message body. Throws MalformedNotificationError when it is not JSON or not a usable SES
 * notification. `snsMessageId` stands in for a missing feedbackId; `now` for a missing timestamp.
 */
export function classifyNotification(
  body: string,
  snsMessageId: string,
  now: Date = new Date(),
): Classification {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new MalformedNotificationError('message is not JSON');
  }
  const n = obj(parsed);
  if (!n) throw new MalformedNotificationError('message is not a JSON object');
  const type = str(n.notificationType) ?? str(n.eventType);
  if (!type) throw new MalformedNotificationError('neither notificationType nor eventType');
  const mail = obj(n.mail);
  const messageId = str(mail?.messageId);
  const destination = Array.isArray(mail?.destination) ? (mail.destination as unknown[]).map(String) : [];

  if (type === 'Bounce') {
    const bounce = obj(n.bounce);
    if (!bounce) throw new MalformedNotificationError('Bounce without a bounce object');
    const bounceType = str(bounce.bounceType);
    const bounceSubType = str(bounce.bounceSubType);
    const recipients = recipientsOf(bounce.bouncedRecipients, 'bounce.bouncedRecipients');
    if (bounceType !== 'Permanent') {
      return {
        action: 'ignore',
        type,
        detail: `${bounceType ?? 'unknown'}/${bounceSubType ?? ''}`,
        recipients,
      };
    }
    const feedbackId = str(bounce.feedbackId) ?? snsMessageId;
    const timestamp = isoOr(bounce.timestamp, now.toISOString());
    return {
      action: 'suppress',
      type,
      entries: recipients.map((email) => ({
        email,
        reason: 'bounce',
        bounceType,
        ...(bounceSubType ? { bounceSubType } : {}),
        feedbackId,
        ...(messageId ? { messageId } : {}),
        timestamp,
      })),
    };
  }

  if (type === 'Complaint') {
    const complaint = obj(n.complaint);
    if (!complaint) throw new MalformedNotificationError('Complaint without a complaint object');
    const recipients = recipientsOf(complaint.complainedRecipients, 'complaint.complainedRecipients');
    const complaintFeedbackType = str(complaint.complaintFeedbackType);
    const feedbackId = str(complaint.feedbackId) ?? snsMessageId;
    const timestamp = isoOr(complaint.timestamp, now.toISOString());
    return {
      action: 'suppress',
      type,
      entries: recipients.map((email) => ({
        email,
        reason: 'complaint',
        ...(complaintFeedbackType ? { complaintFeedbackType } : {}),
        feedbackId,
        ...(messageId ? { messageId } : {}),
        timestamp,
      })),
    };
  }

  if (type === 'Delivery') {
    const delivery = obj(n.delivery);
    const recipients = Array.isArray(delivery?.recipients)
      ? (delivery.recipients as unknown[]).map(String)
      : [];
    return { action: 'ignore', type, detail: 'delivered', recipients };
  }
  return { action: 'ignore', type, detail: 'not a bounce or complaint', recipients: destination };
}
