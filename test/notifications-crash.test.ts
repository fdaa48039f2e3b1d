/**
 * A crash between a failure and its notification never loses the notification and never sends it twice:
 * - deterministic: a child process commits the failure (and with it the owed notification) and is SIGKILLed
 *   before anything composes it; a relay started on that spool sends exactly one notification, and a
 *   restart after that sends none more;
 * - a relay process SIGKILLed as soon as it logs the failure (the notification owed, composed or stored,
 *   whichever it reached), twice, and once as soon as it logs the stored notification; after the restart
 *   SES receives exactly one notification about each message. (SES answers the notification's RCPT after 1 s, so a kill never lands after SES took it:
 *   that would be the documented at-least-once window of any message, not a notification matter.)
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { FAKE_REPLIES, startFakeSes, type FakeSes } from './helpers/fake-ses';
import { CRASH_BOUNCE_FROM as BOUNCE_FROM } from './helpers/notification-crash-child';
import { messageData, sendRaw } from './helpers/notifications';
import { fakeSesEnv, startRelayProcess, stopRelayProcess, tempDir } from './helpers/relay-process';

function notificationsAbout(ses: FakeSes, queueId: string) {
  return ses.messages.filter(
    (m) => m.mailFrom === BOUNCE_FROM && m.body.includes(`X-Ses-Relay-Queue-ID: ${queueId}`),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('killed after the failure was committed, before the notification: the next start sends it once', async () => {
  const dir = tempDir();
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(__dirname, 'helpers', 'notification-crash-child.ts'),
      dir,
      'gone@example.net',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const id = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      const m = /settled (\S+)\n/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`child exited ${code} before settling`)));
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));

  const ses = await startFakeSes();
  const env = { ...fakeSesEnv(ses.port), BOUNCE_FROM };
  try {
    let relay = await startRelayProcess({ env, spoolDir: dir });
    await ses.waitFor(() => notificationsAbout(ses, id).length === 1, 20_000);
    await stopRelayProcess(relay);
    relay = await startRelayProcess({ env, spoolDir: dir });
    await sleep(1500);
    await stopRelayProcess(relay);
    assert.equal(notificationsAbout(ses, id).length, 1);
    assert.match(
      notificationsAbout(ses, id)[0].body.toString(),
      /Diagnostic-Code: smtp; 550 5\.1\.1 Mailbox unavailable/,
    );
  } finally {
    await ses.close();
  }
});

test('kill -9 of the relay right after the failure (twice) and after the notification was stored: one each', async () => {
  const ses = await startFakeSes();
  // The notification's RCPT is answered after 1 s: a kill never lands after SES accepted it.
  ses.script((ctx) => (ctx.phase === 'rcpt' && ctx.mailFrom === BOUNCE_FROM ? { delayMs: 1000 } : undefined));
  const dir = tempDir();
  const env = { ...fakeSesEnv(ses.port), BOUNCE_FROM, RETRY_SCHEDULE: '1s' };
  try {
    const ids: string[] = [];
    const stages: string[] = [];
    for (let round = 0; round < 3; round++) {
      const relay = await startRelayProcess({ env, spoolDir: dir });
      const rcpt = `gone-${round}@example.net`;
      ses.queueRcpt(rcpt, FAKE_REPLIES.mailboxUnavailable);
      const id = await sendRaw(relay.smtpPort, {
        mailFrom: 'app@example.com',
        rcpts: [{ address: rcpt }, { address: `fine-${round}@example.net` }],
        data: messageData(`round ${round}`),
      });
      ids.push(id);
      // Rounds 0 and 1: killed at the failure (the notification owed, perhaps composed); round 2: killed
      // once the notification is stored (its first SES attempt still waiting for the RCPT answer).
      await relay.waitForLog((l) =>
        round < 2
          ? l.event === 'message:failed' && l.queueId === id
          : l.event === 'notification:queued' && l.about === id,
      );
      relay.kill('SIGKILL');
      await relay.exited;
      const stored = relay.logs.some((l) => l.event === 'notification:queued' && l.about === id);
      stages.push(stored ? 'stored' : 'owed');
    }
    console.log(`killed with the notification: ${stages.join(', ')}`);
    const relay = await startRelayProcess({ env, spoolDir: dir });
    try {
      await ses.waitFor(() => ids.every((id) => notificationsAbout(ses, id).length >= 1), 30_000);
      await sleep(2500); // a duplicate would arrive within the 1 s retry and the 1 s answer
      for (const id of ids) assert.equal(notificationsAbout(ses, id).length, 1, `notifications about ${id}`);
    } finally {
      await stopRelayProcess(relay);
    }
  } finally {
    await ses.close();
  }
});
