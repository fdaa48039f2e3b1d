/**
 * What SES says about the account: `GetAccount` (SES API v2) read at start and every SES_QUOTA_REFRESH,
 * its SendQuota (MaxSendRate, Max24HourSend, SentLast24Hours) kept as `latest`, published as gauges and
 * handed to listeners. SesAccount only reads; AutoRate (below) turns MaxSendRate into admission's rate
 * for SES_RATE_LIMIT=auto, and the delivery pause (delivery-pause.ts) reads SendQuota to end a quota pause.
 *
 * GetAccount is one of the SES actions limited to one call per second per account (SES developer guide,
 * "Service quotas": every API action except the Send* actions); a reading every few minutes per replica is
 * far below that. A failed reading is retried after min(SES_QUOTA_REFRESH, 30 s).
 *
 * Credentials: the SDK's default chain (the same as the API transport; with SES_TRANSPORT=smtp the relay
 * still needs an IAM identity allowed ses:GetAccount for auto). Region: AWS_REGION. Endpoint:
 * AWS_ENDPOINT_URL_SESV2, read by the SDK.
 */
import { GetAccountCommand, SESv2Client, type SESv2ClientConfig } from '@aws-sdk/client-sesv2';
import { Counter, Gauge } from 'prom-client';
import type { AutoRateConfig } from '../../config';
import type { Logger } from '../../observability/logger';
import { METRIC_PREFIX, registry } from '../../observability/metrics';

/** What AutoRate drives: admission (its rate and burst). */
export interface RateTarget {
  setRate(rate: number): void;
  status(): { rate: number; burst: number };
}

export const sesMaxSendRate = new Gauge({
  name: `${METRIC_PREFIX}ses_max_send_rate`,
  help: "SES's maximum send rate (SendQuota.MaxSendRate, recipients per second) at the last GetAccount; 0 until read",
  registers: [registry],
});
export const sesMax24HourSend = new Gauge({
  name: `${METRIC_PREFIX}ses_max_24_hour_send`,
  help: 'SES daily quota (SendQuota.Max24HourSend, -1 = unlimited) at the last GetAccount; 0 until read',
  registers: [registry],
});
export const sesSentLast24Hours = new Gauge({
  name: `${METRIC_PREFIX}ses_sent_last_24_hours`,
  help: 'Recipients SES counted in the last 24 hours (SendQuota.SentLast24Hours) at the last GetAccount',
  registers: [registry],
});
export const sesAccountReads = new Counter({
  name: `${METRIC_PREFIX}ses_account_reads_total`,
  help: 'GetAccount calls by result: ok, denied (credentials or IAM policy), error (network, SES, bad answer)',
  labelNames: ['result'],
  registers: [registry],
});

export interface SendQuotaReading {
  /** Recipients per second SES accepts from the account. */
  maxSendRate: number;
  /** Recipients per 24 hours; -1 means unlimited. */
  max24HourSend: number;
  sentLast24Hours: number;
  sendingEnabled?: boolean;
  enforcementStatus?: string;
  /** ms since epoch. */
  readAt: number;
}

export interface SesAccountOptions {
  region: string;
  refreshMs: number;
  logger: Logger;
  /** Only for tests (the relay leaves them to AWS_ENDPOINT_URL_SESV2 and the default chain). */
  endpoint?: string;
  credentials?: SESv2ClientConfig['credentials'];
  /** Bound on one GetAccount call (default 5 s). */
  timeoutMs?: number;
}

const DENIED = new Set([
  'AccessDeniedException',
  'AccessDenied',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'ExpiredTokenException',
  'CredentialsProviderError',
]);

export class SesAccount {
  /** The last successful reading. */
  latest?: SendQuotaReading;
  private readonly client: SESv2Client;
  private readonly options: SesAccountOptions;
  private readonly listeners = new Set<(q: SendQuotaReading) => void>();
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private failing = false;

  constructor(options: SesAccountOptions) {
    this.options = options;
    const timeout = options.timeoutMs ?? 5000;
    this.client = new SESv2Client({
      region: options.region,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      maxAttempts: 1,
      requestHandler: {
        connectionTimeout: timeout,
        requestTimeout: timeout,
        throwOnRequestTimeout: true,
      },
    });
  }

  /** Called with every successful reading (also the ones start() and refresh() make). */
  onReading(listener: (q: SendQuotaReading) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** One GetAccount; throws the SDK's error or one for an answer without a usable SendQuota. */
  async read(): Promise<SendQuotaReading> {
    const out = await this.client.send(new GetAccountCommand({}));
    const q = out.SendQuota;
    const rate = q?.MaxSendRate;
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0) {
      throw Object.assign(
        new Error(`GetAccount answered no usable SendQuota.MaxSendRate (${String(rate)})`),
        {
          name: 'InvalidSendQuota',
        },
      );
    }
    return {
      maxSendRate: rate,
      max24HourSend: q?.Max24HourSend ?? -1,
      sentLast24Hours: q?.SentLast24Hours ?? 0,
      sendingEnabled: out.SendingEnabled,
      enforcementStatus: out.EnforcementStatus,
      readAt: Date.now(),
    };
  }

