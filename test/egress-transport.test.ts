import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { Readable } from 'node:stream';
import { SesSmtpTransport, type SesSmtpTransportOptions } from '../src/egress/transport/ses-smtp-transport';
import { OutboxTransport } from '../src/egress/transport/outbox-transport';
import type { Transaction } from '../src/egress/transport/transport';
import { silentLogger } from '../src/observability/logger';
import { FAKE_REPLIES, FAKE_SES_CA, startFakeSes, type FakeSes } from './helpers/fake-ses';

const BODY =
  'From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\nX-Custom:  kept   as is\r\n\r\nHello\r\n';

function tx(recipients: string[], body: string | Buffer = BODY, id = 'Q1'): Transaction {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  return {
    id,
    mailFrom: 'sender@example.com',
    recipients,
    body: () => Readable.from([buf]),
    size: buf.length,
  };
}

function transport(ses: FakeSes, extra: Partial<SesSmtpTransportOptions> = {}): SesSmtpTransport {
  return new SesSmtpTransport({
    host: ses.host,
    port: ses.port,
    secure: false,
    username: ses.username,
    password: ses.password,
    poolSize: 2,
    maxMessagesPerConnection: 100,
    maxConnectionAgeMs: 60_000,
    connectionTimeoutMs: 3000,
    tls: { ca: FAKE_SES_CA },
    logger: silentLogger,
    ...extra,
  });
}

