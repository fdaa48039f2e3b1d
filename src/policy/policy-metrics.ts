/**
 * Metrics of the suppression list, on the shared registry (the API-key table's are in src/auth/auth-metrics.ts).
 * Counters count DynamoDB requests and recipients, so `lookups / messages` is the DynamoDB cost per message.
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';

export const suppressionLookups = new Counter({
  name: `${METRIC_PREFIX}suppression_lookups_total`,
  help: 'BatchGetItem requests sent to the suppression table (UnprocessedKeys retries and probes included).',
  registers: [registry],
});

export const suppressionCacheHits = new Counter({
  name: `${METRIC_PREFIX}suppression_cache_hits_total`,
  help: 'Suppression keys (address or @domain) answered from the in-process cache.',
  registers: [registry],
});

export const suppressionCacheMisses = new Counter({
  name: `${METRIC_PREFIX}suppression_cache_misses_total`,
  help: 'Suppression keys (address or @domain) that had to be looked up in DynamoDB.',
  registers: [registry],
});

export const suppressionBlocked = new Counter({
  name: `${METRIC_PREFIX}suppression_blocked_total`,
  help: 'Recipients found on the suppression list (by address or by domain).',
  registers: [registry],
});

export const suppressionErrors = new Counter({
  name: `${METRIC_PREFIX}suppression_errors_total`,
  help: 'Suppression checks that failed because DynamoDB could not be consulted (the message waits).',
  registers: [registry],
});

export const suppressionLookupSeconds = new Histogram({
  name: `${METRIC_PREFIX}suppression_lookup_seconds`,
  help: 'Time to answer one suppression check that needed DynamoDB (all chunks and retries).',
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

export const suppressionAvailable = new Gauge({
  name: `${METRIC_PREFIX}suppression_available`,
  help: '1 while the suppression table answers, 0 after a failed lookup until the next success.',
  registers: [registry],
});
