/**
 * Queue ids in the spirit of Postfix's long queue ids: the acceptance time in base36 (so ids sort
 * roughly by arrival and are easy to grep in logs) followed by random base36 characters so that ids
 * minted in the same millisecond, or by several relay instances, do not collide.
 * Example: `MIAB3K9Z0-7QX2F4K1` is 9 time characters, a dash, and 8 random characters.
 */
import { randomBytes } from 'node:crypto';
import type { MessageId } from '../types';

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const RANDOM_CHARS = 8;

/** A new queue id for a message accepted at `now` (ms since epoch). */
export function newQueueId(now: number = Date.now()): MessageId {
  const time = Math.max(0, Math.floor(now)).toString(36).toUpperCase().padStart(9, '0');
  const bytes = randomBytes(RANDOM_CHARS);
  let random = '';
  for (const byte of bytes) random += ALPHABET[byte % ALPHABET.length];
  return `${time}-${random}`;
}

/** True for strings shaped like a queue id (safe to use as a file name). */
export function isQueueId(value: string): boolean {
  return /^[0-9A-Z]{9}-[0-9A-Z]{8}$/.test(value);
}
