/**
 * Metrics of the API-key table (USE_APIKEY), on the shared registry with the `ses_relay_` prefix. Failed
 * AUTH attempts are counted by the SMTP listener (ingress-metrics.ts, `auth_failures_total`).
 */
import { Counter } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';

export const apiKeyLookups = new Counter({
  name: `${METRIC_PREFIX}apikey_lookups_total`,
  help: 'GetItem requests sent to the API-key table, by result (accepted, refused, invalid: a malformed policy attribute, error).',
  labelNames: ['result'] as const,
  registers: [registry],
});

export const apiKeyCacheHits = new Counter({
  name: `${METRIC_PREFIX}apikey_cache_hits_total`,
  help: 'AUTH attempts answered from the API-key cache (positive or negative).',
  registers: [registry],
});
