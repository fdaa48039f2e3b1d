/**
 * The delivery pause end to end, with the built relay (`node dist/main.js`):
 * - SMTP, one relay: a daily-quota refusal pauses all delivery (`ses_relay_quota_paused` 1, /readyz
 *   delivery degraded), ingress keeps accepting, a restart during the pause stays paused, no storm of
 *   refused attempts at the fake, nothing expires although older than MAX_QUEUE_AGE, and delivery resumes
 *   by itself (a probe message) when the quota is back;
 * - SMTP, two relays sharing one redis-server: a refusal at one pauses both, one probe per interval across
 *   both, both resume;
 * - the SES v2 API: a spent quota resumes through GetAccount polling (no probe message), and
 *   SendingPausedException pauses with an error-level alert and its own reason, probed once GetAccount
 *   says sending is enabled again.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cleanupAfterAll } from './helpers/cleanup';
import { FAKE_REPLIES, startFakeSes } from './helpers/fake-ses';
import { FAKE_API_ERRORS, startFakeSesApi } from './helpers/fake-ses-api';
import { sendMany } from './helpers/mail';
import { REDIS_MISSING, REDIS_SERVER, startRedisServer } from './helpers/redis-server';
import {
  fakeSesEnv,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';

const cleanup = cleanupAfterAll();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

async function pausedGauge(relay: RelayProcess, reason: string): Promise<number> {
  return metricValue(await relay.metrics(), 'ses_relay_quota_paused', { reason });
}

async function readyz(relay: RelayProcess): Promise<Record<string, string>> {
  const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`);
  return ((await res.json()) as { checks: Record<string, string> }).checks;
}

const PAUSE_ENV = {
  SES_QUOTA_PROBE_INTERVAL: '1s',
  SES_POOL_SIZE: '2',
  RETRY_SCHEDULE: '500ms',
  MAX_QUEUE_AGE: '4s',
  SES_RATE_LIMIT: '50',
};

test('SMTP: the daily quota pauses all delivery, survives a restart, expires nothing, resumes by itself', async (t) => {
  const ses = await startFakeSes();
  cleanup.push(() => ses.close());
  let spent = true;
  let refused = 0;
  ses.script((ctx) => (ctx.phase === 'data' && spent ? (refused++, FAKE_REPLIES.dailyQuota) : undefined));
  const env = { ...fakeSesEnv(ses.port), ...PAUSE_ENV };
  let relay = await startRelayProcess({ env });
  cleanup.push(() => stopRelayProcess(relay));
  const first = await sendMany(relay.smtpPort, 6, { prefix: 'q' });
  assert.ok(first.every((r) => !r.error));
  const paused = await relay.waitForLog((l) => l.event === 'delivery:paused', 5000);
  assert.equal(paused.reason, 'daily-quota-exceeded');
  assert.equal(paused.level, 'warn');
  assert.equal(await pausedGauge(relay, 'daily-quota-exceeded'), 1);
  assert.equal((await readyz(relay)).delivery, 'degraded');
  // Ingress keeps accepting while paused.
  const more = await sendMany(relay.smtpPort, 3, { prefix: 'q2' });
  assert.ok(
    more.every((r) => !r.error),
    'accepted while paused',
  );

  // Restart during the pause: still paused (the record is in the spool directory), nothing sent.
  await sleep(1500);
  assert.equal(await stopRelayProcess(relay), 0);
  relay = await startRelayProcess({ env, spoolDir: relay.spoolDir });
  cleanup.push(() => stopRelayProcess(relay));
  const again = await relay.waitForLog((l) => l.event === 'delivery:paused', 5000);
  assert.equal(again.reason, 'daily-quota-exceeded');
  assert.equal(await pausedGauge(relay, 'daily-quota-exceeded'), 1);
  await sleep(3000); // paused ~5 s in all, longer than MAX_QUEUE_AGE (4 s)
  t.diagnostic(`refused attempts while paused: ${refused}`);
  // 2 in flight when SES refused, then one probe per second (the restart's first one an interval after).
  assert.ok(refused <= 2 + 6, `no storm of refused attempts: ${refused}`);
  assert.equal(ses.messages.length, 0);

  spent = false;
  await waitUntil('every message delivered', () => ses.messages.length >= 9, 10_000);
  const resumed = await relay.waitForLog((l) => l.event === 'delivery:resumed', 5000);
  assert.equal(resumed.reason, 'daily-quota-exceeded');
  assert.ok(!relay.logs.some((l) => l.event === 'message:expired'), 'nothing expired');
  assert.ok(
    relay.logs.filter((l) => l.event === 'message:delivered').every((l) => l.attempts === 1),
    'the refused attempts were not counted',
  );
  assert.equal(await pausedGauge(relay, 'daily-quota-exceeded'), 0);
  assert.equal((await readyz(relay)).delivery, 'ok');
  assert.equal(ses.messages.length, 9, 'each once');
});

test(
  'SMTP, two relays sharing Redis: a quota refusal at one pauses both, one probe per interval, both resume',
  { skip: REDIS_SERVER ? false : REDIS_MISSING },
  async (t) => {
    const redis = await startRedisServer();
    cleanup.push(() => redis.close());
    const ses = await startFakeSes();
    cleanup.push(() => ses.close());
    let spent = false;
    const refusedAt: number[] = [];
    ses.script((ctx) =>
      ctx.phase === 'data' && spent ? (refusedAt.push(Date.now()), FAKE_REPLIES.dailyQuota) : undefined,
    );
    const env = {
      ...fakeSesEnv(ses.port),
      ...PAUSE_ENV,
      MAX_QUEUE_AGE: '1h',
      REDIS_URL: redis.url,
      LIMITER_ID: `quota-${process.pid}`,
    };
    const relays = await Promise.all([startRelayProcess({ env }), startRelayProcess({ env })]);
    for (const r of relays) cleanup.push(() => stopRelayProcess(r));
    // Replica 0 meets the spent quota; replica 1 only has mail once the pause is on.
    spent = true;
    await sendMany(relays[0].smtpPort, 4, { prefix: 'a' });
    await relays[0].waitForLog((l) => l.event === 'delivery:paused', 5000);
    await sendMany(relays[1].smtpPort, 4, { prefix: 'b' });
    const shared = await relays[1].waitForLog((l) => l.event === 'delivery:paused', 5000);
    assert.equal(shared.reason, 'daily-quota-exceeded');
    assert.match(String(shared.origin), /shared/);
    for (const r of relays) assert.equal(await pausedGauge(r, 'daily-quota-exceeded'), 1);
    const pausedAt = Date.now();
    await sleep(4000);
    const probes = refusedAt.filter((at) => at > pausedAt + 200);
    t.diagnostic(`refused: ${refusedAt.length}, of which probes after the pause: ${probes.length}`);
    assert.ok(probes.length <= 5, `one probe per second across both relays: ${probes.length} in 4 s`);
    assert.ok(refusedAt.length <= 2 + 5, `no storm: ${refusedAt.length}`);
    assert.ok(!ses.messages.some((m) => m.at > pausedAt), 'nothing delivered by the other relay meanwhile');

    spent = false;
    await waitUntil('both relays delivered everything', () => ses.messages.length >= 8, 10_000);
    for (const r of relays) {
      await r.waitForLog((l) => l.event === 'delivery:resumed', 5000);
      assert.equal(await pausedGauge(r, 'daily-quota-exceeded'), 0);
    }
  },
);

function apiEnv(url: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    SES_TRANSPORT: 'api',
    AWS_REGION: 'eu-west-1',
    AWS_ENDPOINT_URL_SESV2: url,
    AWS_ACCESS_KEY_ID: 'AKIDRELAY',
    AWS_SECRET_ACCESS_KEY: 'relay-secret',
    AWS_EC2_METADATA_DISABLED: 'true',
    ...PAUSE_ENV,
    MAX_QUEUE_AGE: '1h',
    ...extra,
  };
}

test('API: a spent daily quota resumes through GetAccount polling, without probe messages', async () => {
  const api = await startFakeSesApi({
    enforceDailyQuota: true,
    account: { Max24HourSend: 3, SentLast24Hours: 0 },
  });
  cleanup.push(() => api.close());
  const relay = await startRelayProcess({ env: apiEnv(api.url) });
  cleanup.push(() => stopRelayProcess(relay));
  await sendMany(relay.smtpPort, 8, { prefix: 'api' });
  await relay.waitForLog((l) => l.event === 'delivery:paused', 5000);
  assert.equal(api.sends.length, 3, 'the quota took 3');
  await sleep(3000);
  const refused = () => api.calls.filter((c) => c.operation === 'SendEmail' && c.status !== 200).length;
  assert.ok(refused() <= 2, `only the transactions in flight were refused: ${refused()}`);
  const reads = api.calls.filter((c) => c.operation === 'GetAccount').length;
  assert.ok(reads >= 2 && reads <= 4, `GetAccount about once per second: ${reads}`);

  api.account.Max24HourSend = 100; // the 24-hour window rolled (or the quota was raised)
  await waitUntil('delivered', () => api.sends.length >= 8, 10_000);
  const resumed = await relay.waitForLog((l) => l.event === 'delivery:resumed', 5000);
  assert.match(String(resumed.via), /GetAccount/);
  const m = await relay.metrics();
  assert.ok(metricValue(m, 'ses_relay_quota_probes_total', { method: 'get-account' }) >= 2);
  assert.equal(metricValue(m, 'ses_relay_quota_probes_total', { method: 'message' }), 0);
  assert.ok(refused() <= 2, 'no probe message was refused');
});

test('API: SendingPausedException pauses with an error-level alert, probes once sending is enabled', async () => {
  const api = await startFakeSesApi({ account: { SendingEnabled: false } });
  cleanup.push(() => api.close());
  let paused = true;
  api.script(({ operation }) =>
    operation === 'SendEmail' && paused ? FAKE_API_ERRORS.sendingPaused : undefined,
  );
  const relay = await startRelayProcess({ env: apiEnv(api.url) });
  cleanup.push(() => stopRelayProcess(relay));
  await sendMany(relay.smtpPort, 5, { prefix: 'sp' });
  const line = await relay.waitForLog((l) => l.event === 'delivery:paused', 5000);
  assert.equal(line.reason, 'sending-paused');
  assert.equal(line.level, 'error', 'an error: an operator must act');
  assert.equal(await pausedGauge(relay, 'sending-paused'), 1);
  assert.equal(await pausedGauge(relay, 'daily-quota-exceeded'), 0);
  await sleep(2500);
  const sendCalls = () => api.calls.filter((c) => c.operation === 'SendEmail').length;
  assert.ok(sendCalls() <= 2, `GetAccount says disabled: no probe message (${sendCalls()} calls)`);

  // The operator resolved it: GetAccount shows sending enabled, a probe message goes and passes.
  api.account.SendingEnabled = true;
  paused = false;
  await waitUntil('delivered', () => api.sends.length >= 5, 10_000);
  await relay.waitForLog((l) => l.event === 'delivery:resumed', 5000);
  assert.equal(await pausedGauge(relay, 'sending-paused'), 0);
});