describe('SesSmtpTransport against the fake SES', () => {
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

  it('delivers with the explicit envelope and the body bytes untouched', async () => {
    ses.reset();
    const res = await t.send(tx(['b@example.com', 'c@example.com']));
    assert.deepEqual(
      res.map((r) => [r.recipient, r.class, r.code]),
      [
        ['b@example.com', 'delivered', 250],
        ['c@example.com', 'delivered', 250],
      ],
    );
    assert.equal(ses.messages.length, 1);
    assert.equal(ses.messages[0].mailFrom, 'sender@example.com');
    assert.deepEqual(ses.messages[0].recipients, ['b@example.com', 'c@example.com']);
    assert.equal(ses.messages[0].body.toString(), BODY);
    assert.ok(t.healthy());
  });

  it('dot-stuffs and normalises line endings: no SMTP smuggling upstream', async () => {
    ses.reset();
    const evil =
      'Subject: smuggle\n\nline one\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n' +
      'Subject: smuggled\r\n\r\nx\r\n.\r\n.leading dot\r\nbare\rcr\n';
    const res = await t.send(tx(['b@example.com'], evil));
    assert.equal(res[0].class, 'delivered');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ses.messages.length, 1, 'exactly one transaction upstream');
    assert.deepEqual(ses.messages[0].recipients, ['b@example.com']);
    const body = ses.messages[0].body.toString();
    assert.ok(!/[^\r]\n/.test(body) && !/\r(?!\n)/.test(body), 'only CRLF line endings');
    assert.match(body, /\r\n\.\r\nMAIL FROM:<evil@example.com>/, 'the dot line arrived as content');
    assert.match(body, /\r\n\.leading dot\r\n/);
  });

  it('classifies per-recipient replies (550 permanent, 451 transient, 250 delivered)', async () => {
    ses.reset();
    ses.queueRcpt('gone@example.com', FAKE_REPLIES.mailboxUnavailable);
    ses.queueRcpt('later@example.com', { code: 451, message: '4.3.0 try later' });
    const res = await t.send(tx(['ok@example.com', 'gone@example.com', 'later@example.com']));
    const by = Object.fromEntries(res.map((r) => [r.recipient, r]));
    assert.equal(by['ok@example.com'].class, 'delivered');
    assert.equal(by['gone@example.com'].class, 'permanent');
    assert.equal(by['gone@example.com'].code, 550);
    assert.match(by['gone@example.com'].reply, /Mailbox unavailable/);
    assert.equal(by['later@example.com'].class, 'transient');
    assert.equal(by['later@example.com'].code, 451);
    assert.deepEqual(ses.messages[0].recipients, ['ok@example.com']);
  });

  it('all recipients refused: each gets its own class', async () => {
    ses.queueRcpt('x@example.com', FAKE_REPLIES.mailboxUnavailable);
    ses.queueRcpt('y@example.com', { code: 450, message: '4.2.0 busy' });
    const res = await t.send(tx(['x@example.com', 'y@example.com']));
    assert.deepEqual(
      res.map((r) => [r.class, r.code]),
      [
        ['permanent', 550],
        ['transient', 450],
      ],
    );
  });

  it('classifies message-level replies', async () => {
    const cases: Array<[object, string, number]> = [
      [FAKE_REPLIES.throttling, 'throttled', 454],
      [FAKE_REPLIES.dailyQuota, 'transient', 454],
      [FAKE_REPLIES.temporaryFailure, 'transient', 451],
      [FAKE_REPLIES.serviceUnavailable, 'transient', 421],
      [FAKE_REPLIES.messageRejected, 'permanent', 554],
      [FAKE_REPLIES.drop, 'transient', 0],
    ];
    for (const [answer, cls, code] of cases) {
      ses.queueData(answer);
      const res = await t.send(tx(['a@example.com', 'b@example.com']));
      assert.deepEqual(
        res.map((r) => [r.class, r.code]),
        [
          [cls, code],
          [cls, code],
        ],
        JSON.stringify(answer),
      );
    }
    // After the failures the pool still works.
    const ok = await t.send(tx(['a@example.com']));
    assert.equal(ok[0].class, 'delivered');
    assert.match((await t.send(tx(['a@example.com'])))[0].reply, /^250/);
  });

  it('reuses pooled connections and recycles after maxMessagesPerConnection', async () => {
    ses.reset();
    const pooled = transport(ses, { poolSize: 2, maxMessagesPerConnection: 1000 });
    await Promise.all(Array.from({ length: 20 }, (_, i) => pooled.send(tx([`r${i}@example.com`]))));
    await pooled.close();
    assert.equal(ses.messages.length, 20);
    assert.ok(ses.connectionsOpened <= 2, `pooled: ${ses.connectionsOpened} connections for 20 messages`);

    ses.reset();
    const recycled = transport(ses, { poolSize: 1, maxMessagesPerConnection: 3 });
    for (let i = 0; i < 9; i++) await recycled.send(tx([`s${i}@example.com`]));
    await recycled.close();
    const perConn = new Map<string, number>();
    for (const m of ses.messages) perConn.set(m.connectionId, (perConn.get(m.connectionId) ?? 0) + 1);
    assert.equal(perConn.size, 3, `connections used: ${perConn.size}`);
    assert.ok([...perConn.values()].every((n) => n <= 3));
  });

  it('recycles the pool by age, letting in-flight sends finish', async () => {
    ses.reset();
    const aged = transport(ses, { poolSize: 1, maxConnectionAgeMs: 150 });
    ses.queueData({ delayMs: 300 });
    const slow = aged.send(tx(['slow@example.com']));
    await new Promise((r) => setTimeout(r, 200));
    const fast = await aged.send(tx(['fast@example.com']));
    assert.equal(fast[0].class, 'delivered');
    assert.equal((await slow)[0].class, 'delivered', 'in-flight send of the old pool finished');
    assert.equal(aged.poolGenerations, 2);
    await aged.close();
    assert.equal(new Set(ses.messages.map((m) => m.connectionId)).size, 2);
  });

  it('an unreadable spooled body is transient and sends nothing', async () => {
    ses.reset();
    const missing: Transaction = {
      ...tx(['a@example.com']),
      body: () => {
        throw new Error('spool has no message Q1');
      },
    };
    const broken: Transaction = {
      ...tx(['a@example.com']),
      body: () =>
        new Readable({
          read() {
            this.push('Subject: half\r\n');
            this.destroy(new Error('EIO'));
          },
        }),
    };
    for (const bad of [missing, broken]) {
      const res = await t.send(bad);
      assert.deepEqual([res[0].class, res[0].code], ['transient', 0]);
      assert.match(res[0].reply, /body unreadable/);
    }
    assert.equal(ses.messages.length, 0);
    assert.equal((await t.send(tx(['a@example.com'])))[0].class, 'delivered', 'the pool still works');
  });

  it('AUTH failure is transient (mail stays queued)', async () => {
    const bad = transport(ses, { password: 'wrong' });
    const res = await bad.send(tx(['a@example.com']));
    await bad.close();
    assert.equal(res[0].class, 'transient');
    assert.equal(res[0].code, 535);
  });

  it('verifies the certificate: an unknown CA fails as a network error', async () => {
    const untrusted = transport(ses, { tls: {} });
    const res = await untrusted.send(tx(['a@example.com']));
    await untrusted.close();
    assert.equal(res[0].class, 'transient');
    assert.equal(res[0].code, 0);
    assert.equal(untrusted.healthy(), false);
  });

  it('connection refused is transient with code 0 and marks the transport unhealthy', async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise((r) => srv.close(r));
    const dead = new SesSmtpTransport({ ...transportOpts(ses), port });
    const res = await dead.send(tx(['a@example.com']));
    await dead.close();
    assert.deepEqual([res[0].class, res[0].code], ['transient', 0]);
    assert.equal(dead.healthy(), false);
  });
});

