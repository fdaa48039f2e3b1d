/**
 * Autoresponder metrics, on the shared registry with the `ses_relay_` prefix. `requests_total{result}` takes
 * its label from the closed set REQUEST_RESULTS (request-rules.ts); startAutoresponder creates every label
 * value at start so that a dashboard sees zeros, not missing series. Registered only when the autoresponder
 * is on (this module is loaded with it).
 */
import { Counter, Gauge } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';

export const autoresponderMetrics = {
  requests: new Counter({
    name: `${METRIC_PREFIX}autoresponder_requests_total`,
    help:
      'Requests received by the autoresponder (DATA completed), by result: answered, a no-reply reason, ' +
      'or temporary-failure (the request got a 4xx and will be retried by its sender).',
    labelNames: ['result'] as const,
    registers: [registry],
  }),
  replies: new Counter({
    name: `${METRIC_PREFIX}autoresponder_replies_total`,
    help: 'Replies stored in the spool for answered requests (one per configured entry of the address).',
    registers: [registry],
  }),
  rejections: new Counter({
    name: `${METRIC_PREFIX}autoresponder_smtp_rejections_total`,
    help: 'SMTP error replies of the autoresponder listener, by catalogue key (src/replies.ts).',
    labelNames: ['reply'] as const,
    registers: [registry],
  }),
  configReloads: new Counter({
    name: `${METRIC_PREFIX}autoresponder_config_reloads_total`,
    help: 'Configurations (and attachment sets) loaded and put in force, the first one at start included.',
    registers: [registry],
  }),
  configReloadFailures: new Counter({
    name: `${METRIC_PREFIX}autoresponder_config_reload_failures_total`,
    help: 'New configurations refused (invalid, unreadable, an attachment that cannot be fetched); the last good one stays.',
    registers: [registry],
  }),
  configEntries: new Gauge({
    name: `${METRIC_PREFIX}autoresponder_config_entries`,
    help: 'Entries (replies) in the configuration in force.',
    registers: [registry],
  }),
};
