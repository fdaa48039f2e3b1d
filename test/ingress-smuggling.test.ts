/**
 * SMTP smuggling: end of DATA is only <CRLF>.<CRLF>; every published lookalike stays in the body of
 * the ONE message being received, and the stored body has only CRLF line endings (bare LF and bare CR
 * normalised to CRLF, see src/ingress/line-endings.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { LineEndingNormalizer, normalizeLineEndings } from '../src/ingress/line-endings';
import { type SmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

const VARIANTS: Record<string, string> = {
  'LF.LF': '\n.\n',
  'CR.CR': '\r.\r',
  'LF.CRLF': '\n.\r\n',
  'CRLF.LF': '\r\n.\n',
  'CRLF.CR': '\r\n.\r',
  'CR.CRLF': '\r.\r\n',
  'LF.CR': '\n.\r',
};

const SMUGGLED =
  'MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<target@example.net>\r\nDATA\r\n' +
  'From: ceo@victim.example\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n';

function onlyCrlf(body: Buffer): boolean {
  for (let i = 0; i < body.length; i++) {
    if (body[i] === 0x0d && body[i + 1] !== 0x0a) return false;
    if (body[i] === 0x0a && body[i - 1] !== 0x0d) return false;
  }
  return true;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('ingress SMTP smuggling', () => {
  let listener: SmtpListener;
  let spool: MemorySpool;
  before(async () => {
    spool = new MemorySpool();
    ({ listener } = await startTestListener({}, { spool }));
  });
  after(() => listener.close(1000));

  for (const [name, seq] of Object.entries(VARIANTS)) {
    for (const mode of ['one write', 'split writes'] as const) {
      it(`${name} (${mode}): one message, smuggled text stays in the body`, async () => {
        const before = spool.messages.length;
        const c = await RawSmtpClient.connect(listener.address().port);
        try {
          await c.read();
          await c.command('EHLO client.test');
          assert.equal((await c.command('MAIL FROM:<app@example.com>')).code, 250);
          assert.equal((await c.command('RCPT TO:<user@example.net>')).code, 250);
          assert.equal((await c.command('DATA')).code, 354);
          const head = 'From: app@example.com\r\nSubject: legit\r\n\r\nlegit body';
          const content = `${head}${seq}${SMUGGLED}`;
          if (mode === 'one write') {
            c.write(`${content}.\r\n`);
          } else {
            (c.socket as import('node:net').Socket).setNoDelay(true);
            c.write(head);
            for (const ch of seq) {
              await sleep(2);
              c.write(ch);
            }
            await sleep(2);
            c.write(`${SMUGGLED}.\r\n`);
          }
          const reply = await c.read();
          assert.match(reply.text, /^250 2\.0\.0 Ok: queued as /);
          // Exactly one reply: the next one answers our QUIT, not a smuggled command.
          assert.equal((await c.command('QUIT')).code, 221);
          assert.equal(spool.messages.length, before + 1);
          const body = spool.messages.at(-1)!.body;
          assert.equal(
            body.toString('latin1'),
            normalizeLineEndings(Buffer.from(content, 'latin1')).toString('latin1'),
          );
          assert.ok(body.includes('MAIL FROM:<ceo@victim.example>'));
          assert.ok(onlyCrlf(body), JSON.stringify(body.toString('latin1')));
          assert.deepEqual(spool.messages.at(-1)!.envelope.recipients, ['user@example.net']);
        } finally {
          c.close();
        }
      });
    }
  }

  it('pipelined commands after a real end-of-data still work (control)', async () => {
    const before = spool.messages.length;
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      c.write('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n');
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 354);
      c.write('one\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n');
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 250);
      assert.equal((await c.read()).code, 354);
      assert.equal((await c.command('two\r\n.')).code, 250);
      assert.equal(spool.messages.length, before + 2);
    } finally {
      c.close();
    }
  });
});

describe('LineEndingNormalizer', () => {
  it('turns bare LF and bare CR into CRLF and keeps CRLF, across any chunk boundary', async () => {
    const input = Buffer.from('a\r\nb\nc\rd\r\r\n\n\r.\r\n.\n\r', 'latin1');
    const expected = 'a\r\nb\r\nc\r\nd\r\n\r\n\r\n\r\n.\r\n.\r\n\r\n';
    assert.equal(normalizeLineEndings(input).toString('latin1'), expected);
    for (let cut = 0; cut <= input.length; cut++) {
      const n = new LineEndingNormalizer();
      const out: Buffer[] = [];
      n.on('data', (d: Buffer) => out.push(d));
      const ended = new Promise((r) => n.on('end', r));
      n.write(input.subarray(0, cut));
      n.end(input.subarray(cut));
      await ended;
      assert.equal(Buffer.concat(out).toString('latin1'), expected, `cut at ${cut}`);
      assert.equal(n.bytesOut, expected.length);
    }
  });
});
