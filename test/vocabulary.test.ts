/**
 * One vocabulary for where a message is (src/types.ts): the words are closed sets, and the spool, the
 * queue CLI, the queue gauge, the log events and the docs use exactly them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { registerQueueMetrics } from '../src/egress/queue-metrics';
import { registry } from '../src/observability/metrics';
import { silentLogger } from '../src/observability/logger';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import {
  LEASABLE_MESSAGE_STATES,
  MESSAGE_EVENTS,
  MESSAGE_STATES,
  RECIPIENT_STATES,
  RECIPIENT_STATUSES,
  STORED_MESSAGE_STATES,
  WAITING_MESSAGE_STATES,
} from '../src/types';
import { ROOT, tempDir } from './helpers/relay-process';

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8');
const section = (text: string, from: string, to: string) =>
  text.slice(text.indexOf(from), text.indexOf(to, text.indexOf(from) + 1));

test('the sets nest as documented', () => {
  const all = new Set<string>(MESSAGE_STATES);
  for (const s of [...STORED_MESSAGE_STATES, ...WAITING_MESSAGE_STATES, ...LEASABLE_MESSAGE_STATES])
    assert.ok(all.has(s), s);
  assert.ok(!(STORED_MESSAGE_STATES as readonly string[]).includes('sending'), 'sending is in memory only');
  assert.ok(
    !(STORED_MESSAGE_STATES as readonly string[]).includes('delivered'),
    'delivered messages are removed',
  );
  assert.ok(
    !(LEASABLE_MESSAGE_STATES as readonly string[]).includes('held'),
    'a held message is never leased',
  );
  assert.deepEqual(
    RECIPIENT_STATES.slice(1),
    [...RECIPIENT_STATUSES].sort((a, b) => RECIPIENT_STATES.indexOf(a) - RECIPIENT_STATES.indexOf(b)),
  );
  assert.deepEqual(
    MESSAGE_EVENTS.filter((e) => e !== 'message:accepted' && e !== 'message:released'),
    RECIPIENT_STATUSES.map((s) => `message:${s}`),
  );
});

test('README "How it behaves" and docs/operations.md "Inspecting the queue" name every state once', () => {
  const behaves = section(read('README.md'), '## How it behaves', '## Configuration');
  const inspecting = section(
    read('docs/operations.md'),
    '### Inspecting the queue',
    'Any user that can read',
  );
  for (const word of [...MESSAGE_STATES, ...RECIPIENT_STATES]) {
    assert.ok(behaves.includes(`\`${word}\``), `README lacks \`${word}\``);
    assert.ok(inspecting.includes(`\`${word}\``), `docs/operations.md lacks \`${word}\``);
  }
  const logs = section(read('README.md'), '## Logs', '## Benchmarks');
  for (const event of MESSAGE_EVENTS)
    assert.ok(logs.includes(`\`${event}\``), `README's Logs lacks ${event}`);
});

test('every message event is logged by the relay', () => {
  const walk = (dir: string): string[] =>
    fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
      const p = path.join(dir, e.name);
      return e.isDirectory() ? walk(p) : p.endsWith('.ts') ? [fs.readFileSync(p, 'utf8')] : [];
    });
  const sources = walk(path.join(ROOT, 'src')).join('\n');
  for (const event of MESSAGE_EVENTS) assert.ok(sources.includes(`'${event}'`), `${event} is never logged`);
});

test('ses_relay_queue_messages is labelled with the waiting states', async (t) => {
  const spool = await SqliteSpool.open({ dir: tempDir(), logger: silentLogger });
  t.after(() => spool.close());
  const unregister = registerQueueMetrics(spool);
  t.after(unregister);
  const metric = (await registry.getSingleMetric('ses_relay_queue_messages')?.get())!;
  assert.deepEqual(
    metric.values.map((v) => v.labels.state),
    [...WAITING_MESSAGE_STATES],
  );
});

test('the queue CLI filters are the stored states', () => {
  const cli = read('src/cli/queue.ts');
  assert.match(cli, /STORED_MESSAGE_STATES/);
  assert.ok(read('README.md').includes(`list [${STORED_MESSAGE_STATES.join('|')}]`));
});
