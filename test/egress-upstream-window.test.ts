/**
 * The send-time guard: recipients sent in the last second + in flight + the next transaction never exceed
 * rate + burst, whatever the grant times were; waiters go in order; abort and close reject.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UpstreamWindow } from '../src/egress/rate/upstream-window';

function clock() {
  let t = 0;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

test('admits while the window has room, then waits for in-flight work and for the window to slide', async () => {
  const c = clock();
  const w = new UpstreamWindow({ capacity: () => 10, now: c.now });
  await w.admit(6);
  await w.admit(4);
  assert.equal(w.load(), 10);
  let admitted = false;
  const next = w.admit(3).then(() => (admitted = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(admitted, false, 'full window: waits');
  w.done({ n: 6 }); // 6 reached SES at t=0: still counted for one second
  await new Promise((r) => setImmediate(r));
  assert.equal(admitted, false, 'finished transactions still count within the window');
  c.advance(1001);
  w.done({ n: 0 }); // any event re-checks
  await next;
  assert.equal(w.load(), 4 + 3);
  w.close();
});

test('waiters are served in order, a big one is not overtaken by small ones', async () => {
  const c = clock();
  const w = new UpstreamWindow({ capacity: () => 10, now: c.now });
  await w.admit(8);
  const order: number[] = [];
  const big = w.admit(9).then(() => order.push(9));
  const small = w.admit(1).then(() => order.push(1));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [], 'the small one does not jump the queue although it would fit');
  c.advance(1001);
  w.done({ n: 8 });
  c.advance(1001);
  w.done({ n: 0 });
  await Promise.all([big, small]);
  assert.deepEqual(order, [9, 1]);
  w.close();
});

test('a transaction larger than the capacity goes out alone once the window is empty', async () => {
  const w = new UpstreamWindow({ capacity: () => 5 });
  await w.admit(50);
  assert.equal(w.load(), 50);
  w.close();
});

test('abort and close reject waiting admissions', async () => {
  const w = new UpstreamWindow({ capacity: () => 1 });
  await w.admit(1);
  const ac = new AbortController();
  const aborted = w.admit(1, ac.signal);
  ac.abort();
  await assert.rejects(aborted, /aborted/);
  const closed = w.admit(1);
  w.close();
  await assert.rejects(closed, /closed/);
});
