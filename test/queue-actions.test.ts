/**
 * Queue actions against a live relay process (the built `dist/cli/queue.js`, as an operator runs it): retry,
 * hold, release, delete and bounce, each over the relay's control socket, with several ids, `--all` and
 * `--state`; a message being delivered right now (changed once its SES transaction ended); unknown ids
 * (exit 1); the same actions with no relay running (the tool takes the spool lock itself); and held mail
 * that outlives MAX_QUEUE_AGE without expiring.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SpoolInspector, type MessageDetail } from '../src/spool/spool-inspector';
import { FAKE_REPLIES, startFakeSes, type FakeSes } from './helpers/fake-ses';
import { messageData, sendRaw } from './helpers/notifications';
import {
  fakeSesEnv,
  metricValue,
  ROOT,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';

const QUEUE_CLI = path.join(ROOT, 'dist', 'cli', 'queue.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

function queue(spoolDir: string, ...args: string[]): Promise<Run> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [QUEUE_CLI, ...args],
      { env: { PATH: process.env.PATH, SPOOL_DIR: spoolDir }, timeout: 90_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr, ms: Date.now() - t0 });
      },
    );
  });
}

function show(spoolDir: string, id: string): MessageDetail | undefined {
  const inspector = SpoolInspector.open(spoolDir);
  try {
    return inspector.show(id);
  } finally {
    inspector.close();
  }
}

const lines = (text: string) => text.split('\n').filter(Boolean);

async function send(relay: RelayProcess, rcpt: string, subject = rcpt, body?: string): Promise<string> {
  return sendRaw(relay.smtpPort, {
    mailFrom: 'app@example.com',
    rcpts: [{ address: rcpt }],
    data: messageData(subject, body),
  });
}

/** Send to `rcpt` and wait until SES deferred it once (451): it then waits RETRY_SCHEDULE (30 s). */
async function deferred(ses: FakeSes, relay: RelayProcess, rcpt: string, body?: string): Promise<string> {
  ses.queueRcpt(rcpt, FAKE_REPLIES.temporaryFailure);
  const id = await send(relay, rcpt, rcpt, body);
  await relay.waitForLog((l) => l.event === 'message:deferred' && l.queueId === id);
  return id;
}

const delivered = (ses: FakeSes, rcpt: string) => ses.messages.filter((m) => m.recipients.includes(rcpt));

