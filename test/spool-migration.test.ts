/**
 * The shared vocabulary of states (src/types.ts) in the spool: a spool written by the first release
 * (test/fixtures/spool-v0, schema version 0) opens, is migrated in place and keeps every message; the
 * new CHECK constraints take exactly the words of src/types.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { silentLogger } from '../src/observability/logger';
import { SpoolInspector } from '../src/spool/spool-inspector';
import { SCHEMA_VERSION } from '../src/spool/spool-schema';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { RECIPIENT_STATES, STORED_MESSAGE_STATES } from '../src/types';
import { tempDir } from './helpers/relay-process';

const FIXTURE = path.join(__dirname, 'fixtures', 'spool-v0');
const IDS = {
  queued: '0MX55BD4J-ASOBQ0EH',
  deferred: '0MX55BD4K-BV2B5E9G',
  partial: '0MX55BD4L-ZA9C0IAG',
  failed: '0MX55BD4X-SWEDKL7B',
  large: '0MX55BD4Z-50IRTM7G',
};
const YEARS = 100 * 365 * 24 * 3600_000; // keep the fixture's failed message whatever today's date

function copyFixture(): string {
  const dir = tempDir('spool-v0-');
  fs.cpSync(FIXTURE, dir, { recursive: true });
  fs.rmSync(path.join(dir, 'README.md'));
  return dir;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

test('a spool of the first release is migrated in place and keeps its mail', async () => {
  const dir = copyFixture();
  // The inspector reads a stopped old spool by migrating its in-memory copy only.
  const before = SpoolInspector.open(dir);
  assert.equal(before.show(IDS.partial)?.state, 'deferred');
  before.close();
  const v0 = new Database(path.join(dir, 'spool.db'), { readonly: true });
  assert.equal(v0.pragma('user_version', { simple: true }), 0);
  v0.close();

  const spool = await SqliteSpool.open({ dir, logger: silentLogger, failedRetentionMs: YEARS });
  try {
    const counts = spool.counts();
    assert.deepEqual(
      { ...counts, oldestReceivedAt: undefined },
      {
        pending: 4,
        queued: 2,
        sending: 0,
        deferred: 2,
        held: 0,
        failed: 1,
        pendingRecipients: 5,
        oldestReceivedAt: undefined,
      },
    );
    const leased = spool.lease(10);
    assert.deepEqual(
      leased.map((m) => m.id).sort(),
      [IDS.queued, IDS.large].sort(),
      'deferred ones wait for 2030',
    );
    assert.deepEqual((await readAll(spool.openBody(IDS.large))).length, 5000);
    const later = spool.lease(10, Date.UTC(2030, 0, 1, 0, 0, 2));
    const partial = later.find((m) => m.id === IDS.partial);
    assert.deepEqual(partial?.envelope.recipients, ['later@example.com']);
    assert.equal(partial?.attempts, 1);
    assert.equal(
      await spool.settle(IDS.partial, [{ recipient: 'later@example.com', status: 'delivered', code: 250 }]),
      'delivered',
    );
    assert.equal(spool.listFailed()[0]?.id, IDS.failed);
  } finally {
    await spool.close();
  }
  const db = new Database(path.join(dir, 'spool.db'), { readonly: true });
  try {
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    const states = db.prepare('SELECT id, state FROM messages ORDER BY id').all();
    assert.deepEqual(states, [
      { id: IDS.queued, state: 'queued' },
      { id: IDS.deferred, state: 'deferred' },
      { id: IDS.failed, state: 'failed' },
      { id: IDS.large, state: 'queued' },
    ]);
    const recipients = db
      .prepare('SELECT recipient, status FROM recipients WHERE message_id = ? ORDER BY position')
      .all(IDS.deferred);
    assert.deepEqual(recipients, [
      { recipient: 'd1@example.com', status: 'deferred' },
      { recipient: 'd2@example.com', status: 'deferred' },
    ]);
  } finally {
    db.close();
  }
  // Reopening a migrated spool migrates nothing and keeps everything.
  const again = await SqliteSpool.open({ dir, logger: silentLogger, failedRetentionMs: YEARS });
  assert.equal(again.counts().pending, 3);
  await again.close();
});

test('the CHECK constraints take exactly the states of src/types.ts', async () => {
  const dir = tempDir();
  const spool = await SqliteSpool.open({ dir, logger: silentLogger });
  const id = await spool.store(
    { mailFrom: '', recipients: ['a@x.test'] },
    Readable.from([Buffer.from('x')]),
    { clientAddress: '127.0.0.1' },
  );
  await spool.close();
  const db = new Database(path.join(dir, 'spool.db'));
  try {
    for (const state of STORED_MESSAGE_STATES)
      db.prepare('UPDATE messages SET state = ? WHERE id = ?').run(state, id);
    for (const state of RECIPIENT_STATES) db.prepare('UPDATE recipients SET status = ?').run(state);
    for (const word of ['pending', 'leased', 'sending', 'delivered', 'QUEUED']) {
      assert.throws(
        () => db.prepare('UPDATE messages SET state = ? WHERE id = ?').run(word, id),
        /CHECK/,
        word,
      );
    }
    for (const word of ['pending', 'sending', 'QUEUED']) {
      assert.throws(() => db.prepare('UPDATE recipients SET status = ?').run(word), /CHECK/, word);
    }
  } finally {
    db.close();
  }
});

test('a spool written by a newer schema is refused, not misread', async () => {
  const dir = tempDir();
  await (await SqliteSpool.open({ dir, logger: silentLogger })).close();
  const db = new Database(path.join(dir, 'spool.db'));
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db.close();
  await assert.rejects(
    SqliteSpool.open({ dir, logger: silentLogger }),
    /written by a newer ses-email-service/,
  );
  // ...and the refusal released the spool lock: a fixed version could open it right away.
  fs.rmSync(path.join(dir, 'spool.db'));
  await (await SqliteSpool.open({ dir, logger: silentLogger })).close();
});
