/**
 * End to end through a real relay process: nodemailer → relay (ingress, spool, dispatcher) → fake SES over
 * STARTTLS with AUTH; health, readiness and metrics endpoints; the embedded outbox mode.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startFakeSes } from './helpers/fake-ses';
import {
  fakeSesEnv,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';
import { markerOf, sendMany, relayClient, numberedMessage } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();

test('mail goes through the relay to SES byte for byte, with logs and metrics', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '100' } });
  cleanups.push(() => stopRelayProcess(relay));

  const client = relayClient(relay.smtpPort, 2);
  const info = await client.sendMail(
    numberedMessage(
      'hello-1',
      ['a@example.net', 'b@example.org'],
      'line with trailing space \r\n.leading dot',
    ),
  );
  client.close();
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as [A-Za-z0-9]+/);
  await ses.waitFor(1, 10_000);
  const got = ses.messages[0];
  assert.deepEqual(got.recipients.sort(), ['a@example.net', 'b@example.org']);
  assert.equal(got.mailFrom, 'sender@example.com');
  assert.equal(markerOf(got.body), 'hello-1');
  assert.ok(got.body.toString().includes('\r\n.leading dot'), 'dot-stuffing undone upstream, content intact');

  const queueId = /queued as (\S+)/.exec(info.response)![1];
  const accepted = await relay.waitForLog((l) => l.event === 'message:accepted' && l.queueId === queueId);
  assert.equal(accepted.level, 'info');
  await relay.waitForLog((l) => l.event === 'message:delivered' && l.queueId === queueId);

  const health = await fetch(`http://127.0.0.1:${relay.metricsPort}/healthz`);
  assert.equal(health.status, 200);
  const ready = await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`);
  assert.equal(ready.status, 200);
  const readyBody = (await ready.json()) as { checks: Record<string, string> };
  assert.equal(readyBody.checks.spool, 'ok');
  assert.equal(readyBody.checks.smtp, 'ok');

  const m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_messages_received_total'), 1);
  assert.equal(metricValue(m, 'ses_relay_recipients_received_total'), 2);
  assert.equal(metricValue(m, 'ses_relay_recipients_delivered_total'), 2);
  assert.equal(metricValue(m, 'ses_relay_queue_messages'), 0);
  assert.ok(m.includes('ses_relay_process_cpu_user_seconds_total'), 'default process metrics');
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const exported = [...m.matchAll(/^# TYPE (ses_relay_\w+)/gm)].map((x) => x[1]);
  const undocumented = exported.filter((n) => !/^ses_relay_(process|nodejs)_/.test(n) && !readme.includes(n));
  assert.deepEqual(undocumented, [], 'every relay metric is listed in the README');
  assert.ok(!JSON.stringify(relay.logs).includes('fake-secret'), 'the SES password never reaches the logs');
});

test('many messages over pooled connections all arrive once', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '1000' } });
  cleanups.push(() => stopRelayProcess(relay));
  const results = await sendMany(relay.smtpPort, 200, { maxConnections: 10 });
  assert.equal(results.filter((r) => r.error).length, 0);
  await ses.waitFor(200, 20_000);
  const markers = new Set(ses.messages.map((m) => markerOf(m.body)));
  assert.equal(markers.size, 200);
  assert.ok(ses.connectionsOpened <= 8, `upstream connections reused (${ses.connectionsOpened} opened)`);
});

test('embedded mode: without AWS_SMTP_HOST mail lands in the outbox as .eml and the relay says so', async () => {
  const relay: RelayProcess = await startRelayProcess();
  cleanups.push(() => stopRelayProcess(relay));
  const warn = relay.logs.find((l) => l.event === 'relay:embedded-mode');
  assert.ok(warn, 'embedded mode announced at start');
  await sendMany(relay.smtpPort, 3, { prefix: 'outbox' });
  const outbox = relay.env.OUTBOX_DIR;
  const deadline = Date.now() + 10_000;
  let files: string[] = [];
  while (Date.now() < deadline) {
    files = fs.existsSync(outbox) ? fs.readdirSync(outbox).filter((f) => f.endsWith('.eml')) : [];
    if (files.length >= 3) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(files.length, 3);
  const texts = files.map((f) => fs.readFileSync(path.join(outbox, f), 'utf8'));
  assert.deepEqual(texts.map((t) => /X-Test-Marker: (\S+)/.exec(t)?.[1]).sort(), [
    'outbox-0',
    'outbox-1',
    'outbox-2',
  ]);
});
