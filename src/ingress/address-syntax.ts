/**
 * Envelope address checks on top of what smtp-server already does.
 *
 * smtp-server 3.21 (strict mode, our setting) already answers `501` by itself, before our handlers
 * run, for: a MAIL/RCPT argument not in angle brackets (`MAIL FROM:a@b`), an address containing a
 * space (the argument is split on whitespace), control characters or zero-width characters, anything
 * but exactly one `@` with a non-empty local part and domain, a local part starting/ending with a dot or
 * containing `..`, a domain with characters outside `[A-Za-z0-9.-]`/Unicode or with `..`, `.-`, `-.`,
 * a leading/trailing dot, a bad IP literal, `local@domain` longer than 253 octets, an empty `RCPT
 * TO:<>`, and bad or over-limit ESMTP parameters (SIZE over the limit is `552 5.3.4`). It accepts
 * `RCPT TO:<postmaster>` without a domain and converts punycode domains to Unicode.
 *
 * We then refuse (553, REPLIES.badSenderSyntax / badRecipientSyntax): a local part over 64 octets
 * (RFC 5321 4.5.3.1.1), a domain label over 63 octets or a domain over 253 octets after IDNA
 * conversion, labels starting or ending with `-`, a domain that is not valid IDNA, a recipient
 * without a domain (the bare `postmaster` smtp-server lets through; a relay cannot route it), and a
 * local part with non-ASCII characters: Amazon SES does not support SMTPUTF8 (RFC 6531), so such an
 * address could never be delivered (the listener does not advertise SMTPUTF8 either). Domains are
 * stored in their ASCII (A-label, `xn--`) form, lower case, which is what SES requires.
 */
import { domainToASCII } from 'node:url';

export type AddressCheck = { ok: true; address: string } | { ok: false; reason: string };

const MAX_LOCAL_PART = 64;
const MAX_DOMAIN = 253;
const MAX_LABEL = 63;
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[\x00-\x20\x7f-\x9f\u200b\u2060\ufeff]/;
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;

function checkDomain(domain: string): { ok: true; domain: string } | { ok: false; reason: string } {
  if (domain.startsWith('[') && domain.endsWith(']')) return { ok: true, domain }; // IP literal, checked by smtp-server
  const ascii = domainToASCII(domain.toLowerCase());
  if (!ascii) return { ok: false, reason: 'domain is not a valid (IDNA) domain name' };
  if (ascii.length > MAX_DOMAIN) return { ok: false, reason: 'domain longer than 253 octets' };
  for (const label of ascii.split('.')) {
    if (label.length === 0) return { ok: false, reason: 'empty domain label' };
    if (label.length > MAX_LABEL) return { ok: false, reason: 'domain label longer than 63 octets' };
    if (!LABEL.test(label)) return { ok: false, reason: 'bad domain label' };
  }
  return { ok: true, domain: ascii };
}

/**
 * Checks one envelope address as smtp-server parsed it (without angle brackets). The null sender
 * (empty string) is allowed for `sender` only. Returns the address to store (domain in A-labels).
 */
export function checkAddress(address: string, kind: 'sender' | 'recipient'): AddressCheck {
  if (address === '') {
    return kind === 'sender' ? { ok: true, address: '' } : { ok: false, reason: 'empty recipient' };
  }
  if (FORBIDDEN.test(address)) return { ok: false, reason: 'space or control character' };
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return { ok: false, reason: 'missing local part or domain' };
  const local = address.slice(0, at);
  if (Buffer.byteLength(local, 'utf8') > MAX_LOCAL_PART) {
    return { ok: false, reason: 'local part longer than 64 octets' };
  }
  if (local.includes('@') && !/^".*"$/.test(local)) return { ok: false, reason: 'more than one @' };
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(local)) return { ok: false, reason: 'non-ASCII local part (no SMTPUTF8 upstream)' };
  const domain = checkDomain(address.slice(at + 1));
  if (!domain.ok) return domain;
  return { ok: true, address: `${local}@${domain.domain}` };
}

/** Lower-case ASCII domain of an address ('' for the null sender). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}
