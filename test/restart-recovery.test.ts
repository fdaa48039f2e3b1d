/**
 * Restart recovery: mail accepted while SES is unreachable stays in the spool across a graceful restart
 * and is delivered once SES answers; SIGTERM exits 0 and keeps the queue.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startFakeSes } from './helpers/fake-ses';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
} from './helpers/relay-process';
import { markerOf, sendMany } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();

test('queued mail survives a restart and is delivered afterwards', async () => {
  const spoolDir = tempDir();
  const deadPort = await freePort(); // nothing listens here: upstream unreachable
  const first = await startRelayProcess({
    spoolDir,
    env: { ...fakeSesEnv(deadPort), RETRY_SCHEDULE: '200ms', SES_RATE_LIMIT: '100' },
  });
  cleanups.push(() => stopRelayProcess(first));
  const results = await sendMany(first.smtpPort, 30, { prefix: 'restart' });
  assert.equal(results.filter((r) => r.error).length, 0);
  await first.waitForLog((l) => l.event === 'message:deferred');
  const m = await first.metrics();
  assert.equal(metricValue(m, 'ses_relay_queue_messages'), 30);
  assert.equal(await stopRelayProcess(first), 0, 'SIGTERM: clean exit');
  assert.ok(first.logs.some((l) => l.event === 'relay:stopped'));

  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const second = await startRelayProcess({
    spoolDir,
    env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '100' },
  });
  cleanups.push(() => stopRelayProcess(second));
  await ses.waitFor(30, 15_000);
  const markers = new Set(ses.messages.map((x) => markerOf(x.body)));
  for (let i = 0; i < 30; i++) assert.ok(markers.has(`restart-${i}`), `restart-${i} delivered`);
});