function transportOpts(ses: FakeSes): SesSmtpTransportOptions {
  return {
    host: ses.host,
    port: ses.port,
    secure: false,
    username: ses.username,
    password: ses.password,
    poolSize: 1,
    maxMessagesPerConnection: 100,
    maxConnectionAgeMs: 60_000,
    connectionTimeoutMs: 2000,
    tls: { ca: FAKE_SES_CA },
    logger: silentLogger,
  };
}

describe('SesSmtpTransport with implicit TLS (465)', () => {
  it('delivers over implicit TLS', async (t) => {
    const ses = await startFakeSes({ implicitTls: true });
    const tr = new SesSmtpTransport({ ...transportOpts(ses), secure: true });
    t.after(async () => {
      await tr.close();
      await ses.close();
    });
    const res = await tr.send(tx(['a@example.com']));
    assert.equal(res[0].class, 'delivered');
    assert.equal(ses.messages.length, 1);
  });
});

describe('OutboxTransport', () => {
  it('writes one fsynced .eml per transaction with envelope headers', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const outbox = new OutboxTransport({ dir: path.join(dir, 'out'), logger: silentLogger });
    const [a, b] = await Promise.all([
      outbox.send(tx(['x@example.com', 'y@example.com'], BODY, 'QID1')),
      outbox.send(tx(['z@example.com'], BODY, 'QID1')),
    ]);
    assert.ok([...a, ...b].every((r) => r.class === 'delivered' && r.code === 250));
    const files = fs.readdirSync(path.join(dir, 'out')).sort();
    assert.deepEqual(files, ['QID1-1.eml', 'QID1.eml']);
    const all = files.map((f) => fs.readFileSync(path.join(dir, 'out', f), 'utf8'));
    const first = all.find((c) => c.includes('<x@example.com>'))!;
    assert.equal(
      first,
      'X-Envelope-From: <sender@example.com>\r\nX-Envelope-To: <x@example.com>, <y@example.com>\r\n' + BODY,
    );
    assert.ok(outbox.healthy());
    assert.match(outbox.name, /^outbox:/);
  });

  it('a .eml is complete from the moment it appears (never a reserved or half-written file)', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outbox-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const out = path.join(dir, 'out');
    const outbox = new OutboxTransport({ dir: out, logger: silentLogger });
    const slowTx = (id: string): Transaction => ({
      ...tx(['x@example.com'], BODY, id),
      // The body arrives in pieces, with pauses: a writer that reserved the final name first would
      // expose an empty or partial .eml meanwhile.
      body: () =>
        Readable.from(
          (async function* () {
            for (const piece of BODY.match(/[\s\S]{1,16}/g)!) {
              await new Promise((r) => setTimeout(r, 2));
              yield Buffer.from(piece);
            }
          })(),
        ),
    });
    const expected = 'X-Envelope-From: <sender@example.com>\r\nX-Envelope-To: <x@example.com>\r\n' + BODY;
    let seen = 0;
    let done = false;
    const watcher = (async () => {
      while (!done) {
        const names = fs.existsSync(out) ? fs.readdirSync(out).filter((f) => f.endsWith('.eml')) : [];
        for (const f of names) {
          assert.equal(fs.readFileSync(path.join(out, f), 'utf8'), expected, `${f} incomplete when seen`);
          seen++;
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => outbox.send(slowTx(`Q${i % 3}`))));
    done = true;
    await watcher;
    assert.ok(results.flat().every((r) => r.class === 'delivered'));
    const files = fs.readdirSync(out).sort();
    assert.equal(files.filter((f) => f.endsWith('.eml')).length, 10);
    assert.deepEqual(
      files.filter((f) => !f.endsWith('.eml')),
      [],
      'no temporary file left',
    );
    assert.ok(seen > 0, 'the watcher saw files while they were being written');
  });
});