  /** Read now: metrics, `latest`, listeners; logs (once per streak) and returns undefined on failure. */
  async refresh(): Promise<SendQuotaReading | undefined> {
    const { logger } = this.options;
    try {
      const reading = await this.read();
      sesAccountReads.inc({ result: 'ok' });
      this.latest = reading;
      sesMaxSendRate.set(reading.maxSendRate);
      sesMax24HourSend.set(reading.max24HourSend);
      sesSentLast24Hours.set(reading.sentLast24Hours);
      if (this.failing) logger.info({ event: 'ses:account-read' }, 'GetAccount answers again');
      this.failing = false;
      if (reading.sendingEnabled === false) {
        logger.warn(
          { event: 'ses:sending-disabled', enforcementStatus: reading.enforcementStatus },
          'SES reports sending disabled for this account (GetAccount SendingEnabled=false)',
        );
      }
      for (const l of [...this.listeners]) l(reading);
      return reading;
    } catch (err) {
      const e = err as Error & { $metadata?: { httpStatusCode?: number } };
      const denied = DENIED.has(e.name) || e.$metadata?.httpStatusCode === 403;
      sesAccountReads.inc({ result: denied ? 'denied' : 'error' });
      if (!this.failing) {
        logger.warn(
          { event: 'ses:account-unreadable', denied, err: `${e.name}: ${e.message}` },
          denied
            ? "SES refused GetAccount: allow ses:GetAccount to the relay's IAM identity"
            : 'GetAccount failed',
        );
      }
      this.failing = true;
      return undefined;
    }
  }

  /** Refresh every refreshMs (after a failure: within 30 s). The first reading is the caller's. */
  start(): void {
    if (this.timer || this.stopped) return;
    const schedule = () => {
      if (this.stopped) return;
      const delay = this.failing ? Math.min(this.options.refreshMs, 30_000) : this.options.refreshMs;
      this.timer = setTimeout(() => void this.refresh().finally(schedule), delay);
      this.timer.unref();
    };
    schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.client.destroy();
  }
}

/**
 * SES_RATE_LIMIT=auto: the limiter runs at MaxSendRate × SES_RATE_FRACTION. Until SES has answered (and
 * only then), at SES_RATE_FALLBACK, with a warning; a later failed reading keeps the last rate SES gave.
 */
export class AutoRate {
  private limiter?: RateTarget;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly account: SesAccount,
    private readonly settings: AutoRateConfig,
    private readonly logger: Logger,
  ) {
    this.unsubscribe = account.onReading((q) => this.apply(q));
  }

  /** The rate SES grants now × fraction, or the fallback (loudly) when it cannot be read. */
  async initialRate(): Promise<number> {
    const reading = this.account.latest ?? (await this.account.refresh());
    if (reading) {
      const rate = this.rateOf(reading);
      this.logger.info(
        {
          event: 'limiter:auto-rate',
          maxSendRate: reading.maxSendRate,
          fraction: this.settings.fraction,
          rate,
        },
        `SES_RATE_LIMIT=auto: ${rate} recipients/s (MaxSendRate ${reading.maxSendRate} × ${this.settings.fraction})`,
      );
      return rate;
    }
    this.logger.warn(
      { event: 'limiter:auto-rate-fallback', rate: this.settings.fallbackRate },
      `SES_RATE_LIMIT=auto but SES's rate cannot be read: running at SES_RATE_FALLBACK=${this.settings.fallbackRate} recipients/s until GetAccount answers`,
    );
    return this.settings.fallbackRate;
  }

  /** From now on, new readings change this limiter's rate. */
  attach(limiter: RateTarget): void {
    this.limiter = limiter;
    const q = this.account.latest;
    if (q) this.apply(q);
  }

  private rateOf(q: SendQuotaReading): number {
    return q.maxSendRate * this.settings.fraction;
  }

  private apply(q: SendQuotaReading): void {
    const limiter = this.limiter;
    if (!limiter) return;
    const rate = this.rateOf(q);
    const { rate: before, burst } = limiter.status();
    if (Math.abs(rate - before) < 1e-9) return;
    limiter.setRate(rate);
    this.logger.info(
      {
        event: 'limiter:auto-rate',
        maxSendRate: q.maxSendRate,
        fraction: this.settings.fraction,
        rate,
        before,
      },
      `SES's maximum send rate changed: ${before} → ${rate} recipients/s`,
    );
    if (burst > Math.max(1, Math.ceil(rate))) {
      this.logger.warn(
        { event: 'limiter:burst-above-rate', burst, rate },
        `the burst (${burst}) is more than one second of the new rate; it follows the rate at the next restart (or set SES_BURST)`,
      );
    }
  }

  stop(): void {
    this.unsubscribe();
  }
}
