/**
 * Child process for test/notifications-crash.test.ts: in the spool given as argv[2] (notifications on),
 * stores one message to argv[3], settles it as refused by SES (550 5.1.1) — the commit that makes the
 * notification owed — prints `settled <queueId>` and waits to be SIGKILLed, before any notifier could
 * compose the notification.
 */
import { Readable } from 'node:stream';
import { SqliteSpool } from '../../src/spool/sqlite-spool';

export const CRASH_BOUNCE_FROM = 'mailer-daemon@relay.example';

async function main(): Promise<void> {
  const [dir, recipient] = process.argv.slice(2);
  if (!dir || !recipient) throw new Error('usage: notification-crash-child <spool dir> <recipient>');
  const spool = await SqliteSpool.open({
    dir,
    notifications: { bounceFrom: CRASH_BOUNCE_FROM, delayWarningMs: 0, maxQueueAgeMs: 86_400_000 },
  });
  const id = await spool.store(
    { mailFrom: 'app@example.com', recipients: [recipient] },
    Readable.from([Buffer.from('Subject: crash before the notification\r\n\r\nbody\r\n')]),
    { clientAddress: '127.0.0.1' },
  );
  const [m] = spool.lease(1);
  await spool.settle(m.id, [
    { recipient, status: 'failed', code: 550, reply: '550 5.1.1 Mailbox unavailable' },
  ]);
  // A pipe write is synchronous on Linux: once this returns, the line survives SIGKILL.
  process.stdout.write(`settled ${id}\n`);
  setInterval(() => {}, 1000);
}

if (require.main === module) void main();
