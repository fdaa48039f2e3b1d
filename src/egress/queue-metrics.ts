/**
 * Queue depth gauges, computed from `spool.counts()` when Prometheus scrapes (no timers).
 * `registerQueueMetrics(spool)` points them at the spool in use and returns a function that detaches it.
 * `ses_relay_queue_messages{state}` uses the states of src/types.ts (queued, sending, deferred, held);
 * summed over `state` it is every message still to be delivered.
 */
import { Gauge } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';
import type { Spool, SpoolCounts } from '../spool/spool';
import { WAITING_MESSAGE_STATES } from '../types';

let current: Spool | undefined;

function counts(): SpoolCounts | undefined {
  try {
    return current?.counts();
  } catch {
    return undefined; // spool closed: report nothing rather than fail the scrape
  }
}

const queueMessages = new Gauge({
  name: `${METRIC_PREFIX}queue_messages`,
  help: 'Messages still to be delivered, by state (queued, sending, deferred, held); sum for the backlog',
  labelNames: ['state'] as const,
  registers: [registry],
  collect() {
    const c = counts();
    for (const state of WAITING_MESSAGE_STATES) this.set({ state }, c ? c[state] : 0);
  },
});

const queueRecipients = new Gauge({
  name: `${METRIC_PREFIX}queue_recipients`,
  help: 'Recipients still to be delivered across all pending messages',
  registers: [registry],
  collect() {
    const c = counts();
    this.set(c ? c.pendingRecipients : 0);
  },
});

const queueOldestAge = new Gauge({
  name: `${METRIC_PREFIX}queue_oldest_age_seconds`,
  help: 'Age of the oldest pending message (0 when the queue is empty)',
  registers: [registry],
  collect() {
    const c = counts();
    this.set(c?.oldestReceivedAt ? Math.max(0, (Date.now() - c.oldestReceivedAt) / 1000) : 0);
  },
});

/** Report queue depth from `spool` on every scrape. Returns a function that stops reporting it. */
export function registerQueueMetrics(spool: Spool): () => void {
  current = spool;
  return () => {
    if (current === spool) current = undefined;
  };
}

export const queueGauges = { queueMessages, queueRecipients, queueOldestAge };
