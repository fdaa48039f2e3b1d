/**
 * Notification metrics: `ses_relay_notifications_total{type}` counts delivery status notifications stored
 * for senders (types: NOTIFICATION_TYPES in src/types.ts); `ses_relay_notifications_pending` the ones owed
 * but not yet composed (a message still being delivered, or a spool that cannot be written).
 */
import { Counter, Gauge } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';
import { NOTIFICATION_TYPES } from '../types';

export const notificationsTotal = new Counter({
  name: `${METRIC_PREFIX}notifications_total`,
  help: 'Delivery status notifications stored in the spool for the original senders, by type (failure, expiry, operator-bounce, delay, relayed).',
  labelNames: ['type'] as const,
  registers: [registry],
});
for (const type of NOTIFICATION_TYPES) notificationsTotal.inc({ type }, 0);

let pendingCount: (() => number) | undefined;

export const notificationsPending = new Gauge({
  name: `${METRIC_PREFIX}notifications_pending`,
  help: 'Delivery status notifications owed to senders and not yet composed.',
  registers: [registry],
  collect() {
    try {
      this.set(pendingCount ? pendingCount() : 0);
    } catch {
      this.set(0); // spool closed
    }
  },
});

/** Report owed notifications from `count` on every scrape. */
export function registerNotificationMetrics(count: () => number): void {
  pendingCount = count;
}
