/**
 * Reliability suite: kill soak. One spool, one fake SES, and the relay killed with SIGKILL at seeded
 * random moments while clients are submitting mail (ingress) and the relay is delivering a backlog
 * (egress), restarted after each kill (a round submits 10-60 messages and is killed 150-1350 ms after
 * the relay is ready, so some kills land during submission and some during delivery alone). Messages carry 1-7 recipients with SES_BURST=3, so many go out in
 * several transactions. At the end:
 * - every recipient of every acknowledged message reached SES (0 lost);
 * - duplicates are bounded by what was in flight at the kills: each kill can re-send at most
 *   SES_POOL_SIZE transactions (one per upstream connection), each of at most SES_BURST recipients.
 * The figures are printed. Seed: KILL_SOAK_SEED (default 8).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { startFakeSes } from './helpers/fake-ses';
import {
  fakeSesEnv,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
  type RelayProcess,
} from './helpers/relay-process';
import { markerOf, numberedMessage } from './helpers/mail';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();
const SEED = Number(process.env.KILL_SOAK_SEED ?? 8);
const KILLS = 20;
const POOL_SIZE = 4;
const BURST = 3;
const SUBMITTERS = 4;

/** mulberry32: a small seeded PRNG, so a failing run can be replayed with its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Acked {
  marker: string;
  recipients: string[];
}

/** Submit up to `count` numbered messages to `relay` until `stop()` is true; every 250 lands in `acked`. */
async function submit(
  relay: RelayProcess,
  random: () => number,
  count: number,
  next: () => number,
  acked: Acked[],
  stopped: () => boolean,
): Promise<void> {
  let left = count;
  const client = nodemailer.createTransport({
    host: '127.0.0.1',
    port: relay.smtpPort,
    secure: false,
    ignoreTLS: true,
    pool: true,
    maxConnections: SUBMITTERS,
    connectionTimeout: 5000,
    socketTimeout: 5000,
  });
  try {
    await Promise.all(
      Array.from({ length: SUBMITTERS }, async () => {
        while (!stopped() && left-- > 0) {
          const n = next();
          const marker = `soak-${n}`;
          const recipients = Array.from(
            { length: 1 + Math.floor(random() * 7) },
            (_, i) => `r${i}-${n}@example.net`,
          );
          try {
            await client.sendMail(numberedMessage(marker, recipients));
            acked.push({ marker, recipients });
          } catch {
            if (relay.child.exitCode !== null || relay.child.signalCode !== null) return; // killed
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      }),
    );
  } finally {
    client.close();
  }
}

test(
  `kill soak: ${KILLS} kill -9s during ingress and delivery lose nothing acknowledged`,
  { timeout: 180_000 },
  async (t) => {
    const started = Date.now();
    const random = prng(SEED);
    const ses = await startFakeSes();
    cleanups.push(() => ses.close());
    // Slow SES answers keep transactions in flight when the kills land.
    ses.script((ctx) => (ctx.phase === 'data' ? { delayMs: 10 + Math.floor(random() * 40) } : undefined));
    const spoolDir = tempDir('kill-soak-');
    const env = {
      ...fakeSesEnv(ses.port),
      SES_RATE_LIMIT: '300',
      SES_BURST: String(BURST),
      SES_POOL_SIZE: String(POOL_SIZE),
      RETRY_SCHEDULE: '200ms',
    };
    const acked: Acked[] = [];
    let counter = 0;
    const next = () => counter++;
    let kills = 0;
    for (let round = 0; round < KILLS; round++) {
      const relay = await startRelayProcess({ spoolDir, env, timeoutMs: 30_000 });
      cleanups.push(() => stopRelayProcess(relay));
      let stop = false;
      // Up to 60 messages a round: the round's kill lands during submission or, once they are in, during
      // delivery of the backlog alone.
      const submitting = submit(relay, random, 10 + Math.floor(random() * 50), next, acked, () => stop);
      // A random moment: early (start-up recovery and first deliveries) to late (a backlog in full flow).
      await new Promise((r) => setTimeout(r, 150 + Math.floor(random() * 1200)));
      relay.kill('SIGKILL');
      kills += 1;
      assert.equal(await relay.exited, 'SIGKILL');
      stop = true;
      await submitting;
    }
    // A last start delivers whatever is left.
    const last = await startRelayProcess({ spoolDir, env, timeoutMs: 30_000 });
    cleanups.push(() => stopRelayProcess(last));
    const key = (marker: string, rcpt: string) => `${marker} ${rcpt}`;
    const deliveries = new Map<string, number>();
    let duplicateTransactions = 0;
    let seen = 0;
    const tally = () => {
      for (; seen < ses.messages.length; seen++) {
        const m = ses.messages[seen];
        const marker = markerOf(m.body) ?? '?';
        const keys = m.recipients.map((r) => key(marker, r));
        if (keys.every((k) => deliveries.has(k))) duplicateTransactions += 1;
        for (const k of keys) deliveries.set(k, (deliveries.get(k) ?? 0) + 1);
      }
    };
    const wanted = acked.flatMap((a) => a.recipients.map((r) => key(a.marker, r)));
    await ses
      .waitFor(() => {
        tally();
        return wanted.every((k) => deliveries.has(k));
      }, 60_000)
      .catch(() => undefined);
    tally();
    assert.equal(await stopRelayProcess(last), 0);
    tally();

    const lost = wanted.filter((k) => !deliveries.has(k));
    const duplicates = [...deliveries.values()].reduce((sum, n) => sum + n - 1, 0);
    const ackedMarkers = new Set(acked.map((a) => a.marker));
    const unacknowledgedDelivered = new Set(
      [...deliveries.keys()].map((k) => k.split(' ')[0]).filter((m) => !ackedMarkers.has(m)),
    ).size;
    const boundTransactions = kills * POOL_SIZE;
    const figures =
      `seed ${SEED}: ${kills} kill -9s in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
      `${acked.length} messages acknowledged (${wanted.length} recipients); ` +
      `${ses.messages.length} SES transactions, ${deliveries.size} recipients delivered; ` +
      `lost ${lost.length}; duplicate recipient deliveries ${duplicates} in ${duplicateTransactions} re-sent ` +
      `transactions (bound: ${kills} kills x ${POOL_SIZE} in flight = ${boundTransactions} transactions, ` +
      `${boundTransactions * BURST} recipients); ${unacknowledgedDelivered} messages delivered whose 250 the kill cut off`;
    t.diagnostic(figures);
    console.log(`kill soak: ${figures}`);
    assert.ok(acked.length >= KILLS * 5, `the soak submitted too little: ${acked.length} acknowledged`);
    assert.deepEqual(lost.slice(0, 10), [], `${lost.length} acknowledged recipients lost`);
    assert.ok(duplicateTransactions <= boundTransactions, `${duplicateTransactions} re-sent transactions`);
    assert.ok(duplicates <= boundTransactions * BURST, `${duplicates} duplicate deliveries`);
  },
);
