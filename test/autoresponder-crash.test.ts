/**
 * A crash right after the request's 250: the relay is killed with SIGKILL the moment the 250 arrives (SES
 * unreachable, so nothing can have left yet), restarted on the same spool with SES reachable, and every
 * reply arrives exactly once, in config order. The replies were in the spool before the 250.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startFakeSes } from './helpers/fake-ses';
import { cleanupAfterAll } from './helpers/cleanup';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
} from './helpers/relay-process';
import { autoresponderEnv, parseReply, requestMessage, sendRequest } from './helpers/autoresponder';
import { SpoolInspector } from '../src/spool/spool-inspector';

const cleanups = cleanupAfterAll();

const CONFIG = ['first', 'second', 'third'].map((body) => ({
  email_addr: 'get@example.org',
  body,
  attachments: null,
  send_method: 'SES',
}));

test('SIGKILL right after the 250 loses no reply and sends none twice; order survives the restart', async () => {
  const spoolDir = tempDir();
  const port = await freePort();
  const closedPort = await freePort(); // nothing listens: SES unreachable for the first process
  const { env } = autoresponderEnv(CONFIG, port, { RETRY_SCHEDULE: '300ms' });
  const first = await startRelayProcess({ spoolDir, env: { ...fakeSesEnv(closedPort), ...env } });
  cleanups.push(() => stopRelayProcess(first));

  const requests = ['a@example.net', 'b@example.net'];
  for (const from of requests) {
    const r = await sendRequest(port, requestMessage({ from }), { from, to: ['get@example.org'] });
    assert.ok(r.ok, r.response);
  }
  first.kill('SIGKILL');
  assert.equal(await first.exited, 'SIGKILL');

  const inspector = SpoolInspector.open(spoolDir);
  const stored = inspector.summary();
  inspector.close();
  assert.equal(stored.waitingMessages, 6, 'all replies of both requests were in the spool before their 250');

  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const second = await startRelayProcess({ spoolDir, env: { ...fakeSesEnv(ses.port), ...env } });
  cleanups.push(() => stopRelayProcess(second));
  await ses.waitFor(6, 20_000);
  const deadline = Date.now() + 10_000;
  while (metricValue(await second.metrics(), 'ses_relay_queue_messages') > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1000)); // time for any duplicate to show up
  assert.equal(ses.messages.length, 6, 'each reply exactly once');
  for (const requester of requests) {
    const bodies = [];
    for (const m of ses.messages.filter((x) => x.recipients[0] === requester)) {
      bodies.push(((await parseReply(m.body)).text ?? '').trim());
    }
    assert.deepEqual(bodies, ['first', 'second', 'third'], `${requester}: in config order`);
  }
});
