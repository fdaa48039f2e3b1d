/**
 * Crash safety: a child process stores messages and prints each acknowledged queue id; we SIGKILL it
 * mid-run, reopen the spool and check that every acknowledged message is there with its exact body,
 * and that nothing half-written (temporary or orphan body files) survives recovery.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { silentLogger } from '../src/observability/logger';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { CRASH_CHILD_INLINE_MAX, crashBodyFor, crashRecipientFor } from './helpers/spool-crash-child';

const KILL_AFTER_ACKS = 400;

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

for (const round of [1, 2]) {
  test(`every acknowledged message survives SIGKILL (round ${round})`, { timeout: 40_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-crash-'));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(__dirname, 'helpers', 'spool-crash-child.ts'), dir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    after(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));

    const acked = new Map<string, number>();
    let buffered = '';
    let killed = false;
    // Kill after a random extra delay so the kill lands at different points of the write path.
    const extraDelayMs = Math.floor(Math.random() * 30);
    child.stdout.on('data', (data: Buffer) => {
      buffered += data.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        const [seq, id] = line.split(' ');
        if (id) acked.set(id, Number(seq));
      }
      if (!killed && acked.size >= KILL_AFTER_ACKS) {
        killed = true;
        setTimeout(() => child.kill('SIGKILL'), extraDelayMs);
      }
    });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.on('close', (c, s) => resolve([c, s])),
    );
    // Lines still in the pipe when the child died were acknowledged too.
    for (const line of buffered.split('\n')) {
      const [seq, id] = line.split(' ');
      if (id) acked.set(id, Number(seq));
    }
    assert.equal(signal, 'SIGKILL', `child ended by itself (code ${code}): ${stderr}`);
    assert.ok(acked.size >= KILL_AFTER_ACKS, `only ${acked.size} acknowledged`);

    const spool = await SqliteSpool.open({
      dir,
      logger: silentLogger,
      inlineBodyMaxBytes: CRASH_CHILD_INLINE_MAX,
    });
    after(() => spool.close());
    const leftovers = fs.readdirSync(path.join(dir, 'bodies')).filter((name) => !name.endsWith('.eml'));
    assert.deepEqual(leftovers, [], 'no temporary body files after recovery');

    const counts = spool.counts();
    assert.ok(counts.pending >= acked.size, `${counts.pending} pending < ${acked.size} acknowledged`);
    const leased = new Map(spool.lease(counts.pending + 10).map((m) => [m.id, m]));
    assert.equal(leased.size, counts.pending);
    let fileBodies = 0;
    for (const [id, seq] of acked) {
      const message = leased.get(id);
      assert.ok(message, `acknowledged message ${id} (seq ${seq}) is missing`);
      assert.deepEqual(message.envelope.recipients, [crashRecipientFor(seq)]);
      const expected = crashBodyFor(seq);
      assert.equal(message.size, expected.length);
      const actual = await readAll(spool.openBody(id));
      assert.ok(actual.equals(expected), `body of ${id} (seq ${seq}) differs`);
      if (expected.length > CRASH_CHILD_INLINE_MAX) fileBodies += 1;
    }
    assert.ok(fileBodies > 0, 'the run covered file bodies');
    // Every recovered message (acknowledged or not) is complete: its body file exists if it has one.
    for (const message of leased.values()) {
      const body = await readAll(spool.openBody(message.id));
      assert.equal(body.length, message.size);
    }
  });
}
