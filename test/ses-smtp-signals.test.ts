/**
 * What the SMTP transport adds for SES beyond plain SMTP: the account-wide signal of a spent daily quota
 * (class stays transient), and the default configuration set as an X-SES-CONFIGURATION-SET header
 * prepended on the way out, never duplicated, never re-encoding the body.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { classifyCode, SesSmtpTransport, signalOf } from '../src/egress/transport/ses-smtp-transport';
import { prependHeaderUnlessPresent } from '../src/egress/transport/ses-headers';
import type { Transaction } from '../src/egress/transport/transport';
import { silentLogger } from '../src/observability/logger';
import { FAKE_REPLIES, FAKE_SES_CA, startFakeSes, type FakeSes } from './helpers/fake-ses';

const BODY =
  'From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello\r\n.\r\nX-SES-CONFIGURATION-SET: body\r\n';

function tx(recipients: string[], body: string | Buffer = BODY, chunks = 1): Transaction {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const size = Math.ceil(buf.length / chunks);
  const parts = Array.from({ length: chunks }, (_, i) => buf.subarray(i * size, (i + 1) * size));
  return {
    id: 'Q1',
    mailFrom: 's@example.com',
    recipients,
    body: () => Readable.from(parts),
    size: buf.length,
  };
}

function transport(ses: FakeSes, configurationSet?: string): SesSmtpTransport {
  return new SesSmtpTransport({
    host: ses.host,
    port: ses.port,
    secure: false,
    username: ses.username,
    password: ses.password,
    poolSize: 1,
    maxMessagesPerConnection: 100,
    maxConnectionAgeMs: 60_000,
    connectionTimeoutMs: 3000,
    tls: { ca: FAKE_SES_CA },
    configurationSet,
    logger: silentLogger,
  });
}

describe('SMTP replies that mean the whole account', () => {
  it('454 Daily message quota exceeded: transient (as before) + daily-quota-exceeded', () => {
    const text = '454 Throttling failure: Daily message quota exceeded.';
    assert.equal(classifyCode(454, text), 'transient');
    assert.equal(signalOf(454, text), 'daily-quota-exceeded');
    assert.equal(signalOf(454, '454 Throttling failure: Maximum sending rate exceeded.'), undefined);
    assert.equal(signalOf(451, '451 quota'), undefined);
  });

  let ses: FakeSes;
  let t: SesSmtpTransport;
  before(async () => {
    ses = await startFakeSes();
    t = transport(ses);
  });
  after(async () => {
    await t.close();
    await ses.close();
  });

  it('the fake SES refusing DATA with the daily quota reply sets the signal on every recipient', async () => {
    ses.queueData(FAKE_REPLIES.dailyQuota);
    const res = await t.send(tx(['b@example.com', 'c@example.com']));
    for (const r of res) {
      assert.equal(r.class, 'transient');
      assert.equal(r.code, 454);
      assert.equal(r.signal, 'daily-quota-exceeded');
    }
  });

  it('a rate throttle carries no signal', async () => {
    ses.queueData(FAKE_REPLIES.throttling);
    const res = await t.send(tx(['b@example.com']));
    assert.equal(res[0].class, 'throttled');
    assert.equal(res[0].signal, undefined);
  });
});

describe('SES_CONFIGURATION_SET over SMTP', () => {
  let ses: FakeSes;
  let t: SesSmtpTransport;
  before(async () => {
    ses = await startFakeSes();
    t = transport(ses, 'relay-events');
  });
  after(async () => {
    await t.close();
    await ses.close();
  });

  it('prepends the header to the raw message, the rest byte for byte', async () => {
    ses.reset();
    const res = await t.send(tx(['b@example.com'], BODY, 7));
    assert.equal(res[0].class, 'delivered');
    assert.equal(ses.messages[0].body.toString(), `X-SES-CONFIGURATION-SET: relay-events\r\n${BODY}`);
  });

  it('does not add one when the message carries its own (any case, any chunking)', async () => {
    ses.reset();
    const own = `Subject: x\r\nx-ses-configuration-set: marketing\r\nFrom: a@example.com\r\n\r\nbody\r\n`;
    await t.send(tx(['b@example.com'], own, 13));
    assert.equal(ses.messages[0].body.toString(), own);
  });

  it('a folded continuation line is not a header of its own', async () => {
    ses.reset();
    const folded = `Subject: a\r\n X-SES-CONFIGURATION-SET: no\r\n\r\nbody\r\n`;
    await t.send(tx(['b@example.com'], folded));
    assert.ok(ses.messages[0].body.toString().startsWith('X-SES-CONFIGURATION-SET: relay-events\r\n'));
  });

  it('a body that fails while streaming is still reported as unreadable, nothing accepted', async () => {
    ses.reset();
    const broken: Transaction = {
      ...tx(['b@example.com']),
      body: () =>
        Readable.from(
          (async function* () {
            yield Buffer.from('Subject: x\r\n\r\npart');
            throw new Error('EIO: i/o error');
          })(),
        ),
    };
    const res = await t.send(broken);
    assert.equal(res[0].class, 'transient');
    assert.match(res[0].reply, /spooled body unreadable: EIO/);
    assert.equal(ses.messages.length, 0);
  });
});

describe('prependHeaderUnlessPresent', () => {
  const collect = async (r: Readable) => {
    const chunks: Buffer[] = [];
    for await (const c of r) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString();
  };
  it('handles a message with no body and no blank line, LF-only endings and an empty message', async () => {
    const run = (s: string) =>
      collect(prependHeaderUnlessPresent(Readable.from([Buffer.from(s)]), 'X-A', 'v'));
    assert.equal(await run('Subject: x\r\n'), 'X-A: v\r\nSubject: x\r\n');
    assert.equal(await run('Subject: x\nX-A: own\n\nbody'), 'Subject: x\nX-A: own\n\nbody');
    assert.equal(await run(''), 'X-A: v\r\n');
  });
  it('never lets CR/LF from the value into the message', async () => {
    const out = await collect(
      prependHeaderUnlessPresent(Readable.from([Buffer.from('S: x\r\n\r\n')]), 'X-A', 'a\r\nBcc: x'),
    );
    assert.equal(out, 'X-A: a Bcc: x\r\nS: x\r\n\r\n');
  });
});
