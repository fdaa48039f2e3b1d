/** Metrics of the recipient limiter (shared by the local and the Redis implementation). */
import { Counter, Gauge, Histogram } from 'prom-client';
import { METRIC_PREFIX, registry } from '../../observability/metrics';

export const limiterWaitSeconds = new Histogram({
  name: `${METRIC_PREFIX}limiter_wait_seconds`,
  help: 'Time a delivery waited for rate-limit tokens (recipients) before sending to SES',
  buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
  registers: [registry],
});

export const limiterEffectiveRate = new Gauge({
  name: `${METRIC_PREFIX}limiter_effective_rate`,
  help: 'Recipients per second the limiter currently grants (below the configured rate after SES throttling)',
  registers: [registry],
});

export const limiterThrottledTotal = new Counter({
  name: `${METRIC_PREFIX}limiter_throttled_total`,
  help: 'SES 454 Throttling failures reported to the limiter since start',
  registers: [registry],
});

export const limiterRate = new Gauge({
  name: `${METRIC_PREFIX}limiter_rate`,
  help: 'Recipients per second the limiter is set to: SES_RATE_LIMIT, or with auto SendQuota.MaxSendRate × SES_RATE_FRACTION (SES_RATE_FALLBACK until SES answers)',
  registers: [registry],
});

export const limiterAvailable = new Gauge({
  name: `${METRIC_PREFIX}limiter_available`,
  help: '1 when the limiter can grant tokens (for the Redis limiter: Redis reachable), else 0',
  registers: [registry],
});
