/**
 * The kinds of session the protocol fuzzer mixes (test/protocol-fuzz.test.ts). Each is one async function of
 * a FuzzContext; all of its randomness comes from ctx.rng, so session N of seed S is always the same bytes.
 * Sessions report broken invariants with ctx.violation and never throw on a misbehaving server.
 */
import {
  b64,
  commands,
  describe,
  greet,
  hello,
  opening,
  login,
  message,
  quit,
  quitAfterBurst,
  randomRecipient,
  session,
  sleep,
  transaction,
  VALID_FROM,
  type FuzzContext,
} from './fuzz-steps';
import { ODD_ADDRESSES, oddAddressSession } from './fuzz-addresses';
import { longLine, overlong, oversize } from './fuzz-limits';

export type SessionKind =
  | 'valid'
  | 'garbage'
  | 'nul'
  | 'eightBit'
  | 'longLine'
  | 'overlong'
  | 'oversize'
  | 'badAuth'
  | 'pipelined'
  | 'bdat'
  | 'starttlsDrop'
  | 'noAuth'
  | 'oddAddress'
  | 'midData'
  | 'smuggle'
  | 'halfOpen'
  | 'slow';

/** How often each kind is drawn. STARTTLS-then-drop only runs in the TLS phase (see the test). */
export const KIND_WEIGHTS: Record<SessionKind, number> = {
  valid: 10,
  garbage: 8,
  nul: 5,
  eightBit: 5,
  longLine: 5,
  overlong: 5,
  oversize: 2,
  badAuth: 8,
  pipelined: 8,
  bdat: 4,
  starttlsDrop: 5,
  noAuth: 8,
  oddAddress: 6,
  midData: 6,
  smuggle: 6,
  halfOpen: 4,
  slow: 3,
};

/** Command words garbage may start with (STARTTLS only where TLS sessions are wanted). */
const WORDS = [
  'MAIL FROM:',
  'RCPT TO:',
  'AUTH PLAIN ',
  'AUTH LOGIN ',
  'DATA',
  'BDAT ',
  'EHLO ',
  'HELO ',
  'XCLIENT ',
];

/** The legitimate client: AUTH, then one to three messages, some pipelined, some 8-bit or dot-heavy. */
async function valid(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  for (let n = ctx.rng.int(1, 3); n > 0 && !c.closed; n--) {
    const body = ctx.rng.pick([
      'plain text',
      '.leading dot\r\n..two dots\r\n.',
      `8-bit \xe9\xe8\xff text`,
      'x'.repeat(998),
      ctx.rng.text(ctx.rng.int(1, 4000), 'abc \r\n.'),
    ]);
    const recipients = Array.from(
      { length: ctx.rng.int(1, 3) },
      (_, i) => `v${ctx.index}-${n}-${i}@example.net`,
    );
    await transaction(ctx, c, {
      recipients,
      body,
      mailParams: /[\x80-\xff]/.test(body) ? 'BODY=8BITMIME' : undefined,
      pipelined: ctx.rng.chance(0.4),
      mustSucceed: true,
    });
    if (ctx.rng.chance(0.3)) await commands(ctx, c, ['RSET']);
  }
  await quit(ctx, c);
}

/** Random bytes, sometimes cut into lines, sometimes after a command word. */
async function garbage(ctx: FuzzContext): Promise<void> {
  const full = ctx.rng.chance(0.7);
  const c = await ctx.open('attacker');
  if (!c || !(await (full ? greet(ctx, c).then((ok) => ok && hello(ctx, c)) : opening(ctx, c)))) return;
  const words = ctx.tls ? [...WORDS, 'STARTTLS'] : WORDS;
  for (let round = ctx.rng.int(1, 5); round > 0 && !c.closed; round--) {
    const bytes = ctx.rng.bytes(ctx.rng.int(1, 2048));
    if (ctx.rng.chance(0.5))
      for (let k = ctx.rng.int(1, 8); k > 0; k--)
        bytes.write('\r\n', ctx.rng.int(0, bytes.length - 1), 'latin1');
    const head = ctx.rng.chance(0.3) ? Buffer.from(ctx.rng.pick(words), 'latin1') : Buffer.alloc(0);
    c.write(Buffer.concat([head, bytes]));
    await c.drain(50, 1000);
  }
  c.write('\r\nQUIT\r\n');
  await c.drain(100, 2000);
}

