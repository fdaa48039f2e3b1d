/**
 * Configuration reload while the relay runs: a file replaced by rename, an S3 object (s3rver) changed, an
 * attachment re-uploaded under the same key; a bad new configuration (invalid, or naming an attachment that
 * cannot be fetched) is logged and counted once, and the last good one keeps answering.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startFakeSes, type FakeSes } from './helpers/fake-ses';
import { startS3rver } from './helpers/s3rver';
import { cleanupAfterAll } from './helpers/cleanup';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';
import {
  autoresponderEnv,
  parseReply,
  replaceByRename,
  requestMessage,
  sendRequest,
} from './helpers/autoresponder';

const cleanups = cleanupAfterAll();

const entry = (body: string, attachments: string[][] | null = null) => ({
  email_addr: 'get@example.org',
  body,
  attachments,
  send_method: 'SES',
});

async function metric(relay: RelayProcess, name: string): Promise<number> {
  return metricValue(await relay.metrics(), name);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Send one request and return the text of its single reply. */
async function answer(ses: FakeSes, port: number, from: string): Promise<string> {
  const before = ses.messages.length;
  const r = await sendRequest(port, requestMessage({ from }), { from, to: ['get@example.org'] });
  assert.ok(r.ok, r.response);
  await ses.waitFor(before + 1, 15_000);
  const mail = await parseReply(ses.messages[before].body);
  return (mail.text ?? '').trim();
}

test('a configuration file replaced by rename is reloaded; a bad one is counted once and the old one stays', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const port = await freePort();
  const { env, configPath } = autoresponderEnv([entry('version one')], port, {
    AUTORESPONDER_DAILY_LIMIT: '100',
  });
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), ...env } });
  cleanups.push(() => stopRelayProcess(relay));
  assert.equal(await metric(relay, 'ses_relay_autoresponder_config_reloads_total'), 1, 'the first load');
  assert.equal(await answer(ses, port, 'a@example.net'), 'version one');

  replaceByRename(configPath, JSON.stringify([entry('version two')]));
  await until(
    'reload',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reloads_total')) === 2,
  );
  assert.equal(await answer(ses, port, 'b@example.net'), 'version two');

  replaceByRename(configPath, JSON.stringify([{ ...entry('broken'), sendmethod: 'SES' }]));
  await until(
    'the failure',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reload_failures_total')) === 1,
  );
  const rejected = await relay.waitForLog((l) => l.event === 'autoresponder:config-rejected');
  assert.equal(rejected.level, 'error');
  assert.match(String(rejected.problem), /entry 1 \(get@example\.org\): unknown field "sendmethod"/);
  await new Promise((r) => setTimeout(r, 1000)); // five more polls of the same bad file
  assert.equal(
    await metric(relay, 'ses_relay_autoresponder_config_reload_failures_total'),
    1,
    'counted once',
  );
  assert.equal(
    await answer(ses, port, 'c@example.net'),
    'version two',
    'the last good configuration answers',
  );

  replaceByRename(configPath, 'not json at all');
  await until(
    'second failure',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reload_failures_total')) === 2,
  );
  replaceByRename(configPath, JSON.stringify([entry('version three')]));
  await until(
    'reload',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reloads_total')) === 3,
  );
  assert.equal(await answer(ses, port, 'd@example.net'), 'version three');
});

test('from S3: the object changed, an attachment re-uploaded under its key, a missing attachment refused', async () => {
  const s3 = await startS3rver(['conf', 'downloads']);
  cleanups.push(() => s3.close());
  await s3.put('downloads', 'app.apk', 'APK version 1');
  await s3.put(
    'conf',
    'responder.json',
    JSON.stringify([entry('from S3', [['downloads', 'app.apk', 'psiphon.apk']])]),
  );
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const port = await freePort();
  const { env } = autoresponderEnv([], port, {
    AUTORESPONDER_CONFIG: 's3://conf/responder.json',
    AUTORESPONDER_DAILY_LIMIT: '100',
  });
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), ...env, ...s3.env } });
  cleanups.push(() => stopRelayProcess(relay));

  const attachmentOf = async (from: string) => {
    const before = ses.messages.length;
    assert.ok((await sendRequest(port, requestMessage({ from }), { from, to: ['get@example.org'] })).ok);
    await ses.waitFor(before + 1, 15_000);
    const mail = await parseReply(ses.messages[before].body);
    return { text: (mail.text ?? '').trim(), attachment: mail.attachments[0]?.content.toString() };
  };
  assert.deepEqual(await attachmentOf('a@example.net'), { text: 'from S3', attachment: 'APK version 1' });

  await s3.put('downloads', 'app.apk', 'APK version 2');
  await until(
    'attachment reload',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reloads_total')) === 2,
  );
  assert.deepEqual(await attachmentOf('b@example.net'), { text: 'from S3', attachment: 'APK version 2' });

  await s3.put(
    'conf',
    'responder.json',
    JSON.stringify([entry('changed in S3', [['downloads', 'app.apk', 'psiphon.apk']])]),
  );
  await until(
    'object reload',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reloads_total')) === 3,
  );
  assert.equal((await attachmentOf('c@example.net')).text, 'changed in S3');

  await s3.put(
    'conf',
    'responder.json',
    JSON.stringify([entry('needs a missing file', [['downloads', 'gone.exe', 'x.exe']])]),
  );
  await until(
    'refusal',
    async () => (await metric(relay, 'ses_relay_autoresponder_config_reload_failures_total')) === 1,
  );
  const rejected = await relay.waitForLog((l) => l.event === 'autoresponder:config-rejected');
  assert.match(
    String(rejected.problem),
    /entry 1 \(get@example\.org\): attachment s3:\/\/downloads\/gone\.exe: /,
  );
  assert.equal(
    (await attachmentOf('d@example.net')).text,
    'changed in S3',
    'the last good configuration answers',
  );
});