describe('queue actions against a live relay', () => {
  let ses: FakeSes;
  let relay: RelayProcess;

  before(async () => {
    ses = await startFakeSes();
    relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), RETRY_SCHEDULE: '30s' } });
  });
  after(async () => {
    await stopRelayProcess(relay);
    await ses.close();
  });

  test('hold, then release: held mail is not sent; released mail leaves at once', async () => {
    const a = await deferred(ses, relay, 'hold-a@example.net');
    const b = await deferred(ses, relay, 'hold-b@example.net');
    const held = await queue(relay.spoolDir, 'hold', a, b);
    assert.equal(held.code, 0, held.stderr);
    assert.deepEqual(lines(held.stdout), [a, b]);
    assert.equal(show(relay.spoolDir, a)?.state, 'held');
    assert.ok(show(relay.spoolDir, a)?.heldSince, 'held since is shown');
    assert.equal(metricValue(await relay.metrics(), 'ses_relay_queue_messages', { state: 'held' }), 2);
    const listed = await queue(relay.spoolDir, 'list', 'held');
    assert.match(listed.stdout, new RegExp(`^${a} +held`, 'm'));

    // retry does not apply to held mail: reported, exit 0, nothing changed.
    const retry = await queue(relay.spoolDir, 'retry', a);
    assert.equal(retry.code, 0);
    assert.equal(retry.stdout, '');
    assert.match(retry.stderr, new RegExp(`${a}: not changed \\(retry does not apply to held messages\\)`));

    const released = await queue(relay.spoolDir, 'release', '--all');
    assert.equal(released.code, 0, released.stderr);
    assert.deepEqual(lines(released.stdout).sort(), [a, b].sort());
    // Due at once (the retry schedule said 30 s).
    await ses.waitFor(() => delivered(ses, 'hold-a@example.net').length === 1, 10_000);
    await ses.waitFor(() => delivered(ses, 'hold-b@example.net').length === 1, 10_000);
    assert.equal(metricValue(await relay.metrics(), 'ses_relay_queue_messages', { state: 'held' }), 0);
  });

  test('retry: due now, its attempts kept', async () => {
    const id = await deferred(ses, relay, 'retry@example.net');
    const r = await queue(relay.spoolDir, 'retry', id);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), [id]);
    const line = await relay.waitForLog((l) => l.event === 'message:delivered' && l.queueId === id, 10_000);
    assert.equal(line.attempts, 2, 'the deferred attempt still counts');
  });

  test('delete: removed with its body file, never sent', async () => {
    const id = await deferred(ses, relay, 'delete@example.net', `${'y'.repeat(1000)}\r\n`.repeat(300));
    const detail = show(relay.spoolDir, id)!;
    assert.equal(detail.body.storage, 'file');
    const file = (detail.body as { path: string }).path;
    assert.ok(fs.existsSync(file));
    const r = await queue(relay.spoolDir, 'delete', id);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), [id]);
    assert.equal(show(relay.spoolDir, id), undefined);
    for (let i = 0; i < 50 && fs.existsSync(file); i++) await new Promise((res) => setTimeout(res, 20));
    assert.ok(!fs.existsSync(file), 'body file removed');
    assert.equal((await queue(relay.spoolDir, 'show', id)).code, 1);
    assert.equal(delivered(ses, 'delete@example.net').length, 0);
  });

  test('bounce: every waiting recipient failed now (no notification without BOUNCE_FROM)', async () => {
    const id = await deferred(ses, relay, 'bounce@example.net');
    const r = await queue(relay.spoolDir, 'bounce', id);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), [id]);
    const shown = show(relay.spoolDir, id)!;
    assert.equal(shown.state, 'failed');
    assert.equal(shown.recipients[0].status, 'failed');
    assert.match(shown.recipients[0].reply ?? '', /returned to the sender by the operator/);
    assert.deepEqual(shown.notificationsOwed, []);
    assert.match((await queue(relay.spoolDir, 'list', 'failed')).stdout, new RegExp(`^${id} +failed`, 'm'));
  });

  test('several ids with --state; an unknown id exits 1 and the known ones are still changed', async () => {
    const a = await deferred(ses, relay, 'state-a@example.net');
    const b = await deferred(ses, relay, 'state-b@example.net');
    assert.equal((await queue(relay.spoolDir, 'hold', b)).code, 0);
    const r = await queue(relay.spoolDir, 'hold', a, b, 'NOSUCHID0-00000000', '--state', 'deferred');
    assert.equal(r.code, 1);
    assert.deepEqual(lines(r.stdout), [a]);
    assert.match(r.stderr, /NOSUCHID0-00000000: no such message in the spool/);
    assert.match(r.stderr, new RegExp(`${b}: not changed`));
    const all = await queue(relay.spoolDir, 'delete', '--all', '--state', 'held', '--json');
    assert.equal(all.code, 0, all.stderr);
    const result = JSON.parse(all.stdout) as { changed: string[] };
    assert.deepEqual(result.changed.sort(), [a, b].sort());
    for (const bad of [
      ['hold'],
      ['delete', '--all'],
      ['hold', a, '--all'],
      ['hold', a, '--state', 'delivered'],
    ]) {
      const u = await queue(relay.spoolDir, ...bad);
      assert.equal(u.code, 1, `${bad.join(' ')}: ${u.stderr}`);
    }
  });

  test('a message being delivered right now is changed once its SES transaction has ended', async () => {
    // SES takes 1.5 s to answer this one, then defers it.
    ses.queueRcpt('inflight@example.net', { delayMs: 1500, code: 451, message: '4.4.2 slow and sorry' });
    const id = await send(relay, 'inflight@example.net');
    await relay.waitForLog((l) => l.event === 'message:accepted' && l.queueId === id);
    await new Promise((r) => setTimeout(r, 300)); // the attempt is at SES now
    const r = await queue(relay.spoolDir, 'hold', id);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), [id]);
    const deferral = relay.logs.find((l) => l.event === 'message:deferred' && l.queueId === id);
    assert.ok(deferral, 'the attempt was settled before the hold was written');
    const shown = show(relay.spoolDir, id)!;
    assert.equal(shown.state, 'held');
    assert.match(shown.recipients[0].reply ?? '', /slow and sorry/, 'the attempt outcome is kept');
    assert.equal((await queue(relay.spoolDir, 'delete', id)).code, 0);
  });
});

describe('queue actions with no relay running, and held mail versus MAX_QUEUE_AGE', () => {
  test('the tool applies actions itself; a relay started after keeps them; time held does not expire mail', async () => {
    const ses = await startFakeSes();
    const env = { ...fakeSesEnv(ses.port), RETRY_SCHEDULE: '30s', MAX_QUEUE_AGE: '3s' };
    let relay = await startRelayProcess({ env });
    try {
      ses.queueRcpt('offline@example.net', FAKE_REPLIES.temporaryFailure);
      const id = await send(relay, 'offline@example.net');
      await relay.waitForLog((l) => l.event === 'message:deferred' && l.queueId === id);
      assert.equal(await stopRelayProcess(relay), 0);
      assert.ok(!fs.existsSync(path.join(relay.spoolDir, 'control.sock')), 'socket removed at stop');

      const held = await queue(relay.spoolDir, 'hold', id);
      assert.equal(held.code, 0, held.stderr);
      assert.deepEqual(lines(held.stdout), [id]);
      assert.equal((await queue(relay.spoolDir, 'hold', 'NOSUCHID0-00000000')).code, 1);

      // Held past MAX_QUEUE_AGE (3 s), across a restart: never leased, never expired.
      relay = await startRelayProcess({ env, spoolDir: relay.spoolDir });
      await new Promise((r) => setTimeout(r, 3500));
      assert.equal(show(relay.spoolDir, id)?.state, 'held');
      assert.equal(delivered(ses, 'offline@example.net').length, 0);
      const released = await queue(relay.spoolDir, 'release', id);
      assert.equal(released.code, 0, released.stderr);
      const line = await relay.waitForLog(
        (l) => (l.event === 'message:delivered' || l.event === 'message:expired') && l.queueId === id,
        10_000,
      );
      assert.equal(line.event, 'message:delivered', 'the time held is not counted by MAX_QUEUE_AGE');
    } finally {
      await stopRelayProcess(relay);
      await ses.close();
    }
  });
});