/** NUL bytes in commands (before AUTH) and in an address or a body (after AUTH). */
async function nul(ctx: FuzzContext): Promise<void> {
  if (ctx.rng.chance(0.6)) {
    const c = await ctx.open('attacker');
    if (!c || !(await opening(ctx, c))) return;
    const lines = ['EHLO fu\0zz.test', '\0EHLO fuzz.test', 'HELO \0', 'NOOP \0\0', '\0\0\0\0', 'RSET\0'];
    lines.push(
      'MAIL FROM:<a\0b@example.com>',
      'RCPT TO:<\0@example.net>',
      'AUTH PLAIN \0',
      `AUTH PLAIN ${b64('\0\0\0')}`,
    );
    await commands(ctx, c, [ctx.rng.pick(lines), ctx.rng.pick(lines), ctx.rng.pick(lines)]);
    await quit(ctx, c);
    return;
  }
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const where = ctx.rng.pick(['from', 'rcpt', 'body'] as const);
  await transaction(ctx, c, {
    from: where === 'from' ? 'nu\0l@example.com' : VALID_FROM,
    recipients: [where === 'rcpt' ? 'nu\0l@example.net' : randomRecipient(ctx)],
    body: where === 'body' ? 'a\0b\0\0c' : undefined,
    mustSucceed: false,
    odd: where !== 'body',
  });
  await quit(ctx, c);
}

/** Bytes 0x80-0xff in EHLO, commands, AUTH and addresses; an 8BITMIME body after AUTH. */
async function eightBit(ctx: FuzzContext): Promise<void> {
  const high = (n: number) => ctx.rng.text(n, '\x80\x9b\xa0\xc3\xa9\xe2\x80\xff\xfe');
  if (ctx.rng.chance(0.6)) {
    const c = await ctx.open('attacker');
    if (!c || !(await opening(ctx, c))) return;
    await commands(ctx, c, [
      ctx.rng.pick([`EHLO h${high(3)}llo.test`, `EHLO ${high(20)}`, `HELO ${high(5)}`]),
      ctx.rng.pick([
        high(10),
        `MAIL FROM:<${high(4)}@example.com>`,
        `AUTH PLAIN ${b64(`\0${high(4)}\0${high(6)}`)}`,
      ]),
      `VRFY ${high(8)}`,
    ]);
    await quit(ctx, c);
    return;
  }
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const where = ctx.rng.pick(['from', 'rcpt', 'body'] as const);
  await transaction(ctx, c, {
    from: where === 'from' ? `s${high(3)}@example.com` : VALID_FROM,
    recipients: [where === 'rcpt' ? `r${high(2)}@ex${high(2)}.net` : randomRecipient(ctx)],
    body: where === 'body' ? `caf\xe9 ${high(200)}` : undefined,
    mailParams: where === 'body' ? 'BODY=8BITMIME' : undefined,
    mustSucceed: where === 'body',
    odd: where !== 'body',
  });
  await quit(ctx, c);
}

/** Broken base64 and wrong credentials in AUTH PLAIN / LOGIN; then a mail attempt that must stay refused. */
async function badAuth(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'attacker');
  if (!c) return;
  const { user, password } = ctx;
  const wrong = ctx.rng.pick([
    `${password}x`,
    password.slice(0, -1),
    password.toUpperCase(),
    `${password}\0`,
    '',
    ctx.rng.text(12),
  ]);
  const name = ctx.rng.pick([user, user.toUpperCase(), `${user} `, ctx.rng.text(8), '', `${user}\0${user}`]);
  const variant = ctx.rng.int(0, 13);
  const steps: string[][] = [
    ['AUTH PLAIN !!!not*base64!!!'],
    ['AUTH PLAIN', '%%%%'],
    ['AUTH PLAIN', '*'],
    [`AUTH PLAIN ${b64(`${user}${password}`)}`],
    ['AUTH PLAIN ='],
    [`AUTH PLAIN ${b64(`\0${name}\0${wrong}`)}`],
    [`AUTH PLAIN ${b64(`\0${user}\0${password}`).slice(0, -3)}`],
    ['AUTH LOGIN', 'not base64 at all'],
    ['AUTH LOGIN', b64(name), '@@@'],
    ['AUTH LOGIN', b64(name), b64(wrong)],
    [`AUTH LOGIN ${b64(name)}`, b64(wrong)],
    [`AUTH PLAIN ${b64(ctx.rng.bytes(ctx.rng.int(1000, 12_000)))}`],
    [ctx.rng.pick(['AUTH CRAM-MD5', 'AUTH XOAUTH2 dXNlcj0=', 'AUTH', 'AUTH plain', 'AUTH PLAIN a b c'])],
    ['AUTH LOGIN', '*'],
  ];
  for (const line of steps[variant]) {
    const r = await c.command(line);
    if (!r) {
      if (!c.closed)
        ctx.violation(`AUTH variant ${variant}: no reply to ${JSON.stringify(line.slice(0, 40))}`);
      return;
    }
    if (r.code !== 334) break;
  }
  const token = ctx.token('unauth');
  c.write(`MAIL FROM:<${VALID_FROM}>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n${message(token)}.\r\n`);
  // These lines may be read as a password (then 535 after the relay's 1 s delay) or as unknown commands.
  await quitAfterBurst(ctx, c);
}

