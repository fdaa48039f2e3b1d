/**
 * The SMTP envelope nodemailer sends, predicted before it is sent.
 *
 * nodemailer never takes `sendMail({ envelope })` as given: mail-composer calls `MimeNode#setEnvelope`,
 * which runs every address through its address parser and normaliser, and the pool then sends
 * `MimeNode#getEnvelope()`. Given *strings*, the parser reads them as header text: it strips comments and
 * quotes and splits on `,` and `;` (`x,victim@example.com` became two RCPTs, `x` and
 * `victim@example.com`). Given *address objects* `{ address, name: '' }` (what we pass), it only
 * normalises each address: control characters and `<>` removed, a local part that is neither a dot-atom
 * nor a quoted string is quoted, the domain is IDNA-encoded and lower-cased. For every address
 * src/ingress/address-syntax.ts accepts, that normalisation changes nothing.
 *
 * Relying on that is relying on nodemailer's behaviour, so it is checked, not assumed: `upstreamForm`
 * runs the same public MimeNode methods nodemailer itself runs (setEnvelope, then getEnvelope) and the
 * transport refuses to send any address whose upstream form differs from the accepted one. Checked
 * against nodemailer 10.6.0 (`NODEMAILER_VERSION_CHECKED`); test/egress-envelope.test.ts pins the
 * behaviour, and the relay's end-to-end test reads the RCPT lines at the fake SES.
 */
import MimeNode from 'nodemailer/lib/mime-node';

export const NODEMAILER_VERSION_CHECKED = '10.6.0';

/** An address as nodemailer must receive it to send it unparsed: an object with an empty name. */
export interface EnvelopeAddress {
  address: string;
  name: '';
}

/** `sendMail({ envelope })` for a sender ('' = null sender) and recipients, as address objects. */
export function envelopeOf(
  mailFrom: string,
  recipients: string[],
): { from: EnvelopeAddress | ''; to: EnvelopeAddress[] } {
  return {
    from: mailFrom ? { address: mailFrom, name: '' } : '',
    to: recipients.map((address) => ({ address, name: '' })),
  };
}

/** The envelope nodemailer would send for `envelopeOf(mailFrom, recipients)`. */
export function upstreamEnvelope(mailFrom: string, recipients: string[]): { from: string; to: string[] } {
  const env = new MimeNode().setEnvelope(envelopeOf(mailFrom, recipients)).getEnvelope();
  return { from: env.from || '', to: env.to };
}

/** What nodemailer would put in `MAIL FROM:<…>` / `RCPT TO:<…>` for one address ('' for none). */
export function upstreamForm(address: string): string {
  const env = new MimeNode()
    .setEnvelope({ from: { address, name: '' }, to: [{ address, name: '' }] })
    .getEnvelope();
  return env.to.length === 1 ? env.to[0] : '';
}
