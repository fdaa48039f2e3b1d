/**
 * One message's delivery attempt as the dispatcher tracks it, and what shutdown does with the attempts
 * that outlive its grace.
 */
import type { Logger } from '../observability/logger';
import type { QueuedMessage, Spool } from '../spool/spool';
import type { RecipientOutcome } from '../types';
import type { Deferral } from './delivery-report';

export interface Task {
  message: QueuedMessage;
  promise: Promise<void>;
  /** Set when stop() gave up waiting: the task must not touch the spool any more. */
  abandoned: boolean;
  /** An SMTP transaction of this message is in progress. */
  sending: boolean;
  /** Recipients SES accepted whose outcome is not yet durable (said in the log if abandoned). */
  unrecordedDelivered: number;
  /** The one message let through while delivery is paused (its first transaction is the probe). */
  probe: boolean;
  /** Its queue wait was observed (first transaction of the attempt). */
  waitObserved?: boolean;
}

/** What an attempt has learnt so far: outcomes already durable, outcomes to write, deferrals. */
export interface Attempt {
  recorded: RecipientOutcome[];
  outcomes: RecipientOutcome[];
  deferrals: Deferral[];
  /** An SMTP transaction was attempted. */
  attempted: boolean;
}

/**
 * Shutdown gave up waiting for these tasks: back to the spool unsettled (due again at once, or after a
 * restart), each said in the log (at-least-once: it may be sent again).
 */
export function releaseAbandoned(spool: Spool, logger: Logger, tasks: Task[]): void {
  for (const t of tasks) {
    try {
      spool.release(t.message.id);
    } catch {
      /* spool already closed */
    }
    logger.warn(
      {
        event: 'message:released',
        queueId: t.message.id,
        sending: t.sending,
        unrecordedDelivered: t.unrecordedDelivered,
      },
      'shutdown grace exceeded: message released to the spool (it may be sent again: at-least-once)',
    );
  }
}
