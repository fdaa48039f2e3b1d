import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import {
  SpoolInspector,
  SpoolUnreadableError,
  type MessageDetail,
  type QueueEntry,
} from '../src/spool/spool-inspector';
import { SqliteSpool } from '../src/spool/sqlite-spool';

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'src', 'cli', 'queue.ts');
const HOUR = 3600_000;

interface Run {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Run the CLI as a child process, as an operator would (never rejects). */
function runCli(spoolDir: string, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', CLI, ...args],
      {
        cwd: ROOT,
        env: { ...process.env, SPOOL_DIR: spoolDir },
        encoding: 'buffer',
        maxBuffer: 16 * 1024 * 1024,
        timeout: 30_000,
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr: stderr.toString('utf8') });
      },
    );
  });
}

const text = (r: Run): string => r.stdout.toString('utf8');

/** Every file under dir with its SHA-256, to prove inspection changed nothing. */
function fingerprint(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) walk(full);
      else out[path.relative(dir, full)] = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
    }
  };
  walk(dir);
  return out;
}

describe('queue inspection (SpoolInspector and the queue CLI)', () => {
  let dir: string;
  const ids = { pending: '', deferred: '', partial: '', failed: '', large: '' };
  const smallBody = Buffer.from('Subject: small\r\n\r\nhello\r\n');
  const largeBody = Buffer.alloc(300 * 1024, 'x'); // above the 256 KiB inline limit: stored as a file
  const reception = { clientAddress: '192.0.2.10', heloName: 'client.example', authUser: 'app' };
  let retryDeferred = 0;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'queue-cli-'));
    const spool = await SqliteSpool.open({ dir });
    const store = (from: string, rcpts: string[], body: Buffer) =>
      spool.store({ mailFrom: from, recipients: rcpts }, Readable.from([body]), reception);
    ids.pending = await store('a@sender.example', ['p1@example.com'], smallBody);
    ids.deferred = await store('b@sender.example', ['d1@example.com', 'd2@example.com'], smallBody);
    ids.partial = await store('c@sender.example', ['ok@example.com', 'later@example.com'], smallBody);
    ids.failed = await store('', ['gone@example.com', 'fine@example.com'], smallBody);
    ids.large = await store('big@sender.example', ['l1@example.com'], largeBody);

    const leased = spool.lease(10).map((m) => m.id);
    assert.equal(leased.length, 5);
    retryDeferred = Date.now() + HOUR;
    await spool.settle(
      ids.deferred,
      [
        { recipient: 'd1@example.com', status: 'deferred', code: 454, reply: '454 Throttling failure' },
        { recipient: 'd2@example.com', status: 'deferred', code: 454, reply: '454 Throttling failure' },
      ],
      { retryAt: retryDeferred },
    );
    await spool.settle(
      ids.partial,
      [
        { recipient: 'ok@example.com', status: 'delivered', code: 250, reply: '250 Ok 0100abc' },
        { recipient: 'later@example.com', status: 'deferred', code: 451, reply: '451 4.4.2 timeout' },
      ],
      { retryAt: Date.now() + 2 * HOUR },
    );
    assert.equal(
      await spool.settle(ids.failed, [
        { recipient: 'gone@example.com', status: 'failed', code: 550, reply: '550 5.1.1 user unknown' },
        { recipient: 'fine@example.com', status: 'delivered', code: 250, reply: '250 Ok' },
      ]),
      'failed',
    );
    spool.release(ids.pending);
    spool.release(ids.large);
    await spool.close();
  });

  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('summary, list, show and body through the API on a stopped spool', () => {
    const before = fingerprint(dir);
    const inspector = SpoolInspector.open(dir);
    try {
      assert.equal(inspector.mode, 'snapshot');
      const s = inspector.summary();
      assert.deepEqual(s.messages, { queued: 2, deferred: 2, held: 0, failed: 1 });
      assert.equal(s.waitingMessages, 4);
      assert.equal(s.waitingRecipients, 1 + 2 + 1 + 1);
      assert.deepEqual(s.recipients, {
        queued: 2,
        deferred: 3,
        delivered: 2,
        failed: 1,
        suppressed: 0,
        expired: 0,
      });
      assert.equal(s.bodiesInFiles, 1);
      assert.equal(s.bodyBytes, 4 * smallBody.length + largeBody.length);
      assert.ok(s.oldestWaitingAgeMs !== undefined && s.oldestWaitingAgeMs >= 0);

      const waiting = inspector.list();
      assert.deepEqual(
        waiting.map((e) => e.id),
        [ids.pending, ids.deferred, ids.partial, ids.large],
      );
      assert.deepEqual(
        waiting.map((e) => e.state),
        ['queued', 'deferred', 'deferred', 'queued'],
      );
      assert.equal(inspector.list({ limit: 2 }).length, 2);
      assert.deepEqual(
        inspector.list({ state: 'queued' }).map((e) => e.id),
        [ids.pending, ids.large],
      );
      assert.deepEqual(inspector.list({ state: 'held' }), []);
      const deferred = inspector.list({ state: 'deferred' });
      assert.deepEqual(
        deferred.map((e) => e.id),
        [ids.deferred, ids.partial],
      );
      const d = deferred[0];
      assert.equal(d.nextAttemptAt, retryDeferred);
      assert.equal(d.attempts, 1);
      assert.equal(d.waitingRecipients, 2);
      assert.equal(d.lastCode, 454);
      assert.equal(d.lastReply, '454 Throttling failure');
      const partial = deferred[1];
      assert.equal(partial.recipients, 2);
      assert.equal(partial.waitingRecipients, 1);
      assert.equal(partial.lastReply, '451 4.4.2 timeout'); // the pending recipient's reply comes first
      const failed = inspector.list({ state: 'failed' });
      assert.equal(failed.length, 1);
      assert.equal(failed[0].id, ids.failed);
      assert.equal(failed[0].mailFrom, '');
      assert.equal(failed[0].failedRecipients, 1);
      assert.equal(failed[0].lastCode, 550);
      assert.ok(failed[0].finishedAt !== undefined && failed[0].nextAttemptAt === undefined);

      const shown = inspector.show(ids.partial) as MessageDetail;
      assert.equal(shown.state, 'deferred');
      assert.deepEqual(shown.envelope, {
        mailFrom: 'c@sender.example',
        recipients: ['ok@example.com', 'later@example.com'],
      });
      assert.deepEqual(shown.recipients, [
        { recipient: 'ok@example.com', status: 'delivered', code: 250, reply: '250 Ok 0100abc' },
        { recipient: 'later@example.com', status: 'deferred', code: 451, reply: '451 4.4.2 timeout' },
      ]);
      assert.equal(shown.reception.authUser, 'app');
      assert.deepEqual(shown.body, { storage: 'inline' });
      assert.equal(shown.size, smallBody.length);
      const large = inspector.show(ids.large) as MessageDetail;
      assert.equal(large.body.storage, 'file');
      assert.equal(inspector.show('NOSUCHID0-00000000'), undefined);

      assert.deepEqual(inspector.body(ids.pending), smallBody);
      assert.deepEqual(inspector.body(ids.large), largeBody);
      assert.equal(inspector.body('NOSUCHID0-00000000'), undefined);
    } finally {
      inspector.close();
    }
    assert.deepEqual(fingerprint(dir), before, 'inspection changed no file and created none');
  });

  test('the CLI: tables, --json, body bytes and exit codes; the spool is untouched', async () => {
    const before = fingerprint(dir);

    const summary = await runCli(dir, 'summary');
    assert.equal(summary.code, 0, summary.stderr);
    assert.match(text(summary), /^queued: +2 messages/m);
    assert.match(text(summary), /^deferred: +2 messages/m);
    assert.match(text(summary), /^held: +0 messages/m);
    assert.match(text(summary), /^failed: +1 messages/m);
    assert.match(text(summary), /^waiting: +4 messages, 5 recipients$/m);
    assert.match(
      text(summary),
      /^recipients: queued 2, deferred 3, delivered 2, failed 1, suppressed 0, expired 0$/m,
    );
    const summaryJson = JSON.parse(text(await runCli(dir, 'summary', '--json'))) as {
      messages: { failed: number };
    };
    assert.equal(summaryJson.messages.failed, 1);

    const list = await runCli(dir, 'list');
    assert.equal(list.code, 0, list.stderr);
    const lines = text(list).trimEnd().split('\n');
    assert.match(
      lines[0],
      /^QUEUE-ID +STATE +AGE +RECEIVED +FROM +TENANT +RCPT +WAITING +FAILED +TRIES +NEXT-ATTEMPT +LAST-REPLY$/,
    );
    assert.equal(lines.length, 5);
    assert.match(lines[1], new RegExp(`^${ids.pending} +queued `));
    const deferredJson = JSON.parse(text(await runCli(dir, 'list', 'deferred', '--json'))) as QueueEntry[];
    assert.deepEqual(
      deferredJson.map((e) => e.id),
      [ids.deferred, ids.partial],
    );
    const limited = JSON.parse(
      text(await runCli(dir, 'list', 'queued', '--limit', '1', '--json')),
    ) as QueueEntry[];
    assert.equal(limited.length, 1);
    const failed = await runCli(dir, 'list', 'failed');
    assert.match(text(failed), /FINISHED/);
    assert.match(text(failed), /<> .* 550 5\.1\.1 user unknown$/m);

    const show = await runCli(dir, 'show', ids.failed);
    assert.equal(show.code, 0, show.stderr);
    assert.match(text(show), /^state: +failed$/m);
    assert.match(text(show), /gone@example\.com +failed +550 +550 5\.1\.1 user unknown/);
    assert.match(text(show), /fine@example\.com +delivered +250/);
    const showJson = JSON.parse(text(await runCli(dir, 'show', ids.large, '--json'))) as MessageDetail;
    assert.equal(showJson.body.storage, 'file');
    assert.equal(showJson.size, largeBody.length);

    const body = await runCli(dir, 'body', ids.large);
    assert.equal(body.code, 0, body.stderr);
    assert.ok(body.stdout.equals(largeBody), 'file body bytes on stdout');
    assert.ok((await runCli(dir, 'body', ids.pending)).stdout.equals(smallBody), 'inline body bytes');

    const missing = await runCli(dir, 'show', 'NOSUCHID0-00000000');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no message NOSUCHID0-00000000/);
    assert.equal((await runCli(dir, 'body', 'NOSUCHID0-00000000')).code, 1);
    const pendingWord = await runCli(dir, 'list', 'pending');
    assert.equal(pendingWord.code, 1, 'the old filter word is gone');
    assert.match(pendingWord.stderr, /list takes queued, deferred, held, failed/);
    for (const bad of [[], ['frobnicate'], ['list', 'bogus'], ['list', '--limit', '0'], ['show']]) {
      const r = await runCli(dir, ...bad);
      assert.equal(r.code, 1, `usage error for ${bad.join(' ')}`);
      assert.match(r.stderr, /usage: queue/);
    }

    const nowhere = path.join(dir, 'does-not-exist');
    const absent = await runCli(nowhere, 'summary');
    assert.equal(absent.code, 2);
    assert.equal(absent.stderr.trim().split('\n').length, 1);
    assert.match(absent.stderr, /no spool at .*does-not-exist \(spool\.db not found; check SPOOL_DIR\)/);
    assert.equal(fs.existsSync(nowhere), false, 'nothing created for a missing spool');
    assert.throws(() => SpoolInspector.open(nowhere), SpoolUnreadableError);

    assert.deepEqual(fingerprint(dir), before, 'the CLI changed no file and created none');
  });

  test('inspects while a SqliteSpool has the spool open (concurrent reader)', async () => {
    const spool = await SqliteSpool.open({ dir });
    try {
      const counts = spool.counts();
      const inspector = SpoolInspector.open(dir);
      try {
        assert.equal(inspector.mode, 'live');
        assert.equal(inspector.summary().waitingMessages, counts.pending);
        // A message committed by the relay while the inspector is open is visible to its next query.
        const id = await spool.store(
          { mailFrom: 'new@sender.example', recipients: ['n@example.com'] },
          Readable.from([smallBody]),
          reception,
        );
        assert.equal(inspector.summary().waitingMessages, counts.pending + 1);
        assert.equal(inspector.show(id)?.envelope.mailFrom, 'new@sender.example');

        const cli = await runCli(dir, 'summary', '--json');
        assert.equal(cli.code, 0, cli.stderr);
        assert.equal(
          (JSON.parse(text(cli)) as { waitingMessages: number }).waitingMessages,
          counts.pending + 1,
        );
        assert.equal((await runCli(dir, 'show', id)).code, 0);

        // The relay keeps writing while a reader is open: lease and settle go through.
        const leased = spool.lease(10).map((m) => m.id);
        assert.ok(leased.includes(id));
        leased.filter((m) => m !== id).forEach((m) => spool.release(m));
        assert.equal(
          await spool.settle(id, [{ recipient: 'n@example.com', status: 'delivered' }]),
          'delivered',
        );
        assert.equal(inspector.show(id), undefined);
      } finally {
        inspector.close();
      }
      const after = spool.counts();
      assert.equal(after.pending, counts.pending);
      assert.equal(after.failed, counts.failed);
      assert.equal(after.pendingRecipients, counts.pendingRecipients);
    } finally {
      await spool.close();
    }
  });
});
