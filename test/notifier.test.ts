/**
 * The notifier as a failing machine finds it: a spool that cannot store the notification (disk full) backs
 * the notifier off instead of looping, the owed notification stays owed and is stored once the spool
 * takes writes again; a notification stored meanwhile by someone else (its owed row gone) is not stored twice.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Readable } from 'node:stream';
import { silentLogger } from '../src/observability/logger';
import { Notifier, type NotificationSpool } from '../src/notifications/notifier';
import { SpoolWriteError } from '../src/spool/spool';
import { NotificationNotOwedError } from '../src/spool/sqlite-spool';
import type { PendingNotification } from '../src/spool/spool-notifications';

const owed: PendingNotification = {
  id: 7,
  messageId: '0MX0000AA-AAAAAAAA',
  type: 'failure',
  createdAt: Date.now(),
  mailFrom: 'app@example.com',
  receivedAt: Date.now(),
  size: 10,
  recipients: [{ recipient: 'a@example.net', action: 'failed', status: '5.1.1', lastAttemptAt: Date.now() }],
  headers: Buffer.from('Subject: x\r\n'),
};

async function drain(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

test('a spool that cannot be written backs the notifier off; the notification is stored once it can', async () => {
  let attempts = 0;
  let stored = 0;
  let writable = false;
  const spool: NotificationSpool = {
    pendingNotifications: () => (stored ? [] : [owed]),
    hasMessage: () => false,
    openBody: () => {
      throw new Error('not used');
    },
    storeNotification: async (_id, message) => {
      attempts++;
      await drain(message.body);
      if (!writable) throw new SpoolWriteError('spool commit failed');
      stored++;
      return 'NOTIFICAT-00000001';
    },
  };
  const settings = { from: 'M <m@relay.example>', bounceFrom: 'm@relay.example', reportingMta: 'relay.test' };
  const notifier = new Notifier({ spool, settings, logger: silentLogger, pollMs: 10 });
  notifier.start();
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(attempts <= 2, `backed off (1 s), not looping: ${attempts} attempts in 1.5 s`);
  writable = true;
  await new Promise((r) => setTimeout(r, 2200));
  await notifier.stop();
  assert.equal(stored, 1);
});

test('an owed row already consumed is never stored twice (NotificationNotOwedError is not an error)', async () => {
  let calls = 0;
  const spool: NotificationSpool = {
    pendingNotifications: () => (calls ? [] : [owed]),
    hasMessage: () => false,
    openBody: () => {
      throw new Error('not used');
    },
    storeNotification: async (_id, message) => {
      calls++;
      await drain(message.body);
      throw new NotificationNotOwedError('gone');
    },
  };
  const settings = { from: 'M <m@relay.example>', bounceFrom: 'm@relay.example', reportingMta: 'relay.test' };
  const notifier = new Notifier({ spool, settings, logger: silentLogger, pollMs: 10 });
  notifier.start();
  await new Promise((r) => setTimeout(r, 200));
  await notifier.stop();
  assert.equal(calls, 1);
});
