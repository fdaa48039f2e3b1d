/**
 * Builds admission from the relay's settings: the in-process back end, or the Redis-shared one when
 * REDIS_URL is set, with the pause ledger in the spool directory and GetAccount for the pause checks
 * when the relay can call it.
 */
import type { Logger } from '../../observability/logger';
import { RateAdmission } from './admission';
import type { AdmissionBackend } from './backend';
import { LocalBackend } from './local-backend';
import { PauseLedger } from './pause-ledger';
import { DEFAULT_REACTION, type RateParams } from './rate-state';
import { RedisBackend } from './redis-backend';
import type { SesAccount } from './ses-account';

export interface AdmissionSettings {
  /** Recipients per second (SES_RATE_LIMIT, or the rate read from SES). */
  rate: number;
  /** Bucket depth in recipients (SES_BURST). */
  burst: number;
  /** SES_THROTTLE_FACTOR, SES_THROTTLE_RECOVERY, SES_THROTTLE_PAUSE. */
  throttleFactor: number;
  throttleRecoveryMs: number;
  throttlePauseMs: number;
  /** SES_QUOTA_PROBE_INTERVAL. */
  quotaProbeIntervalMs: number;
  /** SES_POOL_SIZE: connection slots. */
  poolSize: number;
  redisUrl?: string;
  limiterId: string;
  /** LIMITER_HEARTBEAT: longest sleep of a waiting transaction between asks. */
  heartbeatMs: number;
  /** Where the record of delivery pauses is kept (the spool directory); in memory when undefined. */
  stateDir?: string;
  maxQueueAgeMs?: number;
  account?: SesAccount;
  logger: Logger;
  /** Tests: Redis timings. */
  redis?: { commandTimeoutMs?: number; connectTimeoutMs?: number; probeMs?: number; inFlightTtlMs?: number };
}

export function rateParams(s: AdmissionSettings): RateParams {
  if (!(s.rate > 0)) throw new RangeError('rate must be > 0');
  if (!(s.burst >= 1)) throw new RangeError('burst must be >= 1');
  if (!(s.throttleFactor > 0 && s.throttleFactor < 1)) throw new RangeError('factor must be in (0, 1)');
  return {
    rate: s.rate,
    burst: Math.floor(s.burst),
    factor: s.throttleFactor,
    recoveryMs: Math.max(0, s.throttleRecoveryMs),
    holdMs: Math.max(0, s.throttlePauseMs),
    ...DEFAULT_REACTION,
  };
}

export async function createAdmission(s: AdmissionSettings): Promise<RateAdmission> {
  const params = rateParams(s);
  const ledger = PauseLedger.forSpool(s.stateDir, s.logger);
  const backend: AdmissionBackend = s.redisUrl
    ? await RedisBackend.create({
        redisUrl: s.redisUrl,
        limiterId: s.limiterId,
        params,
        ledger,
        logger: s.logger,
        heartbeatMs: s.heartbeatMs,
        ...s.redis,
      })
    : new LocalBackend(params, ledger);
  return new RateAdmission({
    backend,
    ledger,
    slots: s.poolSize,
    probeIntervalMs: s.quotaProbeIntervalMs,
    account: s.account,
    maxQueueAgeMs: s.maxQueueAgeMs,
    logger: s.logger,
    maxPollMs: s.redisUrl ? s.heartbeatMs : undefined,
  });
}
