/**
 * Reliability suite: a real full disk. As root, SPOOL_DIR is a small tmpfs (`mount -t tmpfs -o size=...`)
 * that the test fills with a filler file while the relay runs with acknowledged mail still to deliver:
 * - clients get `452 4.3.1` and nothing of their message is kept (no row, no body file);
 * - no delivery storm: each acknowledged message reaches SES at most once while the disk is full (the old
 *   relay sent one message 121 times in 10 s), and delivery pauses;
 * - the relay stays up; `/readyz` answers 503 with `"spool": "failing"`; `ses_relay_spool_writable` is 0.
 * Then `mount -o remount,size=...` makes room: the relay resumes by itself, accepts mail again, and every
 * acknowledged message reaches SES exactly once. Skipped loudly when not root or mount is not permitted.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import nodemailer from 'nodemailer';
import { startFakeSes } from './helpers/fake-ses';
import {
  fakeSesEnv,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
} from './helpers/relay-process';
import { markerOf, numberedMessage } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function skipLoudly(t: TestContext, reason: string): void {
  console.error(`\n*** SKIPPED ${t.name}: ${reason} ***\n`);
  t.skip(reason);
}

/** Mount a tmpfs of `size` on a new directory; the reason it cannot, if it cannot. */
function mountTmpfs(size: string): { dir: string } | { reason: string } {
  if (process.getuid?.() !== 0) return { reason: 'needs root to mount a tmpfs' };
  const dir = tempDir('disk-full-');
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0)
    return { reason: `mount -t tmpfs is not permitted here: ${(r.stderr || r.error?.message) ?? ''}`.trim() };
  return { dir };
}

/** Fill the file system holding `dir` to the last byte; returns the bytes written. */
function fill(dir: string): number {
  const fd = fs.openSync(path.join(dir, 'filler'), 'a');
  const chunk = Buffer.alloc(64 * 1024, 0x55);
  let written = 0;
  try {
    for (let size = chunk.length; size >= 512;) {
      try {
        written += fs.writeSync(fd, chunk, 0, size);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        size = Math.floor(size / 2);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return written;
}

async function send(port: number, marker: string, extra = ''): Promise<{ ok: boolean; response: string }> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await client.sendMail(numberedMessage(marker, [`${marker}@example.net`], extra));
    return { ok: true, response: info.response };
  } catch (err) {
    return { ok: false, response: (err as { response?: string }).response ?? String(err) };
  } finally {
    client.close();
  }
}

test(
  'a full disk: 452 4.3.1, no delivery storm, /readyz failing; room again: everything once',
  { timeout: 120_000 },
  async (t) => {
    const mounted = mountTmpfs('6m');
    if ('reason' in mounted) return skipLoudly(t, mounted.reason);
    const mnt = mounted.dir;
    cleanups.push(() => {
      spawnSync('umount', ['-l', mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    });
    const ses = await startFakeSes();
    cleanups.push(() => ses.close());
    // SES defers (451) until we let it accept: the acknowledged mail waits in the spool meanwhile.
    let sesAccepts = false;
    ses.script((ctx) =>
      ctx.phase === 'data' && !sesAccepts ? { code: 451, message: '4.4.2 try later' } : undefined,
    );
    const spoolDir = path.join(mnt, 'queue');
    const relay = await startRelayProcess({
      spoolDir,
      env: { ...fakeSesEnv(ses.port), SES_RATE_LIMIT: '50', RETRY_SCHEDULE: '300ms' },
    });
    cleanups.push(() => stopRelayProcess(relay));
    const readyz = async () => {
      const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`);
      return { status: res.status, body: (await res.json()) as { checks: Record<string, string> } };
    };

    const acked: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await send(relay.smtpPort, `before-${i}`);
      assert.ok(r.ok, r.response);
      acked.push(`before-${i}`);
    }
    await relay.waitForLog((l) => l.event === 'message:deferred');

    // The disk fills up; SES starts accepting.
    const filler = fill(mnt);
    sesAccepts = true;
    const refused: string[] = [];
    for (let i = 0; i < 6; i++) {
      // Small (inline) and large (a body file of 300 KiB) messages.
      const marker = `full-${i}`;
      const r = await send(relay.smtpPort, marker, i % 2 ? 'x'.repeat(300 * 1024) : '');
      if (r.ok) acked.push(marker);
      else {
        assert.match(r.response, /^452 4\.3\.1 /, r.response);
        refused.push(marker);
      }
    }
    await sleep(3000);
    const perMarker = () => {
      const counts = new Map<string, number>();
      for (const m of ses.messages)
        counts.set(markerOf(m.body) ?? '?', (counts.get(markerOf(m.body) ?? '?') ?? 0) + 1);
      return counts;
    };
    const during = perMarker();
    const deliveredDuring = ses.messages.length;
    const health = await readyz();
    const metrics = await relay.metrics();
    const writableGauge = metricValue(metrics, 'ses_relay_spool_writable');
    const writeErrors = metricValue(metrics, 'ses_relay_spool_write_errors_total');
    t.diagnostic(
      `disk full (${(filler / 1024).toFixed(0)} KiB filler): ${refused.length} of 6 new messages refused with 452 4.3.1; ` +
        `${deliveredDuring} SES deliveries in 3 s of ${acked.length} acknowledged messages, at most ` +
        `${Math.max(0, ...during.values())} per message; /readyz ${health.status} ${JSON.stringify(health.body.checks)}; ` +
        `ses_relay_spool_writable ${writableGauge}; spool write errors ${writeErrors}`,
    );
    assert.ok(refused.length > 0, 'the full disk refused new mail');
    assert.ok(
      [...during.values()].every((n) => n === 1),
      `no message went to SES twice while the disk was full: ${JSON.stringify([...during])}`,
    );
    assert.equal(relay.child.exitCode, null, 'the relay stays up');
    assert.equal(health.status, 503);
    assert.equal(health.body.checks.spool, 'failing');
    assert.equal(writableGauge, 0);

    // Room again: the relay resumes by itself.
    assert.equal(spawnSync('mount', ['-o', 'remount,size=64m', mnt]).status, 0, 'remount larger');
    const after = await send(relay.smtpPort, 'after-0');
    assert.ok(after.ok, after.response);
    acked.push('after-0');
    await ses.waitFor(() => acked.every((m) => perMarker().has(m)), 30_000);
    await sleep(500);
    const final = perMarker();
    const twice = [...final].filter(([, n]) => n > 1);
    t.diagnostic(
      `after remount: ${acked.length} acknowledged, ${ses.messages.length} SES deliveries, ` +
        `${twice.length} delivered twice, ${refused.filter((m) => final.has(m)).length} refused ones delivered`,
    );
    assert.deepEqual(twice, [], 'every acknowledged message exactly once');
    assert.deepEqual(
      acked.filter((m) => final.get(m) !== 1),
      [],
    );
    assert.deepEqual(
      refused.filter((m) => final.has(m)),
      [],
      'nothing refused was kept',
    );
    assert.deepEqual(
      fs.readdirSync(path.join(spoolDir, 'bodies')).filter((f) => !f.endsWith('.eml')),
      [],
      'no half-stored body files',
    );
    assert.equal((await readyz()).status, 200);
    assert.equal(metricValue(await relay.metrics(), 'ses_relay_spool_writable'), 1);
    assert.equal(await stopRelayProcess(relay), 0);
  },
);
