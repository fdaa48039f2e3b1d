import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { GetItemCommand, ScanCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { SESClient } from '@aws-sdk/client-ses';
import type { SNSEvent } from 'aws-lambda';
import { parseRecipients } from '../lambda/src/alert';
import { createHandler, depsFromEnv, handler, SuppressionWriteError } from '../lambda/src/handler';
import { silentLambdaLogger } from '../lambda/src/log';
import { classifyNotification, MalformedNotificationError } from '../lambda/src/ses-notification';
import { silentLogger } from '../src/observability/logger';
import { SuppressionList } from '../src/policy/suppression-list';
import { startDynalite, TEST_CREDENTIALS, TEST_REGION, type Dynalite } from './helpers/dynalite';

const FIXTURES = path.join(__dirname, 'fixtures', 'ses-notifications');
const fixture = (name: string): string => fs.readFileSync(path.join(FIXTURES, `${name}.json`), 'utf8');

let snsCounter = 0;
function snsEvent(...messages: string[]): SNSEvent {
  return {
    Records: messages.map((Message) => ({
      EventSource: 'aws:sns',
      EventVersion: '1.0',
      EventSubscriptionArn: 'arn:aws:sns:us-east-1:123456789012:ses-notifications:sub',
      Sns: {
        Type: 'Notification',
        MessageId: `sns-${++snsCounter}`,
        TopicArn: 'arn:aws:sns:us-east-1:123456789012:ses-notifications',
        Subject: '',
        Message,
        Timestamp: '2016-01-27T14:59:39.000Z',
        SignatureVersion: '1',
        Signature: 'EXAMPLE',
        SigningCertUrl: 'EXAMPLE',
        UnsubscribeUrl: 'EXAMPLE',
        MessageAttributes: {},
      },
    })),
  };
}

/** A minimal SES (v1 query API) endpoint that records SendEmail calls: the alert path, over real HTTP. */
async function startFakeSesApi(): Promise<{
  endpoint: string;
  calls: URLSearchParams[];
  close(): Promise<void>;
}> {
  const calls: URLSearchParams[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const params = new URLSearchParams(body);
      calls.push(params);
      res.setHeader('content-type', 'text/xml');
      res.end(
        `<SendEmailResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><SendEmailResult>` +
          `<MessageId>alert-${calls.length}</MessageId></SendEmailResult>` +
          `<ResponseMetadata><RequestId>req-${calls.length}</RequestId></ResponseMetadata></SendEmailResponse>`,
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    calls,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('SES notification classification', () => {
  test('permanent bounce and complaint suppress; transient, undetermined and deliveries do not', () => {
    const pb = classifyNotification(fixture('permanent-bounce'), 'sns-x');
    assert.equal(pb.action, 'suppress');
    const tb = classifyNotification(fixture('transient-bounce'), 'sns-x');
    assert.deepEqual(tb, {
      action: 'ignore',
      type: 'Bounce',
      detail: 'Transient/MailboxFull',
      recipients: ['full@example.com'],
    });
    assert.equal(classifyNotification(fixture('undetermined-bounce'), 'sns-x').action, 'ignore');
    assert.equal(classifyNotification(fixture('delivery'), 'sns-x').action, 'ignore');
    assert.equal(classifyNotification(fixture('event-delivery'), 'sns-x').action, 'ignore');
    assert.equal(classifyNotification(fixture('complaint'), 'sns-x').action, 'suppress');
    assert.throws(() => classifyNotification('{not json', 'sns-x'), MalformedNotificationError);
    assert.throws(() => classifyNotification('[]', 'sns-x'), MalformedNotificationError);
    assert.deepEqual(parseRecipients(' ops@example.com; ; dev@example.com '), [
      'ops@example.com',
      'dev@example.com',
    ]);
  });
});

describe('Lambda handler against dynalite', () => {
  let db: Dynalite;
  let table: string;
  let n = 0;
  const run = (event: SNSEvent) =>
    createHandler({ client: db.client(), table, log: silentLambdaLogger })(event);

  async function item(email: string): Promise<Record<string, AttributeValue> | undefined> {
    const out = await db
      .client()
      .send(new GetItemCommand({ TableName: table, Key: { email: { S: email } }, ConsistentRead: true }));
    return out.Item;
  }
  async function emails(): Promise<string[]> {
    const out = await db.client().send(new ScanCommand({ TableName: table }));
    return (out.Items ?? []).map((i) => i.email.S!).sort();
  }

  before(async () => {
    db = await startDynalite();
  });
  beforeEach(async () => {
    table = `suppression-${++n}`;
    await db.createTable(table);
  });
  after(async () => {
    await db.close();
  });

  test('permanent bounce: lowercase address with every attribute', async () => {
    const summary = await run(snsEvent(fixture('permanent-bounce')));
    assert.deepEqual(summary, { records: 1, suppressed: 1, duplicates: 0, ignored: 0, malformed: 0 });
    const it = await item('jane@example.com');
    assert.ok(it);
    assert.equal(it.reason.S, 'bounce');
    assert.equal(it.bounceType.S, 'Permanent');
    assert.equal(it.bounceSubType.S, 'General');
    assert.equal(it.feedbackId.S, '00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000');
    assert.equal(it.messageId.S, '00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000');
    assert.equal(it.firstSeen.S, '2016-01-27T14:59:38.237Z');
    assert.equal(it.lastSeen.S, '2016-01-27T14:59:38.237Z');
    assert.equal(it.count.N, '1');
    assert.deepEqual(await emails(), ['jane@example.com']);
  });

  test('several recipients, display names and case: all suppressed', async () => {
    await run(snsEvent(fixture('permanent-bounce-several-recipients')));
    assert.deepEqual(await emails(), [
      'bounce@simulator.amazonses.com',
      'mary@example.com',
      'richard@example.com',
    ]);
    assert.equal((await item('mary@example.com'))?.bounceSubType.S, 'Suppressed');
  });

  test('complaint (notification and event-publishing formats)', async () => {
    await run(snsEvent(fixture('complaint'), fixture('event-complaint')));
    const r = await item('richard@example.com');
    assert.equal(r?.reason.S, 'complaint');
    assert.equal(r?.complaintFeedbackType.S, 'abuse');
    assert.equal(r?.bounceType, undefined);
    assert.equal((await item('complainer@example.com'))?.reason.S, 'complaint');
  });

  test('event-publishing Bounce suppresses like the notification format', async () => {
    await run(snsEvent(fixture('event-bounce')));
    const r = await item('recipient@example.com');
    assert.equal(r?.reason.S, 'bounce');
    assert.equal(r?.messageId.S, 'EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000');
  });

  test('transient and undetermined bounces and deliveries write nothing', async () => {
    const summary = await run(
      snsEvent(
        fixture('transient-bounce'),
        fixture('undetermined-bounce'),
        fixture('delivery'),
        fixture('event-delivery'),
      ),
    );
    assert.equal(summary.ignored, 4);
    assert.deepEqual(await emails(), []);
  });

  test('malformed records are skipped without failing the others', async () => {
    const event = JSON.parse(fixture('sns-event-malformed')) as SNSEvent;
    const summary = await run(event);
    assert.deepEqual(summary, { records: 4, suppressed: 1, duplicates: 0, ignored: 0, malformed: 3 });
    assert.deepEqual(await emails(), ['after-malformed@example.com']);
  });

  test('a redelivered event is idempotent; a new bounce for the same address counts', async () => {
    const event = snsEvent(fixture('permanent-bounce'));
    await run(event);
    const again = await run(event);
    assert.equal(again.duplicates, 1);
    assert.equal(again.suppressed, 0);
    assert.equal((await item('jane@example.com'))?.count.N, '1', 'count not doubled');

    const later = JSON.parse(fixture('permanent-bounce'));
    later.bounce.feedbackId = 'another-feedback-id';
    later.bounce.timestamp = '2016-02-01T10:00:00.000Z';
    await run(snsEvent(JSON.stringify(later)));
    await run(snsEvent(fixture('permanent-bounce'))); // an old one again, interleaved
    const it = await item('jane@example.com');
    assert.equal(it?.count.N, '2');
    assert.equal(it?.firstSeen.S, '2016-01-27T14:59:38.237Z');
    assert.equal(it?.lastSeen.S, '2016-02-01T10:00:00.000Z');
  });

  test('what the Lambda writes, the relay suppresses', async () => {
    await run(snsEvent(fixture('permanent-bounce'), fixture('complaint')));
    const list = new SuppressionList({
      client: db.client(),
      table,
      cacheTtlMs: 0,
      cacheMax: 1,
      logger: silentLogger,
      recoveryProbeMs: 0,
    });
    const d = await list.check(['JANE@example.com', 'richard@EXAMPLE.com', 'mary@example.com']);
    assert.deepEqual(d.allowed, ['mary@example.com']);
    assert.deepEqual(
      d.suppressed.map((s) => [s.recipient, s.reason]),
      [
        ['JANE@example.com', 'bounce'],
        ['richard@EXAMPLE.com', 'complaint'],
      ],
    );
    await list.close();
  });

  test('DynamoDB down: the handler throws (Lambda retries) and sends the alert email', async () => {
    const ses = await startFakeSesApi();
    const sesClient = new SESClient({
      endpoint: ses.endpoint,
      region: TEST_REGION,
      credentials: TEST_CREDENTIALS,
    });
    const h = createHandler({
      client: db.client(),
      table,
      log: silentLambdaLogger,
      alert: { ses: sesClient, from: 'alerts@example.com', to: ['ops@example.com', 'dev@example.com'] },
    });
    await db.stop();
    try {
      await assert.rejects(h(snsEvent(fixture('permanent-bounce'))), SuppressionWriteError);
    } finally {
      await db.start();
      sesClient.destroy();
      await ses.close();
    }
    assert.equal(ses.calls.length, 1);
    const call = ses.calls[0];
    assert.equal(call.get('Action'), 'SendEmail');
    assert.equal(call.get('Source'), 'alerts@example.com');
    assert.equal(call.get('Destination.ToAddresses.member.1'), 'ops@example.com');
    assert.equal(call.get('Destination.ToAddresses.member.2'), 'dev@example.com');
    assert.match(call.get('Message.Subject.Data') ?? '', /1 suppression write\(s\) failed/);
    // The retry after recovery writes it.
    await run(snsEvent(fixture('permanent-bounce')));
    assert.equal((await item('jane@example.com'))?.count.N, '1');
  });

  test('an unreachable alert endpoint does not hide the DynamoDB failure', async () => {
    const sesClient = new SESClient({
      endpoint: 'http://127.0.0.1:9',
      region: TEST_REGION,
      credentials: TEST_CREDENTIALS,
      maxAttempts: 1,
    });
    const h = createHandler({
      client: db.client(),
      table: 'no-such-table',
      log: silentLambdaLogger,
      alert: { ses: sesClient, from: 'alerts@example.com', to: ['ops@example.com'] },
    });
    await assert.rejects(h(snsEvent(fixture('complaint'))), SuppressionWriteError);
    sesClient.destroy();
  });

  test('the exported handler reads its settings from the environment', async () => {
    assert.throws(() => depsFromEnv({}), /DYNAMODB_TABLE/);
    const saved = { ...process.env };
    Object.assign(process.env, db.env, { DYNAMODB_TABLE: table, LOG_LEVEL: 'silent' });
    try {
      const summary = await handler(snsEvent(fixture('event-bounce')));
      assert.equal(summary.suppressed, 1);
      assert.equal((await item('recipient@example.com'))?.reason.S, 'bounce');
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });
});
