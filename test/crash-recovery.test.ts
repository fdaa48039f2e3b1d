/**
 * kill -9 of the relay in the middle of a burst: every message that got 250 is delivered after the restart
 * (at-least-once). Messages the client never saw acknowledged may or may not arrive.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startFakeSes } from './helpers/fake-ses';
import { fakeSesEnv, startRelayProcess, stopRelayProcess, tempDir } from './helpers/relay-process';
import { markerOf, sendMany } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();

test('kill -9 during a burst loses no acknowledged message', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const spoolDir = tempDir();
  // A slow rate keeps most of the burst in the spool when the relay dies.
  const env = { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '50' };
  const relay = await startRelayProcess({ spoolDir, env });
  cleanups.push(() => stopRelayProcess(relay));

  const acked = new Set<string>();
  let killed = false;
  const results = await sendMany(relay.smtpPort, 1500, {
    prefix: 'crash',
    maxConnections: 20,
    onAck: (r) => {
      acked.add(`crash-${r.index}`);
      if (!killed && acked.size >= 400) {
        killed = true;
        relay.kill('SIGKILL');
      }
    },
  });
  assert.ok(killed, 'the relay was killed mid-burst');
  assert.equal(await relay.exited, 'SIGKILL');
  assert.ok(
    results.some((r) => r.error),
    'some messages were refused or cut off by the kill',
  );
  const ackedBeforeKill = new Set(acked);

  const again = await startRelayProcess({ spoolDir, env: { ...env, SES_RATE_LIMIT: '1000' } });
  cleanups.push(() => stopRelayProcess(again));
  const delivered = () => new Set(ses.messages.map((m) => markerOf(m.body)));
  await ses.waitFor(() => [...ackedBeforeKill].every((m) => delivered().has(m)), 30_000).catch(() => {});
  const got = delivered();
  const lost = [...ackedBeforeKill].filter((m) => !got.has(m));
  assert.deepEqual(lost, [], `${lost.length} acknowledged messages lost`);
  const duplicates = ses.messages.length - got.size;
  assert.ok(duplicates <= 20, `duplicate window is small (${duplicates} duplicates)`);
});

test('kill -9 between the transactions of one message re-sends none of those SES accepted', async (t) => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const spoolDir = tempDir();
  // SES_BURST=1: one recipient per upstream transaction, one transaction a second.
  const env = { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '1', SES_BURST: '1' };
  const relay = await startRelayProcess({ spoolDir, env });
  cleanups.push(() => stopRelayProcess(relay));
  const rcpts = Array.from({ length: 6 }, (_, i) => `chunk${i}@example.net`);
  const [sent] = await sendMany(relay.smtpPort, 1, { prefix: 'chunks', recipients: () => rcpts });
  assert.ok(sent.queueId, `accepted: ${sent.error?.message ?? ''}`);
  await ses.waitFor(3, 15_000);
  await new Promise((r) => setTimeout(r, 300)); // SES answered the third; the fourth is ~1 s away
  relay.kill('SIGKILL');
  assert.equal(await relay.exited, 'SIGKILL');
  const beforeKill = ses.messages.length;

  const again = await startRelayProcess({ spoolDir, env: { ...env, SES_RATE_LIMIT: '100', SES_BURST: '1' } });
  cleanups.push(() => stopRelayProcess(again));
  const delivered = () => new Set(ses.messages.flatMap((m) => m.recipients));
  await ses.waitFor(() => rcpts.every((r) => delivered().has(r)), 15_000);
  await again.waitForLog((l) => l.event === 'message:delivered');
  const perRecipient = new Map<string, number>();
  for (const r of ses.messages.flatMap((m) => m.recipients))
    perRecipient.set(r, (perRecipient.get(r) ?? 0) + 1);
  const total = [...perRecipient.values()].reduce((a, b) => a + b, 0);
  t.diagnostic(
    `6 recipients, 1 per transaction, killed after ${beforeKill} transactions: ${total} deliveries ` +
      `(${total - 6} duplicates; before per-transaction recording: 9)`,
  );
  assert.deepEqual(
    [...perRecipient.entries()].filter(([, n]) => n > 1),
    [],
    'no recipient of a transaction SES had answered before the kill was sent again',
  );
});
