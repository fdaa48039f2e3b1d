/**
 * Odd address syntax for the protocol fuzzer, sent by an authenticated client: comments, quoted local parts,
 * list separators, source routes, address literals, over-long parts, case, empty and broken paths. The relay
 * may accept or refuse each one; what it accepts must reach SES exactly as accepted (checked by the test
 * through the token of the message).
 */
import { login, quit, session, transaction, VALID_FROM, type FuzzContext } from './fuzz-steps';

export const ODD_ADDRESSES: readonly string[] = [
  'victim(comment)@example.com',
  '(c)@example.com',
  'victim@example.com(comment)',
  '"victim"@example.com',
  '"a b"@example.com',
  '"a\\"b"@example.com',
  '"a\\\\b"@example.com',
  'x,victim@example.com',
  'a;victim@example.com',
  '@route.example:user@example.com',
  '@a.example,@b.example:user@example.com',
  'user@[127.0.0.1]',
  'user@[IPv6:::1]',
  'user@[999.1.1.1]',
  'a@b@example.com',
  'a..b@example.com',
  '.a@example.com',
  'a.@example.com',
  'user@example.com.',
  'user@-example.com',
  'user@exa_mple.com',
  'user@localhost',
  'user@example',
  'USER@EXAMPLE.COM',
  'user+tag@example.com',
  'user%other@example.com',
  'user!path@example.com',
  "o'brien@example.com",
  'user@xn--bcher-kva.example',
  `${'l'.repeat(65)}@example.com`,
  `user@${`${'d'.repeat(63)}.`.repeat(4)}com`,
  'user',
  'user@',
  '@example.com',
  'us er@example.com',
  'user@exam ple.com',
  'user@example.com>',
  '<user@example.com',
  'user\\@x@example.com',
  'user\t@example.com',
  'Postmaster',
  'postmaster@relay.test',
  'user@EXAMPLE.com',
  'a=b@example.com',
  '{user}@example.com',
  'user@example.com SIZE=1',
];

/** How an address is put into the command: `<a>` mostly, sometimes bare, spaced or lowercased. */
function pathOf(ctx: FuzzContext, address: string): string {
  return ctx.rng.pick([`<${address}>`, `<${address}>`, `<${address}>`, address, ` <${address}>`]);
}

export async function oddAddressSession(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const odd = () => ctx.rng.pick(ODD_ADDRESSES);
  const recipients = Array.from({ length: ctx.rng.int(1, 3) }, () => odd());
  const from = ctx.rng.chance(0.3) ? odd() : VALID_FROM;
  if (ctx.rng.chance(0.8)) {
    await transaction(ctx, c, { from, recipients, mustSucceed: false, odd: true });
  } else {
    // The path exactly as written (bare, spaced): only the replies are checked.
    for (const line of [
      `MAIL FROM:${pathOf(ctx, from)}`,
      ...recipients.map((r) => `rcpt to:${pathOf(ctx, r)}`),
    ]) {
      const r = await c.command(line);
      if (!r) {
        if (!c.closed) ctx.violation(`no reply to ${JSON.stringify(line.slice(0, 60))}`);
        return;
      }
    }
    await c.command('RSET');
  }
  await quit(ctx, c);
}
