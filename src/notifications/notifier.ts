/**
 * The notifier: a stage of its own beside the dispatcher, like Postfix's bounce(8) daemon. The spool records
 * which notifications are owed in the same transaction as the outcome (spool-notifications.ts); the notifier
 * composes each one (dsn-message.ts) once the message's attempt is over, and stores it as an ordinary message
 * — in the same commit that deletes the owed row, so exactly once — to the original envelope sender. From
 * there it goes through the same spool, suppression filter, rate limiter and SES as any mail, and is counted
 * in `ses_relay_notifications_total{type}`.
 *
 * Envelope sender: BOUNCE_FROM, not the null sender RFC 3464 / RFC 5321 section 4.5.5 prescribe for
 * notifications. SES sends only from verified identities (`MAIL FROM:<>` is refused with 554 "Email address
 * is not verified"), and SES uses its own MAIL FROM domain anyway, so bounces of our notifications come back
 * to SES (and its bounce notifications, i.e. the suppression list), never to this relay. Loops are prevented
 * without the null sender: a notification is marked in the spool (its reception's `notification`) and never
 * gets one of its own; mail from `<>` or from BOUNCE_FROM never gets one; and every notification carries
 * `Auto-Submitted: auto-replied`, so autoresponders (RFC 3834) stay silent.
 *
 * Work: woken when a commit made a notification owed, and every POLL_MS (owed rows of messages that were
 * being delivered, and the rows a crash left behind, are found that way; at start at once). A spool that
 * cannot be written backs the notifier off (1 s doubling to 30 s); the rows stay owed.
 */
import type { Logger } from '../observability/logger';
import { NotificationNotOwedError, type SqliteSpool } from '../spool/sqlite-spool';
import type { PendingNotification } from '../spool/spool-notifications';
import { buildNotification, returnsFullMessage, type DsnSettings } from './dsn-message';
import { notificationsTotal } from './notification-metrics';

/** What the notifier needs of the spool (SqliteSpool). */
export type NotificationSpool = Pick<
  SqliteSpool,
  'pendingNotifications' | 'storeNotification' | 'hasMessage' | 'openBody'
>;

export interface NotifierOptions {
  spool: NotificationSpool;
  settings: DsnSettings;
  logger: Logger;
  /** A notification was stored: the dispatcher should look at the spool. */
  stored?: () => void;
  /** Poll interval (default 5 s). */
  pollMs?: number;
}

const POLL_MS = 5_000;
const BACKOFF_MS: [number, number] = [1_000, 30_000];
const BATCH = 20;

export class Notifier {
  private running = false;
  private loopDone?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private wakeUp?: () => void;
  private woken = false;
  /** Rows whose composition failed (a bug, not the disk): not retried by this process. */
  private readonly broken = new Set<number>();

  constructor(private readonly options: NotifierOptions) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loopDone = this.loop().catch((err) => this.options.logger.fatal({ err }, 'notifier loop crashed'));
  }

  /** A notification became owed: compose it now. */
  poke(): void {
    this.woken = true;
    const wake = this.wakeUp;
    this.wakeUp = undefined;
    wake?.();
  }

  /** Stop after the notification being stored (it is never half stored: one commit). */
  async stop(): Promise<void> {
    this.running = false;
    this.poke();
    await this.loopDone;
  }

  private async loop(): Promise<void> {
    let backoff = BACKOFF_MS[0];
    while (this.running) {
      this.woken = false;
      let delay = this.options.pollMs ?? POLL_MS;
      try {
        await this.drain();
        backoff = BACKOFF_MS[0];
      } catch (err) {
        this.options.logger.warn(
          { event: 'notification:unwritten', err: (err as Error).message },
          'notification not stored; retrying',
        );
        delay = backoff;
        backoff = Math.min(backoff * 2, BACKOFF_MS[1]);
      }
      if (this.running && !this.woken) await this.sleep(delay);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.timer = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(this.timer);
        resolve();
      };
    });
  }

  /** Compose and store every owed notification whose message is not being delivered. */
  private async drain(): Promise<void> {
    for (;;) {
      const batch = this.options.spool.pendingNotifications(BATCH + this.broken.size);
      const todo = batch.filter((p) => !this.broken.has(p.id));
      if (todo.length === 0 || !this.running) return;
      for (const p of todo) {
        if (!this.running) return;
        await this.produce(p);
      }
    }
  }

  private async produce(p: PendingNotification): Promise<void> {
    const { spool, settings, logger } = this.options;
    const hasBody = spool.hasMessage(p.messageId);
    const open = hasBody && returnsFullMessage(p, true) ? () => spool.openBody(p.messageId) : undefined;
    let body;
    try {
      body = buildNotification(p, settings, open);
    } catch {
      // The message left the spool meanwhile (an operator deleted it): return its headers instead. (A body
      // file removed after this point fails the store; the retry finds the message gone and does this.)
      try {
        body = buildNotification(p, settings, undefined);
      } catch (err) {
        this.broken.add(p.id);
        const fields = { event: 'notification:failed', about: p.messageId, type: p.type, err };
        logger.error(fields, 'notification could not be composed');
        return;
      }
    }
    let queueId: string;
    try {
      queueId = await spool.storeNotification(p.id, {
        envelope: { mailFrom: settings.bounceFrom, recipients: [p.mailFrom] },
        body,
        reception: {
          clientAddress: 'local',
          notification: p.type,
          notificationFor: p.messageId,
          // The tenant of the message reported on: its fair share, its SES settings.
          ...(p.tenant ? { tenant: p.tenant } : {}),
        },
      });
    } catch (err) {
      if (err instanceof NotificationNotOwedError) return; // stored already: never twice
      throw err;
    }
    notificationsTotal.inc({ type: p.type });
    logger.info(
      {
        event: 'notification:queued',
        queueId,
        about: p.messageId,
        type: p.type,
        to: p.mailFrom,
        rcpts: p.recipients.map((r) => r.recipient),
      },
      'delivery status notification queued for the sender',
    );
    this.options.stored?.();
  }
}