/** Bursts of commands in one write: an unauthenticated burst with a whole message, or RFC 2920 groups. */
async function pipelined(ctx: FuzzContext): Promise<void> {
  if (ctx.rng.chance(0.5)) {
    const c = await session(ctx, 'client');
    if (!c || !(await login(ctx, c))) return;
    for (let n = ctx.rng.int(1, 3); n > 0; n--)
      await transaction(ctx, c, {
        recipients: Array.from({ length: ctx.rng.int(1, 5) }, () => randomRecipient(ctx)),
        pipelined: true,
        mustSucceed: true,
      });
    return quit(ctx, c);
  }
  const c = await ctx.open('attacker');
  if (!c || !(await opening(ctx, c))) return;
  const token = ctx.token('unauth');
  const burst: string[] = [`EHLO burst.test`];
  for (let n = ctx.rng.int(1, 30); n > 0; n--)
    burst.push(
      ctx.rng.pick([
        'NOOP',
        'RSET',
        'VRFY root',
        'HELP',
        `MAIL FROM:<${VALID_FROM}>`,
        'RCPT TO:<v@example.net>',
      ]),
    );
  burst.push('DATA', message(token), '.', 'QUIT');
  c.write(burst.join('\r\n') + '\r\n');
  await c.drain(200, 5000);
}

/** BDAT (RFC 3030, not offered): the chunk's bytes are read as commands and must not make a message. */
async function bdat(ctx: FuzzContext): Promise<void> {
  const authenticated = ctx.rng.chance(0.5);
  const c = await session(ctx, authenticated ? 'client' : 'attacker');
  if (!c || (authenticated && !(await login(ctx, c)))) return;
  const token = ctx.token(authenticated ? 'maybe' : 'unauth');
  const chunk = `${message(token)}`;
  const lines = [`MAIL FROM:<${VALID_FROM}>`, `RCPT TO:<${randomRecipient(ctx)}>`];
  const size = ctx.rng.pick([chunk.length, 0, -1, 99_999_999_999, 10]);
  c.write(`${lines.join('\r\n')}\r\nBDAT ${size} LAST\r\n${chunk}`);
  await quitAfterBurst(ctx, c);
  if (c.replies.some((r) => /queued as/.test(r.text))) ctx.note('bdat: a message was queued');
}

