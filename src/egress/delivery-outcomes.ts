/**
 * From SES's answers to the spool's words: each recipient's classified reply becomes an outcome
 * (`delivered`, `failed`) or a deferral with its reason, and a deferred attempt gets its retry delay —
 * RETRY_SCHEDULE by counted attempts (with a little jitter) for transient replies and network errors, a
 * short uncounted retry for SES throttling, an unavailable policy or limiter, at once after a shutdown or
 * when delivery paused (daily quota, sending paused: the pause itself holds the mail back).
 * And before any of that, the suppression policy's verdict.
 */
import type { Logger } from '../observability/logger';
import { PolicyUnavailableError, type RecipientPolicy } from '../policy/policy';
import type { QueuedMessage } from '../spool/spool';
import type { RecipientOutcome } from '../types';
import type { Deferral } from './delivery-report';
import type { RecipientResult } from './transport/transport';

export interface RetryPolicy {
  retryScheduleMs: number[];
  /** Retry delay range after a 454 Throttling failure. */
  throttleRetryMs: [number, number];
  /** Retry delay when the policy or the limiter is unavailable. */
  unavailableRetryMs: number;
}

/** Every recipient expired: `age` (paused time not counted) passed MAX_QUEUE_AGE; `wall` is the real age. */
export function expiredOutcomes(recipients: string[], age: number, wall: number): RecipientOutcome[] {
  const hours = (ms: number) => (ms / 3600_000).toFixed(1);
  const paused =
    wall - age > 0 ? `, ${hours(wall - age)} h more while delivery was paused or the message held` : '';
  const reply = `expired: not delivered within the maximum queue age (queued ${hours(age)} h${paused})`;
  return recipients.map((recipient) => ({ recipient, status: 'expired', reply }));
}

/** Append each result to `outcomes` (final) or `deferrals` (to retry). */
export function classifyResults(
  results: RecipientResult[],
  outcomes: RecipientOutcome[],
  deferrals: Deferral[],
): void {
  for (const r of results) {
    const base = { recipient: r.recipient, reply: r.reply, code: r.code };
    if (r.signal) {
      // An account-wide condition: all delivery pauses (rate/delivery-pause.ts); not this message's
      // attempt to count.
      deferrals.push({ outcome: { ...base, status: 'deferred' }, reason: r.signal, counted: false });
      continue;
    }
    switch (r.class) {
      case 'delivered':
        outcomes.push({ ...base, status: 'delivered' });
        break;
      case 'permanent':
        outcomes.push({ ...base, status: 'failed' });
        break;
      case 'throttled':
        deferrals.push({
          outcome: { ...base, status: 'deferred' },
          reason: 'throttled-by-ses',
          counted: false,
        });
        break;
      case 'transient':
        deferrals.push({
          outcome: { ...base, status: 'deferred' },
          reason: r.code === 0 ? 'network' : 'upstream-transient',
          counted: true,
        });
        break;
    }
  }
}

/** When the deferred recipients of an attempt are due again, and whether the attempt counts. */
export function retryDelay(
  policy: RetryPolicy,
  attempts: number,
  deferrals: Deferral[],
): { delay: number; counted: boolean } {
  if (deferrals.some((d) => d.counted)) {
    const s = policy.retryScheduleMs;
    const base = s[Math.min(attempts, s.length - 1)] ?? 60_000;
    return { delay: base + Math.random() * Math.min(base * 0.1, 5000), counted: true };
  }
  if (deferrals.some((d) => d.reason === 'daily-quota-exceeded' || d.reason === 'sending-paused')) {
    // Due at once: the delivery pause holds everything back until SES takes mail again, then all goes.
    return { delay: 0, counted: false };
  }
  if (deferrals.some((d) => d.reason === 'throttled-by-ses')) {
    const [lo, hi] = policy.throttleRetryMs;
    return { delay: lo + Math.random() * Math.max(0, hi - lo), counted: false };
  }
  if (deferrals.every((d) => d.reason === 'shutdown')) return { delay: 0, counted: false };
  return { delay: policy.unavailableRetryMs, counted: false };
}

/**
 * Ask the suppression policy. Returns the recipients to send to (suppressed ones become outcomes), or
 * undefined when the policy could not be consulted and every recipient was deferred (unless fail-open).
 */
export async function consultPolicy(
  ctx: { policy: RecipientPolicy; failOpen: boolean; logger: Logger },
  m: QueuedMessage,
  attempt: { outcomes: RecipientOutcome[]; deferrals: Deferral[] },
): Promise<string[] | undefined> {
  const recipients = m.envelope.recipients;
  try {
    const decision = await ctx.policy.check(recipients);
    for (const s of decision.suppressed) {
      attempt.outcomes.push({
        recipient: s.recipient,
        status: 'suppressed',
        reply: `suppressed: ${s.matched} is on the suppression list${s.reason ? ` (${s.reason})` : ''}`,
      });
    }
    return decision.allowed;
  } catch (err) {
    if (!ctx.failOpen) {
      const reply = `policy unavailable: ${(err as Error).message}`;
      if (!(err instanceof PolicyUnavailableError))
        ctx.logger.error({ err, queueId: m.id }, 'policy check failed');
      for (const recipient of recipients) {
        attempt.deferrals.push({
          outcome: { recipient, status: 'deferred', reply },
          reason: 'policy-unavailable',
          counted: false,
        });
      }
      return undefined;
    }
    ctx.logger.warn(
      { event: 'policy:fail-open', queueId: m.id, err: (err as Error).message },
      'suppression list unavailable: sending anyway (BLOCKLIST_FAIL_OPEN)',
    );
    return [...recipients];
  }
}
