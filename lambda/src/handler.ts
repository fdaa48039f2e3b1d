/**
 * Lambda entry point: SNS events carrying SES notifications -> suppression table.
 *
 * Permanent bounces and complaints suppress every affected recipient (UpdateItem per address, idempotent per
 * feedback id). Transient/undetermined bounces, deliveries and other events are only logged. A malformed
 * record is logged and skipped without failing the others. A DynamoDB failure is rethrown after every record
 * has been tried, so Lambda retries the event (already written addresses are skipped on the retry).
 * When EMAIL_FROM and EMAIL_TO are set, a failure (or a skipped malformed record) also sends an alert email.
 *
 * Environment: DYNAMODB_TABLE (required), EMAIL_FROM, EMAIL_TO (`;`-separated), SES_REGION (default: the
 * function's region), LOG_LEVEL (info, warn, error, silent). Region, credentials and AWS_ENDPOINT_URL_DYNAMODB follow the SDK's standard chain.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SESClient } from '@aws-sdk/client-ses';
import type { SNSEvent, SNSEventRecord } from 'aws-lambda';
import { parseRecipients, sendAlert, type AlertConfig } from './alert';
import { consoleLogger, loggerForLevel, type LambdaLogger } from './log';
import { classifyNotification, MalformedNotificationError } from './ses-notification';
import { writeSuppression } from './suppression-writer';

export interface HandlerDeps {
  client: DynamoDBClient;
  table: string;
  alert?: AlertConfig;
  log?: LambdaLogger;
  /** Clock for notifications without a timestamp (tests). */
  now?: () => Date;
}

export interface HandlerSummary {
  records: number;
  suppressed: number;
  duplicates: number;
  ignored: number;
  malformed: number;
}

export class SuppressionWriteError extends Error {
  constructor(
    message: string,
    readonly failures: Array<{ snsMessageId: string; email: string; error: string }>,
  ) {
    super(message);
    this.name = 'SuppressionWriteError';
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** What one event's records came to: the counts, the records skipped as malformed, the failed writes. */
interface EventOutcome {
  summary: HandlerSummary;
  malformed: string[];
  failures: SuppressionWriteError['failures'];
}

type Log = NonNullable<HandlerDeps['log']>;

/** One SNS record: classify the SES notification, write its suppressions, count what happened. */
async function processRecord(
  record: SNSEventRecord,
  deps: HandlerDeps,
  log: Log,
  now: () => Date,
  out: EventOutcome,
): Promise<void> {
  const { summary } = out;
  summary.records++;
  const snsMessageId = String(record?.Sns?.MessageId ?? 'unknown');
  let classification;
  try {
    classification = classifyNotification(String(record?.Sns?.Message ?? ''), snsMessageId, now());
  } catch (err) {
    if (!(err instanceof MalformedNotificationError)) throw err;
    summary.malformed++;
    out.malformed.push(`${snsMessageId}: ${err.message}`);
    log.warn('malformed SES notification skipped', { snsMessageId, problem: err.message });
    return;
  }

  if (classification.action === 'ignore') {
    summary.ignored++;
    log.info('SES notification does not suppress', {
      snsMessageId,
      type: classification.type,
      detail: classification.detail,
      recipients: classification.recipients.length,
    });
    return;
  }

  const results = await Promise.allSettled(
    classification.entries.map((entry) => writeSuppression(deps.client, deps.table, entry)),
  );
  results.forEach((result, i) => {
    const entry = classification.entries[i];
    if (result.status === 'fulfilled') {
      if (result.value === 'written') summary.suppressed++;
      else summary.duplicates++;
      log.info(result.value === 'written' ? 'address suppressed' : 'already recorded (redelivery)', {
        snsMessageId,
        email: entry.email,
        reason: entry.reason,
        bounceType: entry.bounceType,
        bounceSubType: entry.bounceSubType,
        complaintFeedbackType: entry.complaintFeedbackType,
        feedbackId: entry.feedbackId,
      });
    } else {
      out.failures.push({ snsMessageId, email: entry.email, error: describe(result.reason) });
    }
  });
}

/** Failed writes or malformed records: an error log and (best effort) the alert mail. */
async function reportProblems(deps: HandlerDeps, log: Log, out: EventOutcome): Promise<void> {
  const { summary, failures, malformed } = out;
  if (failures.length === 0 && malformed.length === 0) return;
  const lines = [
    `Table: ${deps.table}`,
    `Records: ${summary.records}, suppressed: ${summary.suppressed}, duplicates: ${summary.duplicates}, ignored: ${summary.ignored}, malformed: ${summary.malformed}`,
    ...failures.map((f) => `Write failed (SNS ${f.snsMessageId}) for ${f.email}: ${f.error}`),
    ...malformed.map((m) => `Malformed record skipped: ${m}`),
    failures.length > 0 ? 'The event will be retried by Lambda.' : '',
  ];
  if (failures.length > 0) log.error('suppression writes failed', { failures, summary });
  if (!deps.alert) return;
  try {
    await sendAlert(
      deps.alert,
      failures.length > 0
        ? `ses-email-service: ${failures.length} suppression write(s) failed`
        : `ses-email-service: ${malformed.length} malformed SES notification(s) skipped`,
      lines.filter(Boolean).join('\n'),
    );
  } catch (err) {
    // The alert is best effort: it must never hide the original failure (or invent one).
    log.error('alert email could not be sent', { error: describe(err) });
  }
}

export function createHandler(deps: HandlerDeps): (event: SNSEvent) => Promise<HandlerSummary> {
  const log = deps.log ?? consoleLogger;
  const now = deps.now ?? (() => new Date());

  return async (event: SNSEvent) => {
    const out: EventOutcome = {
      summary: { records: 0, suppressed: 0, duplicates: 0, ignored: 0, malformed: 0 },
      malformed: [],
      failures: [],
    };
    const records: SNSEventRecord[] = Array.isArray(event?.Records) ? event.Records : [];
    for (const record of records) await processRecord(record, deps, log, now, out);
    await reportProblems(deps, log, out);
    const { failures, summary } = out;
    if (failures.length > 0) {
      throw new SuppressionWriteError(
        `${failures.length} suppression write(s) failed; first: ${failures[0].error}`,
        failures,
      );
    }
    log.info('SNS event processed', { ...summary });
    return summary;
  };
}

/** Dependencies from the Lambda environment (created once per container). */
export function depsFromEnv(env: NodeJS.ProcessEnv = process.env): HandlerDeps {
  const table = env.DYNAMODB_TABLE;
  if (!table) throw new Error('DYNAMODB_TABLE is not set');
  const to = parseRecipients(env.EMAIL_TO);
  const alert =
    env.EMAIL_FROM && to.length > 0
      ? {
          ses: new SESClient(env.SES_REGION ? { region: env.SES_REGION } : {}),
          from: env.EMAIL_FROM,
          to,
        }
      : undefined;
  return {
    client: new DynamoDBClient({}),
    table,
    log: loggerForLevel(env.LOG_LEVEL),
    ...(alert ? { alert } : {}),
  };
}

let cached: ((event: SNSEvent) => Promise<HandlerSummary>) | undefined;

/** The Lambda handler (`index.handler` in the bundle). */
export async function handler(event: SNSEvent): Promise<HandlerSummary> {
  cached ??= createHandler(depsFromEnv());
  return cached(event);
}
