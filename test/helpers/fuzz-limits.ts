/**
 * Fuzz sessions about size limits: 10 KB lines, commands just over the RFC 5321 limits, lines over
 * smtp-server's 16 KB command limit, and messages over SMTP_MAX_MESSAGE_SIZE (FUZZ_MAX_MESSAGE_SIZE here),
 * including one that is under the limit as sent and over it once bare LFs become CRLF (issue 8, defect 6).
 */
import {
  commands,
  login,
  opening,
  quit,
  session,
  transaction,
  VALID_FROM,
  type FuzzContext,
} from './fuzz-steps';

/** SMTP_MAX_MESSAGE_SIZE of the relay under test. */
export const FUZZ_MAX_MESSAGE_SIZE = 256 * 1024;

/** 10 KB lines: as EHLO, unknown command, address and body line; and lines over the 16 KB command limit. */
export async function longLine(ctx: FuzzContext): Promise<void> {
  const long = (n: number) => ctx.rng.text(n, 'abcdefghij.-');
  const variant = ctx.rng.pick(['ehlo', 'command', 'noop', 'over-limit', 'no-newline', 'address', 'body']);
  if (variant === 'address' || variant === 'body') {
    const c = await session(ctx, 'client');
    if (!c || !(await login(ctx, c))) return;
    await transaction(ctx, c, {
      from: variant === 'address' ? `${long(10_240)}@example.com` : VALID_FROM,
      body: variant === 'body' ? long(10_240) : undefined,
      mustSucceed: false,
      odd: variant === 'address',
    });
    return quit(ctx, c);
  }
  const c = await ctx.open('attacker');
  if (!c || !(await opening(ctx, c))) return;
  if (variant === 'over-limit' || variant === 'no-newline') {
    // Over smtp-server's 16 KB command limit: 421 and close (never a buffer that grows).
    c.write(long(ctx.rng.int(17_000, 40_000)) + (variant === 'over-limit' ? '\r\n' : ''));
    if (!(await c.waitClosed(10_000)))
      ctx.violation(`${variant}: connection still open after a 17-40 KB line`);
    return;
  }
  const line = { ehlo: `EHLO ${long(10_240)}`, command: long(10_240), noop: `NOOP ${long(10_240)}` }[
    variant
  ]!;
  await commands(ctx, c, [line, 'NOOP']);
  await quit(ctx, c);
}

/** Commands just over the RFC 5321 limits (512-octet command line, 255-octet domain, 64-octet local part). */
export async function overlong(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'attacker');
  if (!c) return;
  const label = (n: number) => ctx.rng.text(n, 'abcdefghijklmnopqrstuvwxyz');
  await commands(ctx, c, [
    ctx.rng.pick([`EHLO ${label(600)}.test`, `HELO ${label(63)}.${label(64)}.test`, `EHLO [${label(300)}]`]),
    ctx.rng.pick([`NOOP ${label(1000)}`, `HELP ${label(600)}`, `VRFY ${label(600)}`, `RSET ${label(513)}`]),
    ctx.rng.pick([
      `MAIL FROM:<${label(65)}@example.com>`,
      `MAIL FROM:<a@${label(250)}.com>`,
      `RCPT TO:<${label(300)}>`,
    ]),
    `AUTH ${label(ctx.rng.int(20, 900))}`,
  ]);
  await quit(ctx, c);
}

/** Messages over the size limit, as sent or only once bare LFs are counted as CRLF: 552, never stored. */
export async function oversize(ctx: FuzzContext): Promise<void> {
  const c = await session(ctx, 'client');
  if (!c || !(await login(ctx, c))) return;
  const bareLf = ctx.rng.chance(0.5);
  // Bare-LF variant: about 3/4 of the limit as sent, about 1.5 times the limit stored.
  const body = bareLf
    ? 'x\n'.repeat(Math.floor((FUZZ_MAX_MESSAGE_SIZE * 0.75) / 2))
    : `${ctx.rng.text(998)}\r\n`.repeat(Math.ceil(FUZZ_MAX_MESSAGE_SIZE / 1000) + ctx.rng.int(0, 64));
  await transaction(ctx, c, { body, mustSucceed: false });
  const end = c.replies.at(-1);
  if (!bareLf && end?.code !== 552)
    ctx.violation(`message over the size limit answered ${end?.text.slice(0, 80)}`);
  await quit(ctx, c);
}
