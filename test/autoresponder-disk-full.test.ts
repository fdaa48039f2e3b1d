/**
 * A full disk under the autoresponder (a real tmpfs with size=, so only as root; skipped loudly otherwise):
 * a request whose replies cannot be stored gets a 4xx (nothing half-stored, nothing counted: its daily-limit
 * claim is released), and the same request resent once space is back is answered once.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { startFakeSes } from './helpers/fake-ses';
import { startS3rver } from './helpers/s3rver';
import { cleanupAfterAll } from './helpers/cleanup';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
} from './helpers/relay-process';
import { autoresponderEnv, requestMessage, sendRequest } from './helpers/autoresponder';

const cleanups = cleanupAfterAll();

function mountTmpfs(dir: string, size: string): boolean {
  if (process.getuid?.() !== 0) return false;
  return spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]).status === 0;
}

test('a full disk: 4xx, the claim released, the resent request answered once space is back', async (t) => {
  const mountpoint = tempDir('autoresponder-full-');
  if (!mountTmpfs(mountpoint, '8m')) {
    t.skip('SKIPPED: needs root and tmpfs (mount -t tmpfs) for a real full disk');
    return;
  }
  cleanups.push(() => spawnSync('umount', ['-l', mountpoint]));
  const s3 = await startS3rver(['downloads']);
  cleanups.push(() => s3.close());
  await s3.put('downloads', 'big.bin', Buffer.alloc(400_000, 0x41));
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const port = await freePort();
  const config = [
    {
      email_addr: 'get@example.org',
      body: 'see attachment',
      attachments: [['downloads', 'big.bin', 'big.bin']],
    },
  ];
  const { env } = autoresponderEnv(config, port, { AUTORESPONDER_DAILY_LIMIT: '2' });
  const spoolDir = path.join(mountpoint, 'spool');
  const relay = await startRelayProcess({ spoolDir, env: { ...fakeSesEnv(ses.port), ...env, ...s3.env } });
  cleanups.push(() => stopRelayProcess(relay));

  const send = (messageId: string) =>
    sendRequest(port, requestMessage({ from: 'full@example.net', messageId }), {
      from: 'full@example.net',
      to: ['get@example.org'],
    });
  assert.ok((await send('<first@example.net>')).ok);
  await ses.waitFor(1, 15_000);
  // Let the delivered reply's body file go (it is removed after the spool records the delivery).
  const bodies = path.join(spoolDir, 'bodies');
  for (let i = 0; i < 100 && fs.readdirSync(bodies).length > 0; i++)
    await new Promise((r) => setTimeout(r, 50));

  const filler = path.join(mountpoint, 'filler');
  const { bavail, bsize } = fs.statfsSync(mountpoint);
  fs.writeFileSync(filler, Buffer.alloc(Math.max(0, bavail * bsize - 96 * 1024)));
  const refused = await send('<second@example.net>');
  assert.ok(!refused.ok && refused.code >= 400 && refused.code < 500, refused.response);
  assert.match(refused.response, /^452 4\.3\.1 Insufficient system storage/);
  let m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_autoresponder_requests_total', { result: 'temporary-failure' }), 1);
  assert.equal(metricValue(m, 'ses_relay_queue_messages'), 0, 'nothing half-stored');

  fs.rmSync(filler);
  const resent = await send('<second@example.net>');
  assert.ok(resent.ok, `the resend is answered, not "already answered": ${resent.response}`);
  await ses.waitFor(2, 15_000);
  m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_autoresponder_requests_total', { result: 'answered' }), 2);
  assert.equal(metricValue(m, 'ses_relay_autoresponder_requests_total', { result: 'already-answered' }), 0);
  const third = await send('<third@example.net>');
  assert.ok(third.ok);
  m = await relay.metrics();
  assert.equal(
    metricValue(m, 'ses_relay_autoresponder_requests_total', { result: 'daily-limit' }),
    1,
    'the refused attempt did not count towards the limit of 2',
  );
  assert.equal(ses.messages.length, 2);
});
