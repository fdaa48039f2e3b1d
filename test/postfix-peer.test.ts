/**
 * Postfix's smtp-source as a real, independent SMTP client (Debian's postfix package): bursts over many
 * sessions, one connection per message and kept-open connections, several recipients per transaction.
 * Everything acknowledged must reach the fake SES, split into transactions of at most 50 recipients.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { startFakeSes } from './helpers/fake-ses';
import { fakeSesEnv, metricValue, startRelayProcess, stopRelayProcess } from './helpers/relay-process';
import { cleanupAfterAll } from './helpers/cleanup';

const run = promisify(execFile);
const SMTP_SOURCE = ['/usr/sbin/smtp-source', '/usr/bin/smtp-source'].find((p) => fs.existsSync(p));
const skip = SMTP_SOURCE
  ? false
  : 'smtp-source (Debian package postfix) is not installed: run scripts/install-test-deps.sh';
if (skip) console.error(`SKIP postfix-peer.test.ts: ${skip}`);

const cleanups = cleanupAfterAll();

async function smtpSource(port: number, args: string[]) {
  return run(
    SMTP_SOURCE!,
    [...args, '-f', 'sender@example.com', '-t', 'rcpt@example.net', `127.0.0.1:${port}`],
    {
      timeout: 60_000,
    },
  );
}

test('smtp-source bursts: every message acknowledged and delivered once', { skip }, async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '2000' } });
  cleanups.push(() => stopRelayProcess(relay));

  await smtpSource(relay.smtpPort, ['-s', '10', '-l', '4096', '-m', '150']); // a connection per message
  await smtpSource(relay.smtpPort, ['-d', '-s', '10', '-l', '4096', '-m', '150']); // kept-open connections
  const m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_messages_received_total'), 300);
  assert.equal(metricValue(m, 'ses_relay_smtp_rejections_total'), 0);
  await ses.waitFor(300, 30_000);
  assert.equal(ses.messages.length, 300);
  assert.ok(ses.messages.every((x) => x.body.length >= 4096));
});

test(
  'smtp-source with 120 recipients per transaction: split into upstream transactions of <= 50',
  { skip },
  async () => {
    const ses = await startFakeSes();
    cleanups.push(() => ses.close());
    const relay = await startRelayProcess({
      env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '2000', SES_BURST: '200' },
    });
    cleanups.push(() => stopRelayProcess(relay));
    await smtpSource(relay.smtpPort, ['-N', '-r', '120', '-s', '2', '-m', '4']);
    await ses.waitFor((msgs) => msgs.reduce((n, x) => n + x.recipients.length, 0) >= 480, 30_000);
    assert.equal(ses.recipientsReceived(), 480);
    assert.ok(ses.messages.every((x) => x.recipients.length <= 50));
    assert.equal(ses.messages.length, 12, '4 messages x (50 + 50 + 20)');
  },
);
