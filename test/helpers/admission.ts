/**
 * Admission for tests: the in-process or the Redis-shared back end with test-friendly defaults, and a
 * load that keeps it saturated (admit, settle at once or after a simulated SES latency) for a bounded time.
 */
import { performance } from 'node:perf_hooks';
import { RateAdmission, type Admission, type OutcomeCounts } from '../../src/egress/rate/admission';
import { createAdmission, rateParams, type AdmissionSettings } from '../../src/egress/rate/admission-factory';
import { LimiterUnavailableError } from '../../src/egress/rate/admission-errors';
import type { AdmissionBackend } from '../../src/egress/rate/backend';
import { LocalBackend } from '../../src/egress/rate/local-backend';
import { PauseLedger } from '../../src/egress/rate/pause-ledger';
import { silentLogger } from '../../src/observability/logger';

export type TestAdmissionSettings = Partial<AdmissionSettings>;

export function settings(o: TestAdmissionSettings = {}): AdmissionSettings {
  return {
    rate: 100,
    burst: 10,
    throttleFactor: 0.8,
    throttleRecoveryMs: 60_000,
    throttlePauseMs: 1000,
    quotaProbeIntervalMs: 60_000,
    poolSize: 8,
    limiterId: `test-${process.pid}-${Math.random().toString(36).slice(2)}`,
    heartbeatMs: 50,
    logger: silentLogger,
    ...o,
  };
}

/** In-process admission (createAdmission without REDIS_URL). */
export function localAdmission(o: TestAdmissionSettings = {}): Promise<RateAdmission> {
  return createAdmission(settings({ ...o, redisUrl: undefined }));
}

/** Admission over the given back end (for a back end wrapped to misbehave). */
export function admissionOver(
  wrap: (backend: AdmissionBackend) => AdmissionBackend,
  o: TestAdmissionSettings = {},
): RateAdmission {
  const s = settings(o);
  const ledger = PauseLedger.forSpool(s.stateDir, s.logger);
  return new RateAdmission({
    backend: wrap(new LocalBackend(rateParams(s), ledger)),
    ledger,
    slots: s.poolSize,
    probeIntervalMs: s.quotaProbeIntervalMs,
    account: s.account,
    logger: s.logger,
  });
}

export interface Grant {
  at: number;
  n: number;
}

export interface Load {
  grants: Grant[];
  /** Admissions refused (LimiterUnavailableError) while running. */
  refusals(): number;
  stop(): Promise<void>;
}

/**
 * Keep `concurrency` admit loops per admission busy until stop(); each admitted transaction is settled
 * `outcome` after `latencyMs` (default at once, delivered). Refusals are counted and retried after 20 ms.
 */
export function saturate(
  admissions: Admission[],
  weights: number[],
  options: { concurrency?: number; latencyMs?: () => number; outcome?: () => OutcomeCounts } = {},
): Load {
  const grants: Grant[] = [];
  let refusals = 0;
  let running = true;
  const ac = new AbortController();
  const loops = admissions.flatMap((admission) =>
    Array.from({ length: options.concurrency ?? 4 }, async (_, j) => {
      let k = j;
      for (let i = 0; running && i < 100_000; i++) {
        const n = weights[k++ % weights.length];
        try {
          const ticket = await admission.admit(n, ac.signal);
          if (running) grants.push({ at: performance.now(), n });
          const latency = options.latencyMs?.() ?? 0;
          if (latency > 0) await new Promise((r) => setTimeout(r, latency));
          await ticket.settle(options.outcome?.() ?? { delivered: n });
        } catch (err) {
          if (!(err instanceof LimiterUnavailableError)) throw err;
          if ((err as Error).message === 'limiter stopped') return;
          if (running) refusals++;
          if (running) await new Promise((r) => setTimeout(r, 20));
        }
      }
    }),
  );
  return {
    grants,
    refusals: () => refusals,
    async stop() {
      running = false;
      ac.abort();
      await Promise.all(loops);
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const total = (grants: Grant[]) => grants.reduce((n, g) => n + g.n, 0);
