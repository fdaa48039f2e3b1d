/**
 * Notifications go through the suppression filter like any mail: a sender on the suppression list (SES
 * reported it bounced or complained) gets no notification upstream — it is dropped as `suppressed`, never
 * sent to SES. A real relay process, dynalite as DynamoDB, the fake SES.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startDynalite } from './helpers/dynalite';
import { FAKE_REPLIES, startFakeSes } from './helpers/fake-ses';
import { messageData, sendRaw } from './helpers/notifications';
import { fakeSesEnv, metricValue, startRelayProcess, stopRelayProcess } from './helpers/relay-process';

const BOUNCE_FROM = 'mailer-daemon@relay.example';
const TABLE = 'notification-suppression';

test('a notification to a suppressed sender is suppressed, never sent to SES', async () => {
  const db = await startDynalite();
  const ses = await startFakeSes();
  try {
    await db.createTable(TABLE);
    await db.put(TABLE, { email: { S: 'gone-sender@example.com' }, reason: { S: 'bounce' } });
    const relay = await startRelayProcess({
      env: { ...fakeSesEnv(ses.port), ...db.env, BOUNCE_FROM, USE_BLOCKLIST: 'true', DYNAMODB_TABLE: TABLE },
    });
    try {
      ses.queueRcpt('refused@example.net', FAKE_REPLIES.mailboxUnavailable);
      const id = await sendRaw(relay.smtpPort, {
        mailFrom: 'gone-sender@example.com',
        rcpts: [{ address: 'refused@example.net' }],
        data: messageData('to a sender that bounces'),
      });
      const queued = await relay.waitForLog((l) => l.event === 'notification:queued' && l.about === id);
      const suppressed = await relay.waitForLog(
        (l) => l.event === 'message:suppressed' && l.queueId === queued.queueId,
      );
      assert.deepEqual(suppressed.rcpts, ['gone-sender@example.com']);
      assert.equal(ses.messages.filter((m) => m.mailFrom === BOUNCE_FROM).length, 0);
      const m = await relay.metrics();
      assert.equal(metricValue(m, 'ses_relay_notifications_total', { type: 'failure' }), 1);
      assert.equal(metricValue(m, 'ses_relay_suppression_blocked_total'), 1);
    } finally {
      await stopRelayProcess(relay);
    }
  } finally {
    await ses.close();
    await db.close();
  }
});
