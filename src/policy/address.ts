/**
 * How the suppression list spells an address. Shared by the relay (lookups), the Lambda (writes) and the
 * operator CLI, so an address is stored and looked up the same way whatever case SES or a client used.
 */

/**
 * The comparable form of an address: trimmed, angle brackets and display name removed
 * (`"Jane" <Jane@Example.COM>` -> `jane@example.com`), lowercased. Returns '' for nothing usable.
 */
export function normalizeAddress(input: string): string {
  let s = String(input ?? '').trim();
  const lt = s.lastIndexOf('<');
  const gt = s.lastIndexOf('>');
  if (lt !== -1 && gt > lt) s = s.slice(lt + 1, gt);
  return s.trim().toLowerCase();
}

/** The domain part of a normalized address (after the last `@`), or '' when there is none. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at === -1 ? '' : address.slice(at + 1);
}

/** The key of a whole-domain entry: `@example.com`. */
export function domainKey(domain: string): string {
  return `@${domain.replace(/^@/, '').trim().toLowerCase()}`;
}

/**
 * The keys that can suppress an address: the address itself and `@domain`. An operator may also store a
 * bare `@domain` (normalizeAddress keeps it as is).
 */
export function suppressionKeys(input: string): string[] {
  const address = normalizeAddress(input);
  if (!address) return [];
  if (address.startsWith('@')) return [address];
  const domain = domainOf(address);
  return domain ? [address, domainKey(domain)] : [address];
}
