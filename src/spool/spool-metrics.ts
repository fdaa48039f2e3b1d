/**
 * Spool metrics: how the group commit behaves. Queue depth gauges are exported elsewhere from
 * `Spool.counts()`; these describe the write path only.
 */
import { Counter, Gauge, Histogram } from 'prom-client';
import { METRIC_PREFIX, registry } from '../observability/metrics';

export const spoolCommitBatchSize = new Histogram({
  name: `${METRIC_PREFIX}spool_commit_batch_size`,
  help: 'Operations (stored messages and settled attempts) written by one spool transaction (group commit).',
  buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
  registers: [registry],
});

export const spoolCommitSeconds = new Histogram({
  name: `${METRIC_PREFIX}spool_commit_seconds`,
  help: 'Time to make one spool batch durable: body directory fsync plus the SQLite transaction and its WAL fsync.',
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
  registers: [registry],
});

export const spoolWriteErrors = new Counter({
  name: `${METRIC_PREFIX}spool_write_errors_total`,
  help: 'Spool writes that failed (body stream error, file system error or SQLite error), by stage.',
  labelNames: ['stage'] as const,
  registers: [registry],
});

export const spoolWritable = new Gauge({
  name: `${METRIC_PREFIX}spool_writable`,
  help: 'Whether the last spool write reached the disk (1) or failed (0: disk full, I/O error, read-only); delivery pauses at 0.',
  registers: [registry],
});

export const spoolSettleRetries = new Counter({
  name: `${METRIC_PREFIX}spool_settle_retries_total`,
  help: 'Delivery outcomes whose write to the spool failed and was retried (the message stays out of circulation meanwhile; nothing is sent again).',
  registers: [registry],
});
