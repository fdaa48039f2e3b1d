/**
 * The SES v2 API transport against a real local SES v2 endpoint (test/helpers/fake-ses-api.ts) spoken to by
 * the real @aws-sdk/client-sesv2: raw bytes unchanged, envelope recipients as Destination (Bcc delivered),
 * MessageId recorded per recipient, every documented error mapped to an outcome class, network failures.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Readable } from 'node:stream';
import {
  apiErrorReply,
  classifyApiError,
  SES_API_MAX_RAW_BYTES,
  SesApiTransport,
  type SesApiTransportOptions,
} from '../src/egress/transport/ses-api-transport';
import type { Transaction } from '../src/egress/transport/transport';
import { silentLogger } from '../src/observability/logger';
import {
  FAKE_API_ERRORS,
  startFakeSesApi,
  type FakeApiAnswer,
  type FakeSesApi,
} from './helpers/fake-ses-api';

const BODY =
  'From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\nX-Custom:  kept   as is\r\n\r\nHello\r\n.\r\n..dots\r\n';
const CREDENTIALS = { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' };

function tx(
  recipients: string[],
  body: string | Buffer = BODY,
  id = 'Q1',
  mailFrom = 'sender@example.com',
): Transaction {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  return { id, mailFrom, recipients, body: () => Readable.from([buf]), size: buf.length };
}

function transport(api: { url: string }, extra: Partial<SesApiTransportOptions> = {}): SesApiTransport {
  return new SesApiTransport({
    region: 'eu-west-1',
    endpoint: api.url,
    credentials: CREDENTIALS,
    connectionTimeoutMs: 2000,
    logger: silentLogger,
    ...extra,
  });
}

describe('SesApiTransport against a local SES v2 endpoint', () => {
  let api: FakeSesApi;
  let t: SesApiTransport;
  before(async () => {
    api = await startFakeSesApi();
    t = transport(api);
  });
  after(async () => {
    await t.close();
    await api.close();
  });

  it('sends the spooled bytes unchanged, the envelope as Destination, and records the MessageId', async () => {
    api.reset();
    const res = await t.send(tx(['b@example.com', 'c@example.com']));
    assert.equal(api.sends.length, 1);
    const s = api.sends[0];
    assert.equal(s.raw.toString(), BODY, 'raw content byte for byte (no dot-stuffing, no re-encoding)');
    assert.deepEqual(s.to, ['b@example.com', 'c@example.com']);
    assert.deepEqual([...s.cc, ...s.bcc], []);
    assert.equal(s.from, 'sender@example.com');
    assert.equal(s.feedbackTo, 'sender@example.com', 'bounces go to the envelope sender, as with SMTP');
    assert.equal(s.configurationSet, undefined);
    assert.equal(s.accessKeyId, 'AKIDTEST');
    assert.equal(s.region, 'eu-west-1');
    assert.equal(s.service, 'ses', 'SigV4 signed for SES');
    assert.deepEqual(
      res.map((r) => [r.recipient, r.class, r.code, r.reply, r.sesMessageId]),
      [
        ['b@example.com', 'delivered', 250, `250 Ok ${s.messageId}`, s.messageId],
        ['c@example.com', 'delivered', 250, `250 Ok ${s.messageId}`, s.messageId],
      ],
    );
    assert.equal(t.healthy(), true);
  });

  it('delivers to a Bcc-only recipient: Destination is the envelope, not the headers', async () => {
    api.reset();
    // The body names only b@ in To:; hidden@ is an envelope recipient only (a Bcc).
    const res = await t.send(tx(['b@example.com', 'hidden@example.net']));
    assert.deepEqual(api.sends[0].recipients, ['b@example.com', 'hidden@example.net']);
    assert.ok(!api.sends[0].raw.toString().includes('hidden@'), 'the Bcc stays out of the message');
    assert.ok(res.every((r) => r.class === 'delivered'));
  });

  it('passes the null sender as no FromEmailAddress (SES takes the From: header)', async () => {
    api.reset();
    const res = await t.send(tx(['b@example.com'], BODY, 'Q2', ''));
    assert.equal(api.sends[0].from, undefined);
    assert.equal(api.sends[0].feedbackTo, undefined);
    assert.equal(res[0].class, 'delivered');
  });

  const cases: Array<[string, FakeApiAnswer, string, number, string | undefined]> = [
    ['MessageRejected', FAKE_API_ERRORS.messageRejected, 'permanent', 554, undefined],
    ['MailFromDomainNotVerifiedException', FAKE_API_ERRORS.mailFromNotVerified, 'permanent', 553, undefined],
    ['BadRequestException', FAKE_API_ERRORS.badRequest, 'permanent', 554, undefined],
    ['RequestEntityTooLargeException', FAKE_API_ERRORS.tooLarge, 'permanent', 552, undefined],
    ['TooManyRequestsException (rate)', FAKE_API_ERRORS.tooManyRequests, 'throttled', 454, undefined],
    ['ThrottlingException', FAKE_API_ERRORS.throttling, 'throttled', 454, undefined],
    ['daily quota (429)', FAKE_API_ERRORS.dailyQuota, 'transient', 454, 'daily-quota-exceeded'],
    [
      'daily quota (LimitExceeded)',
      FAKE_API_ERRORS.dailyQuotaLimit,
      'transient',
      454,
      'daily-quota-exceeded',
    ],
    ['LimitExceededException', FAKE_API_ERRORS.limitExceeded, 'transient', 451, undefined],
    ['SendingPausedException', FAKE_API_ERRORS.sendingPaused, 'transient', 451, 'sending-paused'],
    ['AccountSuspendedException', FAKE_API_ERRORS.accountSuspended, 'transient', 451, 'sending-paused'],
    ['NotFoundException', FAKE_API_ERRORS.notFound, 'transient', 451, undefined],
    ['AccessDeniedException', FAKE_API_ERRORS.accessDenied, 'transient', 451, undefined],
    ['UnrecognizedClientException', FAKE_API_ERRORS.unrecognizedClient, 'transient', 451, undefined],
    ['InternalFailure (500)', FAKE_API_ERRORS.internal, 'transient', 451, undefined],
    ['ServiceUnavailable (503)', FAKE_API_ERRORS.serviceUnavailable, 'transient', 451, undefined],
    ['a 502 page from a proxy', FAKE_API_ERRORS.gatewayPage, 'transient', 451, undefined],
    [
      'an unknown 4xx error',
      { error: 'SomethingNewException', status: 400, message: 'new' },
      'transient',
      451,
      undefined,
    ],
  ];
  for (const [what, answer, cls, code, signal] of cases) {
    it(`maps ${what} to ${cls}${signal ? ` + ${signal}` : ''}`, async () => {
      api.reset();
      api.queueSend(answer);
      const res = await t.send(tx(['b@example.com', 'c@example.com']));
      assert.equal(api.calls.length, 1, 'one call: the SDK does not retry on its own');
      assert.equal(api.sends.length, 0);
      for (const r of res) {
        assert.equal(r.class, cls, r.reply);
        assert.equal(r.code, code, r.reply);
        assert.equal(r.signal, signal, r.reply);
        assert.ok(r.reply.startsWith(`${code} `), r.reply);
        assert.equal(r.sesMessageId, undefined);
      }
      if ('error' in answer && answer.error) assert.ok(res[0].reply.includes(answer.error), res[0].reply);
      assert.equal(t.healthy(), true, 'SES answered: the upstream is reachable');
    });
  }

  it('a dropped connection is a network error (code 0, transient) and marks the upstream unhealthy', async () => {
    api.reset();
    api.queueSend(FAKE_API_ERRORS.drop);
    const res = await t.send(tx(['b@example.com']));
    assert.equal(res[0].class, 'transient');
    assert.equal(res[0].code, 0);
    assert.equal(api.calls.length, 1, 'not retried by the SDK');
    assert.equal(t.healthy(), false);
    const ok = await t.send(tx(['b@example.com']));
    assert.equal(ok[0].class, 'delivered');
    assert.equal(t.healthy(), true);
  });

  it('a slow answer beyond the request timeout is a network error, not retried', async () => {
    const slow = transport(api, { requestTimeoutMs: 300 });
    try {
      api.reset();
      api.queueSend({ delayMs: 1500 });
      const res = await slow.send(tx(['b@example.com']));
      assert.equal(res[0].class, 'transient');
      assert.equal(res[0].code, 0, res[0].reply);
      assert.equal(api.calls.length, 1);
    } finally {
      await slow.close();
    }
  });

  it('refuses a message too big for SES (40 MB after base64) without calling SES', async () => {
    api.reset();
    const big: Transaction = { ...tx(['b@example.com']), size: SES_API_MAX_RAW_BYTES + 1 };
    const res = await t.send(big);
    assert.equal(res[0].class, 'permanent');
    assert.equal(res[0].code, 552);
    assert.match(res[0].reply, /^552 5\.3\.4 /);
    assert.equal(api.calls.length, 0);
  });

  it('an unreadable spooled body is transient and nothing is sent', async () => {
    api.reset();
    const broken: Transaction = {
      ...tx(['b@example.com']),
      body: () =>
        new Readable({
          read() {
            this.destroy(new Error('EIO: i/o error'));
          },
        }),
    };
    const res = await t.send(broken);
    assert.equal(res[0].class, 'transient');
    assert.match(res[0].reply, /spooled body unreadable: EIO/);
    assert.equal(api.calls.length, 0);
  });
});

describe('the local endpoint enforcing SES limits', () => {
  it('over its recipient-counted rate: TooManyRequestsException, throttled', async () => {
    const api = await startFakeSesApi({ rateLimit: { perSecond: 1, burst: 5 } });
    const t = transport(api);
    try {
      const ok = await t.send(
        tx(['a@example.com', 'b@example.com', 'c@example.com', 'd@example.com', 'e@example.com']),
      );
      assert.ok(ok.every((r) => r.class === 'delivered'));
      const over = await t.send(tx(['f@example.com', 'g@example.com']));
      assert.deepEqual(
        over.map((r) => [r.class, r.code]),
        [
          ['throttled', 454],
          ['throttled', 454],
        ],
      );
      assert.match(over[0].reply, /TooManyRequestsException \(HTTP 429\): Maximum sending rate exceeded/);
      assert.equal(api.throttledCount, 1);
    } finally {
      await t.close();
      await api.close();
    }
  });

  it('past its daily quota: transient with the daily-quota signal', async () => {
    const api = await startFakeSesApi({
      enforceDailyQuota: true,
      account: { Max24HourSend: 3, SentLast24Hours: 2 },
    });
    const t = transport(api);
    try {
      assert.equal((await t.send(tx(['a@example.com'])))[0].class, 'delivered');
      const res = await t.send(tx(['b@example.com']));
      assert.equal(res[0].class, 'transient');
      assert.equal(res[0].signal, 'daily-quota-exceeded');
      assert.equal(api.account.SentLast24Hours, 3);
    } finally {
      await t.close();
      await api.close();
    }
  });
});

describe('SES_CONFIGURATION_SET with the API', () => {
  it('names the default configuration set unless the message carries X-SES-CONFIGURATION-SET', async () => {
    const api = await startFakeSesApi();
    const t = transport(api, { configurationSet: 'relay-events' });
    try {
      await t.send(tx(['b@example.com']));
      assert.equal(api.sends[0].configurationSet, 'relay-events');
      assert.equal(api.sends[0].raw.toString(), BODY, 'the header is not added to the raw message');
      const own = `X-SES-Configuration-Set: marketing\r\n${BODY}`;
      await t.send(tx(['b@example.com'], own));
      assert.equal(api.sends[1].configurationSet, undefined, "the message's own header wins");
      assert.equal(api.sends[1].raw.toString(), own);
      // A header-like line in the body is not a header.
      const inBody = `${BODY}X-SES-CONFIGURATION-SET: not-a-header\r\n`;
      await t.send(tx(['b@example.com'], inBody));
      assert.equal(api.sends[2].configurationSet, 'relay-events');
    } finally {
      await t.close();
      await api.close();
    }
  });
});

describe('SesApiTransport without a server', () => {
  it('connection refused: network error, transient, unhealthy', async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const t = transport({ url: `http://127.0.0.1:${port}` });
    try {
      const res = await t.send(tx(['b@example.com', 'c@example.com']));
      assert.deepEqual(
        res.map((r) => [r.class, r.code]),
        [
          ['transient', 0],
          ['transient', 0],
        ],
      );
      assert.match(res[0].reply, /ECONNREFUSED/);
      assert.equal(t.healthy(), false);
    } finally {
      await t.close();
    }
  });

  it('missing credentials are an operator problem: transient, and named in the reply', async () => {
    const o = classifyApiError(
      Object.assign(new Error('Could not load credentials from any providers'), {
        name: 'CredentialsProviderError',
      }),
    );
    assert.equal(o.class, 'transient');
    assert.ok(o.operator);
    assert.match(apiErrorReply(new Error('x'), o), /^451 4\.7\.0 /);
  });

  it('a closed transport sends nothing', async () => {
    const api = await startFakeSesApi();
    const t = transport(api);
    await t.close();
    const res = await t.send(tx(['b@example.com']));
    assert.equal(res[0].class, 'transient');
    assert.equal(api.calls.length, 0);
    await api.close();
  });
});
