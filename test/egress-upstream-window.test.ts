/**
 * Arrivals, not grants: a transaction's recipients stay out of the bucket from its grant until SES
 * answered it, so wherever between the two SES counts it (a new connection's TLS and AUTH, a slow body),
 * arrivals never exceed SES's own bucket. Checked against a strict SES bucket fed with the arrival times.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { localAdmission, sleep } from './helpers/admission';

test('recipients in flight hold their room in the bucket until settled', async (t) => {
  const admission = await localAdmission({ rate: 100, burst: 10 });
  t.after(() => admission.stop());
  const signal = new AbortController().signal;
  await sleep(150); // the bucket fills to 10
  const a = await admission.admit(6, signal);
  const b = await admission.admit(4, signal);
  let admitted = false;
  const next = admission.admit(3, signal).then((x) => ((admitted = true), x));
  await sleep(500);
  assert.equal(admitted, false, 'a full bucket of in-flight recipients: nothing more, however long');
  assert.equal(admission.status().effectiveRate, 100);
  await a.settle({ delivered: 6 });
  const c = await next;
  assert.ok(admitted, 'the answer made room');
  await Promise.all([b.settle({ delivered: 4 }), c.settle({ delivered: 3 })]);
});

test('a cancelled ticket gives its tokens back', async (t) => {
  const admission = await localAdmission({ rate: 10, burst: 5 });
  t.after(() => admission.stop());
  const signal = new AbortController().signal;
  await sleep(550);
  const a = await admission.admit(5, signal);
  await a.cancel();
  const t0 = performance.now();
  const b = await admission.admit(5, signal);
  assert.ok(performance.now() - t0 < 100, 'admitted at once from the refunded tokens');
  await b.settle({ delivered: 5 });
});

test('whatever the grant-to-arrival delays, a strict SES bucket never refuses', async (t) => {
  const rate = 50;
  const burst = 10;
  // SES's bucket starts (empty) no later than ours: a bucket created a moment before SES's would hold a
  // fraction of a token more.
  const start = performance.now();
  const admission = await localAdmission({ rate, burst, poolSize: 8 });
  t.after(() => admission.stop());
  const arrivals: Array<{ at: number; n: number }> = [];
  let x = 7;
  const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
  const ac = new AbortController();
  const until = performance.now() + 4000;
  const workers = Array.from({ length: 8 }, async () => {
    for (let i = 0; i < 10_000 && performance.now() < until; i++) {
      const n = 1 + Math.floor(rnd() * 3);
      const ticket = await admission.admit(n, ac.signal).catch(() => undefined);
      if (!ticket) return;
      const granted = performance.now();
      // 20 % are slow: a new connection, or a big body; SES counts them anywhere before the answer.
      const latency = rnd() < 0.2 ? 500 + rnd() * 1000 : rnd() * 60;
      await sleep(latency);
      const answered = performance.now();
      // Slow ones arrive late (end of a long DATA), quick ones at once.
      arrivals.push({ at: latency > 300 ? answered - 1 : granted + rnd() * (answered - granted), n });
      await ticket.settle({ delivered: n });
      // Now and then the backlog runs dry for a moment: the bucket refills while slow ones are out.
      if (rnd() < 0.15) await sleep(300 + rnd() * 500);
    }
  });
  await sleep(4000);
  ac.abort();
  await Promise.all(workers);
  // SES's bucket, as deep as ours and as empty at the start (ours starts empty).
  let tokens = 0;
  let at = start;
  let refused = 0;
  for (const a of arrivals.sort((p, q) => p.at - q.at)) {
    tokens = Math.min(burst, tokens + ((a.at - at) / 1000) * rate);
    at = a.at;
    if (tokens + 1e-6 < a.n) refused += a.n;
    else tokens -= a.n;
  }
  const sent = arrivals.reduce((s, a) => s + a.n, 0);
  t.diagnostic(`${sent} recipients in ${arrivals.length} transactions, ${refused} over SES's bucket`);
  assert.equal(refused, 0);
  assert.ok(sent >= rate * 1.5, `the load ran (${sent})`);
});

test('a slow transaction keeps its room: a refilled bucket does not send a second bucket after it', async (t) => {
  // 10/s, bucket 10. A 10-recipient transaction takes 1.5 s on the wire and SES counts it at the end.
  // A plain bucket is full again after 1 s and sends 10 more at once: they use up SES's bucket just before
  // the slow one arrives, which SES then refuses.
  const admission = await localAdmission({ rate: 10, burst: 10 });
  t.after(() => admission.stop());
  const signal = new AbortController().signal;
  await sleep(1050);
  const slow = await admission.admit(10, signal);
  const t0 = performance.now();
  let second = 0;
  const next = admission.admit(10, signal).then((x) => ((second = performance.now() - t0), x));
  await sleep(1500);
  assert.equal(second, 0, 'nothing more while the slow one is on the wire');
  await slow.settle({ delivered: 10 });
  await (await next).settle({ delivered: 10 });
  assert.ok(second >= 1500, `the next 10 went ${second.toFixed(0)} ms after the slow one was granted`);
});
