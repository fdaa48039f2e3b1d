/**
 * One relay per SPOOL_DIR (issue 8): a second relay on the same spool would lease the same rows and could
 * delete the first one's uncommitted body files. The spool holds `spool.lock` with flock; a second process
 * exits with one clear line and a non-zero code, the read-only queue inspector still works beside the
 * relay, and a kill -9 leaves no stale lock behind.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { silentLogger } from '../src/observability/logger';
import { SpoolLockedError } from '../src/spool/spool-lock';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { startFakeSes } from './helpers/fake-ses';
import { fakeSesEnv, ROOT, startRelayProcess, stopRelayProcess, tempDir } from './helpers/relay-process';
import { markerOf, sendMany } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();

function queueCli(spoolDir: string, ...args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(ROOT, 'dist', 'cli', 'queue.js'), ...args],
      { env: { PATH: process.env.PATH, SPOOL_DIR: spoolDir }, timeout: 20_000 },
      (err, stdout) => resolve({ code: err ? Number(err.code ?? -1) : 0, stdout }),
    );
  });
}

test('a second relay on the same SPOOL_DIR exits with one clear line; the first goes on', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const spoolDir = tempDir();
  const env = fakeSesEnv(ses.port);
  const first = await startRelayProcess({ spoolDir, env });
  cleanups.push(() => stopRelayProcess(first));

  const second = await startRelayProcess({ spoolDir, env, waitReady: false });
  cleanups.push(() => stopRelayProcess(second));
  const code = await second.exited;
  assert.equal(code, 1, 'non-zero exit');
  const lines = second.stderr().trim().split('\n');
  assert.deepEqual(lines, [
    `ses-email-service: start failed: spool ${fs.realpathSync(spoolDir)} is in use by another process (pid ${first.child.pid})`,
  ]);
  assert.ok(!second.logs.some((l) => l.event === 'relay:ready'));

  // The first relay is untouched: it takes and delivers mail, and the inspector reads beside it.
  const results = await sendMany(first.smtpPort, 5, { prefix: 'locked' });
  assert.deepEqual(
    results.filter((r) => r.error),
    [],
  );
  await ses.waitFor(5, 10_000);
  assert.deepEqual(
    ses.messages.map((m) => markerOf(m.body)).sort(),
    [0, 1, 2, 3, 4].map((i) => `locked-${i}`),
  );
  const summary = await queueCli(spoolDir, 'summary', '--json');
  assert.equal(summary.code, 0);
  assert.equal((JSON.parse(summary.stdout) as { waitingMessages: number }).waitingMessages, 0);

  // kill -9 leaves no stale lock: a new relay starts on the spool at once.
  first.kill('SIGKILL');
  await first.exited;
  const third = await startRelayProcess({ spoolDir, env });
  cleanups.push(() => stopRelayProcess(third));
  assert.equal(await stopRelayProcess(third), 0);
});

test('in one process too: a second open is refused until the first closes', async () => {
  const dir = tempDir();
  const spool = await SqliteSpool.open({ dir, logger: silentLogger });
  await assert.rejects(SqliteSpool.open({ dir, logger: silentLogger }), (err: unknown) => {
    assert.ok(err instanceof SpoolLockedError);
    assert.equal(err.pid, process.pid);
    assert.equal(
      String(err),
      `spool ${fs.realpathSync(dir)} is in use by another process (pid ${process.pid})`,
    );
    return true;
  });
  assert.equal(spool.counts().pending, 0, 'the refused open did not disturb the open spool');
  await spool.close();
  await (await SqliteSpool.open({ dir, logger: silentLogger })).close();
});

test("why flock: SQLite's locking_mode=EXCLUSIVE (WAL) would also shut out the read-only inspector", () => {
  const dir = tempDir();
  const file = path.join(dir, 'x.db');
  const db = new Database(file);
  db.pragma('locking_mode = EXCLUSIVE');
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE t (a); INSERT INTO t VALUES (1)');
  const probe = (readonly: boolean) =>
    execFileSync(
      process.execPath,
      [
        '-e',
        `const D = require('better-sqlite3');
         try {
           const c = new D(${JSON.stringify(file)}, { readonly: ${readonly}, fileMustExist: true });
           c.pragma('busy_timeout = 100');
           c.prepare('SELECT count(*) FROM t').get();
           console.log('ok');
         } catch (e) { console.log(e.code); }`,
      ],
      { cwd: ROOT },
    )
      .toString()
      .trim();
  try {
    assert.equal(probe(false), 'SQLITE_BUSY', 'a second writer is excluded...');
    assert.equal(probe(true), 'SQLITE_BUSY', '...and so is a reader: the queue CLI could not work');
  } finally {
    db.close();
  }
});
