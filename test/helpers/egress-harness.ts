/**
 * The delivery stage wired for tests: a real SqliteSpool in a temp dir, the fake SES over TCP with
 * STARTTLS, the real SesSmtpTransport (nodemailer pool), in-process admission and a Dispatcher.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { Dispatcher } from '../../src/egress/dispatcher';
import type { RateAdmission } from '../../src/egress/rate/admission';
import { localAdmission } from './admission';
import { SesSmtpTransport } from '../../src/egress/transport/ses-smtp-transport';
import { silentLogger, type Logger } from '../../src/observability/logger';
import { allowAll, type RecipientPolicy } from '../../src/policy/policy';
import { SqliteSpool } from '../../src/spool/sqlite-spool';
import type { Tenant } from '../../src/types';
import { FAKE_SES_CA, startFakeSes, type FakeSes, type FakeSesOptions } from './fake-ses';

export interface EgressHarnessOptions {
  ses?: FakeSesOptions;
  /** Password the transport uses (default: the fake's own). */
  transportPassword?: string;
  rate?: number;
  burst?: number;
  throttleFactor?: number;
  throttleRecoveryMs?: number;
  throttlePauseMs?: number;
  quotaProbeIntervalMs?: number;
  /** Where admission keeps its record of delivery pauses (default: in memory). */
  stateDir?: string;
  poolSize?: number;
  maxMessagesPerConnection?: number;
  maxConnectionAgeMs?: number;
  retryScheduleMs?: number[];
  maxQueueAgeMs?: number;
  maxRecipientsPerTransaction?: number;
  throttleRetryMs?: [number, number];
  unavailableRetryMs?: number;
  policy?: RecipientPolicy;
  failOpen?: boolean;
  logger?: Logger;
  /** Do not start the dispatcher (store first, then start). */
  paused?: boolean;
  /** Dispatcher backoff while the spool cannot be written. */
  spoolRetryMs?: [number, number];
}

export interface EgressHarness {
  ses: FakeSes;
  spool: SqliteSpool;
  transport: SesSmtpTransport;
  admission: RateAdmission;
  dispatcher: Dispatcher;
  /** Store a message (durable) and wake the dispatcher. */
  store(
    recipients: string[],
    options?: { body?: string; mailFrom?: string; tenant?: Tenant },
  ): Promise<string>;
  /** Resolve once the spool has no pending message (or reject after timeoutMs). */
  drained(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export function messageBody(marker: string): string {
  return `From: sender@example.com\r\nTo: undisclosed-recipients:;\r\nSubject: ${marker}\r\nX-Marker: ${marker}\r\n\r\nbody of ${marker}\r\n`;
}

export async function waitUntil(cond: () => boolean, timeoutMs: number, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export async function startEgress(o: EgressHarnessOptions = {}): Promise<EgressHarness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'egress-'));
  const logger = o.logger ?? silentLogger;
  const ses = await startFakeSes(o.ses);
  const spool = await SqliteSpool.open({ dir, logger });
  const rate = o.rate ?? 1000;
  const burst = o.burst ?? 50;
  const poolSize = o.poolSize ?? 2;
  const transport = new SesSmtpTransport({
    host: ses.host,
    port: ses.port,
    secure: false,
    username: ses.username,
    password: o.transportPassword ?? ses.password,
    poolSize,
    maxMessagesPerConnection: o.maxMessagesPerConnection ?? 100,
    maxConnectionAgeMs: o.maxConnectionAgeMs ?? 300_000,
    connectionTimeoutMs: 5000,
    tls: { ca: FAKE_SES_CA },
    logger,
  });
  const admission = await localAdmission({
    rate,
    burst,
    throttleFactor: o.throttleFactor ?? 0.8,
    throttleRecoveryMs: o.throttleRecoveryMs ?? 10_000,
    throttlePauseMs: o.throttlePauseMs ?? 200,
    quotaProbeIntervalMs: o.quotaProbeIntervalMs ?? 60_000,
    poolSize,
    stateDir: o.stateDir,
    maxQueueAgeMs: o.maxQueueAgeMs ?? 3600_000,
    logger,
  });
  const dispatcher = new Dispatcher({
    spool,
    transport,
    admission,
    policy: o.policy ?? allowAll,
    config: {
      retryScheduleMs: o.retryScheduleMs ?? [100, 200],
      maxQueueAgeMs: o.maxQueueAgeMs ?? 3600_000,
      poolSize,
      maxRecipientsPerTransaction: o.maxRecipientsPerTransaction ?? 50,
    },
    failOpen: o.failOpen,
    logger,
    throttleRetryMs: o.throttleRetryMs ?? [50, 100],
    unavailableRetryMs: o.unavailableRetryMs ?? 100,
    spoolRetryMs: o.spoolRetryMs,
  });
  if (!o.paused) dispatcher.start();
  let closed = false;

  return {
    ses,
    spool,
    transport,
    admission,
    dispatcher,
    async store(recipients, options = {}) {
      const body = options.body ?? messageBody(`m-${Math.random().toString(36).slice(2)}`);
      const id = await spool.store(
        { mailFrom: options.mailFrom ?? 'sender@example.com', recipients },
        Readable.from([Buffer.from(body)]),
        { clientAddress: '127.0.0.1', ...(options.tenant ? { tenant: options.tenant } : {}) },
      );
      dispatcher.wake();
      return id;
    },
    drained(timeoutMs = 10_000) {
      return waitUntil(() => spool.counts().pending === 0, timeoutMs, 'the spool to drain');
    },
    async close() {
      if (closed) return;
      closed = true;
      await dispatcher.stop(1000);
      await transport.close();
      await admission.stop();
      await spool.close();
      await ses.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