/** STARTTLS and then: drop, garbage instead of TLS, a cut handshake, commands injected before TLS. */
async function starttlsDrop(ctx: FuzzContext): Promise<void> {
  const c = await ctx.open(ctx.rng.chance(0.2) ? 'client' : 'attacker');
  if (!c || !(await greet(ctx, c))) return;
  const variant = ctx.rng.pick([
    'drop',
    'garbage',
    'cut-handshake',
    'inject',
    'twice',
    'before-ehlo',
    'argument',
  ]);
  if (variant === 'argument') {
    await commands(ctx, c, ['EHLO x.test', 'STARTTLS now']);
    return quit(ctx, c);
  }
  if (variant === 'before-ehlo') {
    const [r] = await commands(ctx, c, ['STARTTLS']);
    if (r?.code === 220 && (await c.startTls(ctx.ca))) await commands(ctx, c, ['EHLO late.test']);
    return quit(ctx, c);
  }
  await commands(ctx, c, ['EHLO tls-drop.test']);
  if (variant === 'inject') {
    // CVE-2011-0411 style: plaintext after STARTTLS must be discarded, not run inside TLS.
    c.write(`STARTTLS\r\nMAIL FROM:<injected@example.com>\r\nRSET\r\n`);
    const r = await c.read();
    if (r?.code !== 220) return;
    if (!(await c.startTls(ctx.ca))) return;
    const ehlo = await c.command('EHLO tls-drop.test');
    if (ehlo?.code !== 250) ctx.violation(`after injected STARTTLS, EHLO answered ${describe(ehlo)}`);
    const extra = await c.drain(200, 1000);
    if (extra.length) ctx.violation(`after injected STARTTLS, extra replies ${describe(extra[0])}`);
    return quit(ctx, c);
  }
  const r = await c.command('STARTTLS');
  if (r?.code !== 220) return ctx.violation(`STARTTLS: ${describe(r)}`);
  if (variant === 'drop') return c.destroy();
  if (variant === 'garbage') {
    c.write(ctx.rng.bytes(ctx.rng.int(1, 600)));
    if (!(await c.waitClosed(10_000)))
      ctx.violation('garbage instead of a TLS handshake: connection kept open');
    return;
  }
  if (variant === 'cut-handshake') return c.abortTlsHandshake(ctx.rng.int(0, 15));
  if (!(await c.startTls(ctx.ca))) return ctx.violation('STARTTLS handshake failed');
  await commands(ctx, c, ['EHLO tls-drop.test', 'STARTTLS']);
  if (ctx.rng.chance(0.5)) c.write('MAIL FROM:<half-written@exa');
  c.destroy();
}

/** MAIL / RCPT / DATA without AUTH, trusted-network spoofing (XCLIENT, XFORWARD, PROXY): all refused. */
async function noAuth(ctx: FuzzContext): Promise<void> {
  const c = await ctx.open('attacker');
  if (!c) return;
  if (!(await greet(ctx, c))) return;
  // A PROXY header (the relay does not use the PROXY protocol) must not make this client trusted.
  if (ctx.rng.chance(0.2)) await commands(ctx, c, ['PROXY TCP4 192.0.2.1 127.0.0.1 1234 25']);
  if (!(await hello(ctx, c, ctx.rng.pick(['fuzz.test', 'relay.test', '[192.0.2.1]'])))) return;
  if (ctx.rng.chance(0.3))
    await commands(ctx, c, [
      ctx.rng.pick(['XCLIENT ADDR=192.0.2.1', 'XFORWARD ADDR=192.0.2.1', 'HELO 192.0.2.1']),
    ]);
  const sender = ctx.rng.pick([VALID_FROM, '', 'postmaster@relay.test']);
  const [mail] = await commands(ctx, c, [`MAIL FROM:<${sender}>`]);
  if (mail && mail.code !== 530)
    ctx.violation(`MAIL FROM without AUTH answered ${describe(mail)} (want 530 5.7.0)`);
  const token = ctx.token('unauth');
  const [rcpt, data] = await commands(ctx, c, [`RCPT TO:<${randomRecipient(ctx)}>`, 'DATA']);
  if (rcpt?.code === 250 || data?.code === 354) ctx.violation('RCPT or DATA accepted without AUTH');
  c.write(`${message(token)}.\r\n`);
  await quitAfterBurst(ctx, c);
}

/** The client goes away in the middle of DATA: the partial message must never be delivered. */
async function midData(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const cut = ctx.rng.pick([
    'destroy',
    'fin',
    'dot-no-crlf',
    'dot-cr',
    'bare-lf-dot',
    'after-header',
  ] as const);
  const tails: Record<typeof cut, string> = {
    destroy: '',
    fin: '',
    'dot-no-crlf': '\r\n.',
    'dot-cr': '\r\n.\r',
    'bare-lf-dot': '\n.\n',
    'after-header': '',
  };
  await transaction(ctx, c, {
    mustSucceed: true,
    cutOff: true,
    raw: (t) => {
      const partial = message(t, ctx.rng.text(ctx.rng.int(0, 20_000), 'abc \r\n'));
      return cut === 'after-header' ? partial.slice(0, partial.indexOf('\r\n') + 2) : partial + tails[cut];
    },
  });
  if (c.closed) return;
  if (cut === 'fin') c.end();
  // Nothing may be acknowledged: the end of data never came.
  const replies = await c.drain(cut === 'fin' ? 300 : 100, 3000);
  if (replies.some((r) => r.code === 250))
    ctx.violation(`cut off mid-DATA (${cut}) and got ${describe(replies.find((r) => r.code === 250))}`);
  c.destroy();
}

