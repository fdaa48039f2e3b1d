/**
 * Metrics of admission (the rate, throttling and the delivery pause). The names keep the `limiter_`
 * prefix of the earlier recipient limiter, so dashboards keep working. Gauges that describe the current
 * state are computed when Prometheus scrapes, from the admission registered with registerAdmissionMetrics.
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import { METRIC_PREFIX, registry } from '../../observability/metrics';
import { PAUSE_REASONS, type PauseReason } from './backend';

/** What the scrape-time gauges read. */
export interface AdmissionGauges {
  effectiveRate(): number;
  inFlight(): number;
  available(): boolean;
  pausedReason(): PauseReason | undefined;
}

let current: AdmissionGauges | undefined;

/** Report these gauges from `source` on every scrape; returns a function that stops reporting it. */
export function registerAdmissionMetrics(source: AdmissionGauges): () => void {
  current = source;
  return () => {
    if (current === source) current = undefined;
  };
}

export const limiterWaitSeconds = new Histogram({
  name: `${METRIC_PREFIX}limiter_wait_seconds`,
  help: 'Time a transaction waited for rate-limit tokens (recipients) before going to SES',
  buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
  registers: [registry],
});

export const limiterEffectiveRate = new Gauge({
  name: `${METRIC_PREFIX}limiter_effective_rate`,
  help: 'Recipients per second admission grants now (below the configured rate while SES throttling is being worked off)',
  registers: [registry],
  collect() {
    if (current) this.set(current.effectiveRate());
  },
});

export const limiterThrottledTotal = new Counter({
  name: `${METRIC_PREFIX}limiter_throttled_total`,
  help: 'SES 454 Throttling failures (API: TooManyRequestsException) seen by this replica',
  registers: [registry],
});

export const limiterThrottleReactions = new Counter({
  name: `${METRIC_PREFIX}limiter_throttle_reactions_total`,
  help: 'Reactions to SES throttling decided here: pause (isolated 454: bucket drained, brief hold, full rate) or decrease (repeated 454s: rate × SES_THROTTLE_FACTOR, then additive increase)',
  labelNames: ['reaction'] as const,
  registers: [registry],
});

export const limiterRate = new Gauge({
  name: `${METRIC_PREFIX}limiter_rate`,
  help: 'Recipients per second admission is set to: SES_RATE_LIMIT, or with auto SendQuota.MaxSendRate × SES_RATE_FRACTION (SES_RATE_FALLBACK until SES answers)',
  registers: [registry],
});

export const limiterAvailable = new Gauge({
  name: `${METRIC_PREFIX}limiter_available`,
  help: '1 when admission can grant tokens (with REDIS_URL: Redis reachable), else 0',
  registers: [registry],
  collect() {
    if (current) this.set(current.available() ? 1 : 0);
  },
});

export const limiterInFlight = new Gauge({
  name: `${METRIC_PREFIX}limiter_in_flight_recipients`,
  help: 'Recipients in transactions SES has not answered yet, held out of the bucket (with REDIS_URL: every replica)',
  registers: [registry],
  collect() {
    if (current) this.set(current.inFlight());
  },
});

export const quotaPaused = new Gauge({
  name: `${METRIC_PREFIX}quota_paused`,
  help: '1 while all delivery is paused, by reason: daily-quota-exceeded (SES daily sending quota spent) or sending-paused (SES paused or suspended the account)',
  labelNames: ['reason'] as const,
  registers: [registry],
  collect() {
    const reason = current?.pausedReason();
    for (const r of PAUSE_REASONS) this.set({ reason: r }, reason === r ? 1 : 0);
  },
});

export const quotaProbes = new Counter({
  name: `${METRIC_PREFIX}quota_probes_total`,
  help: 'Checks made while delivery was paused, by method: message (one real message let through) or get-account (GetAccount SendQuota read)',
  labelNames: ['method'] as const,
  registers: [registry],
});
