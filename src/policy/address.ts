/**
 * How the suppression list spells an address: one canonical key, shared by the relay (lookups at RCPT
 * and before delivery), the Lambda (writes from SES notifications) and the operator CLI, so an address
 * is stored and looked up the same way whatever spelling SES, an operator or a client used.
 *
 * The key of `local@domain` is
 * - the local part unquoted with its quoted-pairs resolved (RFC 5321 4.1.2: `"victim"`, `"vic\tim"` and
 *   `victim` are the same mailbox), then lower-cased (a conservative choice: a suppression entry covers
 *   every case spelling, as nearly every mailbox provider treats them alike);
 * - `@`;
 * - the domain in its ASCII (A-label, `xn--`) form, lower case, after UTS 46 mapping (so `Bücher.example`,
 *   `XN--BCHER-KVA.example` and `xn--bcher-kva.example` give one key; fullwidth letters map to ASCII).
 *
 * Which spellings the relay accepts at all is decided in src/ingress/address-syntax.ts; this file only
 * computes keys, and never throws.
 */
import { domainToASCII } from 'node:url';

/** Characters the WHATWG host parser would decode or treat as structure: never part of a name. */
const NOT_A_HOSTNAME = /[\s%/\\?#@[\]:<>^|]/;
/** WHATWG "ends in a number": a last label like `1`, `0x7f` makes the host parser read an IPv4 address. */
const NUMERIC_LABEL = /^(?:\d+|0x[0-9a-f]*)$/i;

/**
 * The ASCII (A-label) form of a domain name, lower case, or '' when it is not a valid (IDNA) domain name.
 * Unlike a bare `domainToASCII`, never decodes `%xx`, never turns a numeric name into an IPv4 address and
 * keeps no trailing dot or empty label. Address literals (`[192.0.2.1]`) are not domain names: ''.
 */
export function asciiDomain(domain: string): string {
  const d = String(domain ?? '')
    .trim()
    .toLowerCase();
  if (!d || NOT_A_HOSTNAME.test(d)) return '';
  const labels = d.split('.');
  if (NUMERIC_LABEL.test(labels[labels.length - 1])) return '';
  const ascii = domainToASCII(d);
  if (!ascii || ascii.split('.').some((l) => l === '')) return '';
  return ascii;
}

/** A local part without its quotes, quoted-pairs resolved (`"vic\tim"` -> `victim`); others unchanged. */
export function unquoteLocalPart(local: string): string {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  return local.slice(1, -1).replace(/\\([\s\S])/g, '$1');
}

/** Split `local@domain` at the `@` that starts the domain (the last one); undefined without one. */
export function splitAddress(address: string): { local: string; domain: string } | undefined {
  const at = address.lastIndexOf('@');
  if (at < 0) return undefined;
  return { local: address.slice(0, at), domain: address.slice(at + 1) };
}

/**
 * The canonical suppression key of an envelope address (no angle brackets, no display name): see the
 * file comment. A domain that is not a valid IDNA name is only lower-cased; an address without `@` is
 * only unquoted and lower-cased. '' for the null sender.
 */
export function addressKey(address: string): string {
  const parts = splitAddress(address);
  if (!parts) return unquoteLocalPart(address).toLowerCase();
  const domain = asciiDomain(parts.domain) || parts.domain.toLowerCase();
  return `${unquoteLocalPart(parts.local).toLowerCase()}@${domain}`;
}

/**
 * The canonical key of an address as an operator or SES may write it: trimmed, angle brackets and a
 * display name removed (`"Jane" <Jane@Example.COM>` -> `jane@example.com`), then `addressKey`. A bare
 * `@domain` gives the whole-domain key. Returns '' for nothing usable.
 */
export function normalizeAddress(input: string): string {
  let s = String(input ?? '').trim();
  const lt = s.lastIndexOf('<');
  const gt = s.lastIndexOf('>');
  if (lt !== -1 && gt > lt) s = s.slice(lt + 1, gt);
  s = s.trim();
  if (!s) return '';
  return addressKey(s);
}

/** The domain part of a normalized address (after the last `@`), or '' when there is none. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at === -1 ? '' : address.slice(at + 1);
}

/** The key of a whole-domain entry: `@example.com` (A-label form, lower case). */
export function domainKey(domain: string): string {
  const d = domain.replace(/^@/, '').trim();
  return `@${asciiDomain(d) || d.toLowerCase()}`;
}

/**
 * The keys that can suppress an address: its canonical key and `@domain`. An operator may also store a
 * bare `@domain` (normalizeAddress keeps it as the domain key).
 */
export function suppressionKeys(input: string): string[] {
  const address = normalizeAddress(input);
  if (!address) return [];
  if (address.startsWith('@')) return [address];
  const domain = domainOf(address);
  return domain ? [address, `@${domain}`] : [address];
}