/** SMTP smuggling: an end-of-data lookalike and a second message inside one authenticated message. */
async function smuggle(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const seq = ctx.rng.pick([
    '\n.\n',
    '\r.\r',
    '\n.\r\n',
    '\r\n.\n',
    '\r\n.\r',
    '\r.\r\n',
    '\n.\r',
    '\r\n\x00.\r\n',
  ]);
  const hidden = ctx.token('smuggled');
  const second =
    `MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<target@example.net>\r\nDATA\r\n` +
    `X-Fuzz-Token: ${hidden}\r\nSubject: smuggled\r\n\r\nsmuggled\r\n`;
  const split = ctx.rng.chance(0.3);
  await transaction(ctx, c, {
    mustSucceed: true,
    raw: async (t) => {
      const all = `${message(t, 'legit')}${seq}${second}.\r\n`;
      if (!split) return all;
      // The lookalike arrives in its own TCP segments (a different parser path in smtp-server).
      const at = all.indexOf(seq);
      c.write(all.slice(0, at));
      for (const ch of seq) {
        await sleep(3);
        c.write(ch);
      }
      await sleep(3);
      return all.slice(at + seq.length);
    },
  });
  await quit(ctx, c);
}

/** Half-open and stalled connections: FIN early, idle until the socket timeout, a reader that stops reading. */
async function halfOpen(ctx: FuzzContext): Promise<void> {
  const c = await ctx.open('attacker');
  if (!c) return;
  const variant = ctx.rng.pick(['fin-after-commands', 'fin-mid-line', 'fin-in-auth', 'idle', 'no-read']);
  if (variant !== 'no-read' && !(await opening(ctx, c))) return;
  if (variant === 'idle') {
    // SMTP_SOCKET_TIMEOUT (3 s in the test) ends it with a 421.
    if (!(await c.waitClosed(15_000))) ctx.violation('idle connection not closed after the socket timeout');
    else if (c.replies.at(-1)?.code !== 421) ctx.note('idle: closed without a 421');
    return;
  }
  if (variant === 'no-read') {
    c.pause();
    const burst = 'NOOP\r\nRSET\r\nHELP\r\n'.repeat(2000);
    for (let i = ctx.rng.int(1, 10); i > 0 && !c.closed; i--) {
      c.write(burst);
      await sleep(50);
    }
    return c.destroy();
  }
  if (variant === 'fin-after-commands') c.write('EHLO fin.test\r\nNOOP\r\nMAIL FROM:<a@example.com>\r\n');
  if (variant === 'fin-mid-line') c.write('EHLO fin.test\r\nMAIL FROM:<a@exam');
  if (variant === 'fin-in-auth') c.write('EHLO fin.test\r\nAUTH LOGIN\r\n');
  c.end();
  if (!(await c.waitClosed(10_000))) ctx.violation(`${variant}: server kept a half-closed connection open`);
}

/** A writer that sends one byte at a time (bounded to about two seconds). */
async function slow(ctx: FuzzContext): Promise<void> {
  const authenticated = ctx.rng.chance(0.4);
  const c = await ctx.open(authenticated ? 'client' : 'attacker');
  if (!c || !(await greet(ctx, c)) || (ctx.tls && !(await hello(ctx, c)))) return;
  const text = authenticated
    ? `EHLO slow.test\r\nAUTH PLAIN ${b64(`\0${ctx.user}\0${ctx.password}`)}\r\n`
    : `EHLO slow.test\r\nMAIL FROM:<${VALID_FROM}>\r\n`;
  const delay = Math.max(1, Math.floor(2000 / text.length));
  for (const ch of text) {
    c.write(ch);
    await sleep(ctx.rng.int(1, delay));
  }
  const replies = [await c.read(), await c.read()];
  const want = authenticated ? 235 : 530;
  if (replies[1]?.code !== want) ctx.violation(`slow writer: ${describe(replies[1])} (want ${want})`);
  if (authenticated && replies[1]?.code === 235)
    await transaction(ctx, c, { mustSucceed: true, body: 'slow but sure' });
  await quit(ctx, c);
}

export const SESSIONS: Record<SessionKind, (ctx: FuzzContext) => Promise<void>> = {
  valid,
  garbage,
  nul,
  eightBit,
  longLine,
  overlong,
  oversize,
  badAuth,
  pipelined,
  bdat,
  starttlsDrop,
  noAuth,
  oddAddress: oddAddressSession,
  midData,
  smuggle,
  halfOpen,
  slow,
};

export { ODD_ADDRESSES };
