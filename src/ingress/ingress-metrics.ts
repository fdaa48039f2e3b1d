/**
 * Ingress metrics (SMTP listener), on the shared registry with the `ses_relay_` prefix.
 */
import { Counter, Gauge } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';
import { smtpError, type ReplyKey, type SmtpReplyError } from '../replies';

export const ingressMetrics = {
  messagesReceived: new Counter({
    name: `${METRIC_PREFIX}messages_received_total`,
    help: 'Messages accepted by the SMTP listener (250 sent after the spool stored them durably).',
    registers: [registry],
  }),
  recipientsReceived: new Counter({
    name: `${METRIC_PREFIX}recipients_received_total`,
    help: 'Envelope recipients of accepted messages (what the SES rate limit is spent on).',
    registers: [registry],
  }),
  receivedBytes: new Counter({
    name: `${METRIC_PREFIX}received_bytes_total`,
    help: 'Body bytes of accepted messages as stored (after line-ending normalisation).',
    registers: [registry],
  }),
  rejections: new Counter({
    name: `${METRIC_PREFIX}smtp_rejections_total`,
    help:
      'SMTP error replies sent to clients, by reply: a key of the reply catalogue (src/replies.ts), ' +
      'or smtp_<code> for protocol errors smtp-server answers by itself (syntax, sequence, SIZE).',
    labelNames: ['reply'] as const,
    registers: [registry],
  }),
  sessions: new Gauge({
    name: `${METRIC_PREFIX}smtp_sessions`,
    help: 'SMTP sessions currently open on the listener.',
    registers: [registry],
  }),
  authFailures: new Counter({
    name: `${METRIC_PREFIX}auth_failures_total`,
    help: 'Failed SMTP AUTH attempts (wrong user name or password, or refused while locked out).',
    registers: [registry],
  }),
  tenantRecipientsAccepted: new Counter({
    name: `${METRIC_PREFIX}tenant_recipients_accepted_total`,
    help:
      'Recipients of acknowledged messages by tenant (API key name, SMTP user, trusted-networks, autoresponder; ' +
      'the first 100 names, then other).',
    labelNames: ['tenant'] as const,
    registers: [registry],
  }),
  tenantQuotaRefusals: new Counter({
    name: `${METRIC_PREFIX}tenant_quota_refusals_total`,
    help: 'MAIL FROM and RCPT TO refused with 451 4.7.1 because the tenant spent its daily_quota, by tenant.',
    labelNames: ['tenant'] as const,
    registers: [registry],
  }),
};

/** A catalogue reply refusing something (what smtp-server sends for a handler error), counted by its key. */
export function rejection(key: ReplyKey, detail?: string): SmtpReplyError {
  ingressMetrics.rejections.inc({ reply: key });
  return smtpError(key, detail);
}
