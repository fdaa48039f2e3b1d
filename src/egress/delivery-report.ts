/**
 * What a delivery attempt reports: the delivery metrics and one JSON log line per recipient status the
 * attempt reached — `message:<status>` for each of RECIPIENT_STATUSES (src/types.ts): `message:delivered`,
 * `message:deferred`, `message:failed`, `message:suppressed`, `message:expired` — with queueId,
 * recipients, upstream code and reply, attempts and latency. Written once the outcomes are durable.
 */
import type { Logger } from '../observability/logger';
import type { QueuedMessage } from '../spool/spool';
import type { DeferralReason, MessageEvent, RecipientOutcome, RecipientStatus } from '../types';
import {
  messagesDeferred,
  messagesDelivered,
  messagesExpired,
  messagesFailed,
  recipientsDeferred,
  recipientsDelivered,
  recipientsFailed,
  recipientsSuppressed,
} from './egress-metrics';

/** A deferred recipient with why, before it becomes a RecipientOutcome. */
export interface Deferral {
  outcome: RecipientOutcome;
  reason: DeferralReason;
  /** Counts towards the retry schedule. */
  counted: boolean;
}

export interface AttemptReport {
  logger: Logger;
  /** Transport name, e.g. `email-smtp.eu-west-1.amazonaws.com:587`. */
  upstream: string;
  message: QueuedMessage;
  /** Every outcome settled in this attempt, deferred ones included. */
  outcomes: RecipientOutcome[];
  deferrals: Deferral[];
  retryAt?: number;
  countAttempt: boolean;
  now: number;
}

/** Metrics and one log line per status reached by a message in one delivery attempt. */
export function reportAttempt(a: AttemptReport): void {
  const { logger, message: m, outcomes: all, deferrals, retryAt, countAttempt } = a;
  const latencyMs = a.now - m.reception.receivedAt;
  const attempts = m.attempts + (countAttempt ? 1 : 0);
  const by = (status: RecipientStatus) => all.filter((o) => o.status === status);
  const line = (event: MessageEvent, list: RecipientOutcome[], extra: Record<string, unknown> = {}) => {
    const first = list[0];
    return {
      event,
      queueId: m.id,
      rcpts: list.map((o) => o.recipient),
      code: first?.code,
      reply: first?.reply,
      attempts,
      latencyMs,
      ...extra,
    };
  };

  const delivered = by('delivered');
  if (delivered.length) {
    messagesDelivered.inc();
    recipientsDelivered.inc(delivered.length);
    logger.info(line('message:delivered', delivered, { upstream: a.upstream }), 'delivered');
  }
  const failed = by('failed');
  if (failed.length) {
    messagesFailed.inc();
    recipientsFailed.inc(failed.length);
    logger.warn(line('message:failed', failed), 'permanently refused upstream');
  }
  const suppressed = by('suppressed');
  if (suppressed.length) {
    recipientsSuppressed.inc(suppressed.length);
    logger.info(line('message:suppressed', suppressed), 'recipients on the suppression list, not sent');
  }
  const expired = by('expired');
  if (expired.length) {
    messagesExpired.inc();
    logger.warn(line('message:expired', expired), 'expired: maximum queue age exceeded');
  }
  if (deferrals.length) {
    const reasons = new Map<DeferralReason, number>();
    for (const d of deferrals) reasons.set(d.reason, (reasons.get(d.reason) ?? 0) + 1);
    for (const [reason, n] of reasons) {
      messagesDeferred.inc({ reason });
      recipientsDeferred.inc({ reason }, n);
    }
    const reasonList = [...reasons.keys()];
    const level = reasonList.every((r) => r === 'shutdown') ? 'info' : 'warn';
    logger[level](
      line(
        'message:deferred',
        deferrals.map((d) => d.outcome),
        { reason: reasonList.join(','), retryAt: retryAt ? new Date(retryAt).toISOString() : undefined },
      ),
      'deferred',
    );
  }
}
