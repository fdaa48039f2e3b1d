/**
 * The built relay with SES_TRANSPORT=api end to end, as an operator runs it: SMTP in, SES v2 API out to a
 * local SES v2 endpoint found only through the SDK's own AWS_ENDPOINT_URL_SESV2, credentials only through
 * the SDK's default chain (environment keys), SES_RATE_LIMIT=auto from GetAccount. 120 recipients leave
 * as 3 SendEmail calls (<= 50 each), a Bcc-only recipient is delivered, SES's MessageId is in the log line
 * and in `npm run queue -- show`, and a denied GetAccount starts at SES_RATE_FALLBACK, loudly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { cleanupAfterAll } from './helpers/cleanup';
import { FAKE_API_ERRORS, startFakeSesApi } from './helpers/fake-ses-api';
import { queueIdOf, relayClient } from './helpers/mail';
import { metricValue, ROOT, startRelayProcess, stopRelayProcess } from './helpers/relay-process';

const cleanup = cleanupAfterAll();

function apiEnv(url: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    SES_TRANSPORT: 'api',
    AWS_REGION: 'eu-west-1',
    AWS_ENDPOINT_URL_SESV2: url,
    AWS_ACCESS_KEY_ID: 'AKIDRELAY',
    AWS_SECRET_ACCESS_KEY: 'relay-secret',
    AWS_EC2_METADATA_DISABLED: 'true',
    ...extra,
  };
}

function queueShow(spoolDir: string, id: string): string {
  return execFileSync(process.execPath, [path.join(ROOT, 'dist', 'cli', 'queue.js'), 'show', id], {
    env: { PATH: process.env.PATH ?? '', SPOOL_DIR: spoolDir },
    encoding: 'utf8',
    timeout: 30_000,
  });
}

test('120 recipients through the API: 3 calls, Bcc delivered, MessageId in logs and queue show', async () => {
  const api = await startFakeSesApi({ account: { MaxSendRate: 60 } });
  cleanup.push(() => api.close());
  let sendCalls = 0;
  // The third call fails (SES 500): the message stays deferred, so `queue show` can show every recipient.
  api.script(({ operation }) =>
    operation === 'SendEmail' && ++sendCalls === 3 ? FAKE_API_ERRORS.internal : undefined,
  );
  const relay = await startRelayProcess({
    env: apiEnv(api.url, {
      SES_RATE_LIMIT: 'auto',
      SES_CONFIGURATION_SET: 'relay-events',
      RETRY_SCHEDULE: '1h',
    }),
  });
  cleanup.push(() => stopRelayProcess(relay));
  const ready = relay.logs.find((l) => l.event === 'relay:ready');
  assert.equal(ready?.upstream, `ses-api:${api.url}`);
  assert.equal(ready?.rate, 60, 'SES_RATE_LIMIT=auto read MaxSendRate');
  assert.equal(ready?.burst, 60, 'one second of the rate SES grants');

  const recipients = Array.from({ length: 119 }, (_, i) => `r${i}@example.com`);
  const client = relayClient(relay.smtpPort, 1);
  cleanup.push(() => client.close());
  const info = await client.sendMail({
    envelope: { from: 'sender@example.com', to: [...recipients, 'hidden@example.net'] },
    from: 'sender@example.com',
    to: 'r0@example.com',
    subject: 'api e2e',
    text: 'hello through the API',
  });
  const id = queueIdOf(info.response)!;
  assert.ok(id, info.response);
  await relay.waitForLog((l) => l.event === 'message:deferred' && l.queueId === id, 20_000);

  assert.equal(api.calls.filter((c) => c.operation === 'SendEmail').length, 3);
  assert.deepEqual(
    api.calls.filter((c) => c.operation === 'SendEmail').map((c) => c.recipients.length),
    [50, 50, 20],
    'split into SES-sized calls',
  );
  assert.equal(api.sends.length, 2);
  const sent = api.sends.flatMap((s) => s.recipients);
  const failedCall = api.calls.filter((c) => c.operation === 'SendEmail')[2].recipients;
  assert.equal(new Set([...sent, ...failedCall]).size, 120, 'each recipient in exactly one call');
  const bccCall = api.sends.find((s) => s.recipients.includes('hidden@example.net'));
  if (bccCall) assert.ok(!bccCall.raw.toString().includes('hidden@'), 'the Bcc is in no header');
  else assert.ok(failedCall.includes('hidden@example.net'));
  for (const s of api.sends) {
    assert.equal(s.accessKeyId, 'AKIDRELAY', "the SDK's default chain found the environment keys");
    assert.equal(s.region, 'eu-west-1');
    assert.equal(s.from, 'sender@example.com');
    assert.equal(s.configurationSet, 'relay-events');
    assert.match(s.raw.toString(), /Subject: api e2e/);
  }

  const delivered = relay.logs.filter((l) => l.event === 'message:delivered' && l.queueId === id);
  assert.equal(delivered.length, 1);
  assert.match(String(delivered[0].reply), /^250 Ok 0100fake\d+-ses$/, 'the log line carries the MessageId');

  const show = queueShow(relay.spoolDir, id);
  for (const s of api.sends) {
    assert.ok(show.includes(`250 Ok ${s.messageId}`), `queue show lists MessageId ${s.messageId}:\n${show}`);
  }
  assert.match(show, /451 4\.3\.0 SES API InternalFailure \(HTTP 500\)/);

  const m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_limiter_rate'), 60);
  assert.equal(metricValue(m, 'ses_relay_ses_max_send_rate'), 60);
  assert.ok(metricValue(m, 'ses_relay_ses_account_reads_total', { result: 'ok' }) >= 1);
  assert.equal(metricValue(m, 'ses_relay_recipients_delivered_total'), 100);
  assert.ok(
    !JSON.stringify(relay.logs).includes('relay-secret'),
    'the AWS secret key never reaches the logs',
  );
});

test('a Bcc-only message: the envelope recipient is delivered, the headers name nobody', async () => {
  const api = await startFakeSesApi();
  cleanup.push(() => api.close());
  const relay = await startRelayProcess({ env: apiEnv(api.url, { SES_RATE_LIMIT: '10' }) });
  cleanup.push(() => stopRelayProcess(relay));
  const client = relayClient(relay.smtpPort, 1);
  cleanup.push(() => client.close());
  const info = await client.sendMail({
    from: 'sender@example.com',
    bcc: ['secret@example.org'],
    subject: 'only bcc',
    text: 'nobody in To',
  });
  const id = queueIdOf(info.response)!;
  await relay.waitForLog((l) => l.event === 'message:delivered' && l.queueId === id, 15_000);
  assert.deepEqual(api.sends[0].recipients, ['secret@example.org']);
  assert.ok(!/secret@/.test(api.sends[0].raw.toString()), 'no header names the Bcc recipient');
});

test('GetAccount denied at start: SES_RATE_FALLBACK with a warning, then the rate SES grants', async () => {
  const api = await startFakeSesApi({ account: { MaxSendRate: 25 } });
  cleanup.push(() => api.close());
  api.queueAccount(FAKE_API_ERRORS.accessDenied);
  const relay = await startRelayProcess({
    env: apiEnv(api.url, { SES_RATE_LIMIT: 'auto', SES_RATE_FALLBACK: '2', SES_QUOTA_REFRESH: '10s' }),
  });
  cleanup.push(() => stopRelayProcess(relay));
  const warn = relay.logs.find((l) => l.event === 'limiter:auto-rate-fallback');
  assert.equal(warn?.level, 'warn', 'a warning');
  assert.match(String(warn?.msg), /SES_RATE_FALLBACK=2/);
  const why = relay.logs.find((l) => l.event === 'ses:account-unreadable');
  assert.equal(why?.denied, true);
  assert.equal(relay.logs.find((l) => l.event === 'relay:ready')?.rate, 2);
  assert.equal(metricValue(await relay.metrics(), 'ses_relay_limiter_rate'), 2);
  assert.equal(
    metricValue(await relay.metrics(), 'ses_relay_ses_account_reads_total', { result: 'denied' }),
    1,
  );
  // The next reading (10 s after a failure) succeeds: the limiter runs at what SES grants.
  await relay.waitForLog((l) => l.event === 'limiter:auto-rate' && l.rate === 25, 25_000);
  assert.equal(metricValue(await relay.metrics(), 'ses_relay_limiter_rate'), 25);
});
