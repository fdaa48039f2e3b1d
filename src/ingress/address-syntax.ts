/**
 * Which envelope addresses the relay accepts (MAIL FROM and RCPT TO), on top of what smtp-server does.
 *
 * Rule: an accepted address goes upstream byte for byte as accepted (the egress transport hands it to
 * nodemailer as an address object, which it sends unchanged; src/egress/transport/ses-smtp-transport.ts checks
 * that), and is looked up on the suppression list by one canonical key (src/policy/address.ts). So only
 * spellings with one unambiguous meaning are accepted; everything else is refused at MAIL/RCPT with
 * `553 5.1.7` / `553 5.1.3` (REPLIES.badSenderSyntax / badRecipientSyntax), never rewritten.
 *
 * smtp-server 3.21 (strict mode, our setting) answers `501` by itself, before our handlers run, for: an
 * argument not in angle brackets, a space (the argument is split on whitespace), control and zero-width
 * characters, anything but exactly one `@` with a non-empty local part and domain, a local part starting
 * or ending with a dot or containing `..`, a domain with characters outside `[A-Za-z0-9.-]`/Unicode, with
 * `..`, `.-`, `-.` or a leading/trailing dot, a bad IP literal, `local@domain` over 253 characters, and
 * bad ESMTP parameters. It strips a source route (`<@a,@b:user@c>` -> `user@c`, as RFC 5321 4.1.2 says:
 * accept and ignore), accepts `RCPT TO:<postmaster>` without a domain, and converts punycode domains to
 * Unicode.
 *
 * What we accept (RFC 5321 4.1.2 Mailbox, narrowed):
 * - local part: a dot-atom of RFC 5321 atext except `%` and `!`; or a Quoted-string (`"…"`, qtextSMTP and
 *   quoted-pairSMTP) whose content, quoted-pairs resolved, is non-empty and made only of those characters
 *   and dots (so `".dot"` or `"vic\tim"`, never `"a,b"`). No comments (RFC 5321 paths have none), no
 *   specials `( ) < > [ ] : ; , @ \ "` outside quoted-pairs, no `%`/`!`: those are sender-specified routing
 *   that Postfix and others still honour (`allow_percent_hack`, `swap_bangpath`: `victim%example.com@relay`
 *   is delivered to victim@example.com), so a key would not name the mailbox. At most 64 octets as sent
 *   (RFC 5321 4.5.3.1.1), ASCII only: Amazon SES does not support SMTPUTF8 (RFC 6531), so it is not
 *   advertised and a non-ASCII local part could never be delivered.
 * - domain: a domain name, stored and sent in its ASCII (A-label, `xn--`) form, lower case (SES requires
 *   punycode), at most 253 octets, labels of 1-63 octets of letters, digits and `-` (not at either end,
 *   RFC 5321 sub-domain), valid IDNA (UTS 46), at least two labels, the last not numeric (`a@192.0.2.1`, `a@0x7f.1` are IP
 *   addresses to a host parser). No address literals (`[192.0.2.1]`, `[IPv6:…]`): SES sends to names,
 *   and a literal has no single spelling to suppress.
 * - the whole address at most 254 octets in ASCII form (a path of 256 with the angle brackets, RFC 5321
 *   4.5.3.1.3); the null sender `<>` for MAIL FROM only; no domain-less recipient (`postmaster`).
 */
import { asciiDomain, addressKey } from '../policy/address';

/** `key` is the canonical suppression/comparison key (src/policy/address.ts); '' for the null sender. */
export type AddressCheck = { ok: true; address: string; key: string } | { ok: false; reason: string };

const MAX_LOCAL_PART = 64;
const MAX_DOMAIN = 253;
const MAX_LABEL = 63;
const MAX_ADDRESS = 254;
// RFC 5321 atext without `%` and `!` (sender-specified routing).
const ATEXT = "[A-Za-z0-9#$&'*+\\-/=?^_`{|}~]";
const DOT_ATOM = new RegExp(`^${ATEXT}+(?:\\.${ATEXT}+)*$`);
// RFC 5321 Quoted-string: qtextSMTP (%d32-33 / %d35-91 / %d93-126) and quoted-pairSMTP (%d92 %d32-126).
const QUOTED_STRING = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$/;
const QUOTED_CONTENT = new RegExp(`^(?:${ATEXT}|\\.)+$`);
// RFC 5321 sub-domain: Let-dig [Ldh-str] (no underscore; smtp-server refuses it at ingress too).
const LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;

type Part = { ok: true; value: string } | { ok: false; reason: string };

function checkLocalPart(local: string): Part {
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(local)) return { ok: false, reason: 'non-ASCII local part (no SMTPUTF8 upstream)' };
  if (local.length > MAX_LOCAL_PART) return { ok: false, reason: 'local part longer than 64 octets' };
  if (DOT_ATOM.test(local)) return { ok: true, value: local };
  if (!local.startsWith('"')) {
    if (/[%!]/.test(local)) return { ok: false, reason: 'sender-specified routing (% or !) in local part' };
    return {
      ok: false,
      reason: 'local part is not a dot-atom or quoted string (comment or special character)',
    };
  }
  if (!QUOTED_STRING.test(local)) return { ok: false, reason: 'malformed quoted local part' };
  const content = local.slice(1, -1).replace(/\\([\s\S])/g, '$1');
  if (/[%!]/.test(content)) return { ok: false, reason: 'sender-specified routing (% or !) in local part' };
  if (!QUOTED_CONTENT.test(content)) {
    return { ok: false, reason: 'quoted local part with special characters or empty' };
  }
  return { ok: true, value: local };
}

function checkDomain(domain: string): Part {
  if (domain.startsWith('[')) return { ok: false, reason: 'address literals are not accepted' };
  const ascii = asciiDomain(domain);
  if (!ascii) return { ok: false, reason: 'domain is not a valid (IDNA) domain name' };
  if (ascii.length > MAX_DOMAIN) return { ok: false, reason: 'domain longer than 253 octets' };
  const labels = ascii.split('.');
  for (const label of labels) {
    if (label.length > MAX_LABEL) return { ok: false, reason: 'domain label longer than 63 octets' };
    if (!LABEL.test(label)) return { ok: false, reason: 'bad domain label' };
  }
  if (labels.length < 2) return { ok: false, reason: 'domain is not fully qualified' };
  return { ok: true, value: ascii };
}

/**
 * Checks one envelope address as smtp-server parsed it (without angle brackets). The null sender
 * (empty string) is allowed for `sender` only. Returns the address to store and send (domain in
 * A-labels, local part exactly as given) and its canonical key.
 */
export function checkAddress(address: string, kind: 'sender' | 'recipient'): AddressCheck {
  if (address === '') {
    return kind === 'sender' ? { ok: true, address: '', key: '' } : { ok: false, reason: 'empty recipient' };
  }
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return { ok: false, reason: 'missing local part or domain' };
  const local = checkLocalPart(address.slice(0, at));
  if (!local.ok) return local;
  const domain = checkDomain(address.slice(at + 1));
  if (!domain.ok) return domain;
  const accepted = `${local.value}@${domain.value}`;
  if (accepted.length > MAX_ADDRESS) return { ok: false, reason: 'address longer than 254 octets' };
  return { ok: true, address: accepted, key: addressKey(accepted) };
}

/** Lower-case ASCII domain of an address ('' for the null sender). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}
