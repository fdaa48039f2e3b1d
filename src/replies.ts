/**
 * The one catalogue of SMTP replies the relay gives its clients (RFC 5321 codes, RFC 3463 enhanced
 * status codes). Every entry is listed in README.md ("SMTP replies"); test/replies.test.ts checks it.
 * Ingress code never writes a reply text inline: it throws `smtpError('key')`.
 */

export interface ReplyDefinition {
  code: number;
  enhanced: string;
  text: string;
  /** What it means for the client, for the README table. */
  meaning: string;
}

export const REPLIES = {
  queued: {
    code: 250,
    enhanced: '2.0.0',
    text: 'Ok: queued as',
    meaning: 'Message is on disk (fsync done) and will be delivered; the queue id follows.',
  },
  shuttingDown: {
    code: 421,
    enhanced: '4.3.2',
    text: 'Service shutting down, try again later',
    meaning: 'The relay is stopping; retry later (another replica will take it).',
  },
  tooManyConnections: {
    code: 421,
    enhanced: '4.7.0',
    text: 'Too many connections, try again later',
    meaning: 'SMTP_MAX_CLIENTS connections are already open.',
  },
  authLockedOut: {
    code: 421,
    enhanced: '4.7.0',
    text: 'Too many failed authentication attempts, try again later',
    meaning: 'This client address failed AUTH too often; it is locked out for a while.',
  },
  spoolUnavailable: {
    code: 452,
    enhanced: '4.3.1',
    text: 'Insufficient system storage, try again later',
    meaning: 'The spool could not store the message durably (disk full, I/O error); nothing was kept.',
  },
  tooManyRecipients: {
    code: 452,
    enhanced: '4.5.3',
    text: 'Too many recipients',
    meaning: 'More than SMTP_MAX_RECIPIENTS recipients in one message; send the rest in another.',
  },
  authUnavailable: {
    code: 454,
    enhanced: '4.7.0',
    text: 'Temporary authentication failure, try again later',
    meaning:
      "The API key table could not be consulted, or the key's table item has a malformed policy attribute (a warning names the key and attribute); nothing is wrong with the credentials yet.",
  },
  dailyQuotaExceeded: {
    code: 451,
    enhanced: '4.7.1',
    text: 'Daily recipient quota of this sender exceeded, try again later',
    meaning:
      "The API key's or SMTP user's daily_quota (recipients per UTC day) is spent: at MAIL FROM when nothing is left, at RCPT TO when this recipient would go over it (the ones accepted before may be sent).",
  },
  quotaUnavailable: {
    code: 451,
    enhanced: '4.3.0',
    text: 'Sending quota temporarily unavailable, try again later',
    meaning:
      'The sender has a daily_quota and its shared count (Redis, REDIS_URL) could not be read; nothing was accepted.',
  },
  policyUnavailable: {
    code: 451,
    enhanced: '4.3.0',
    text: 'Suppression list temporarily unavailable, try again later',
    meaning: 'BLOCKLIST_ACTION=reject and the suppression list could not be consulted.',
  },
  badSenderSyntax: {
    code: 553,
    enhanced: '5.1.7',
    text: 'Bad sender address syntax',
    meaning: 'MAIL FROM is not a valid address.',
  },
  badDsnParameter: {
    code: 501,
    enhanced: '5.5.4',
    text: 'Invalid DSN parameter',
    meaning:
      'ENVID over 100 or ORCPT over 500 characters, or not printable US-ASCII after xtext decoding (RFC 3461 section 4); only when DSN is offered (BOUNCE_FROM).',
  },
  badRecipientSyntax: {
    code: 553,
    enhanced: '5.1.3',
    text: 'Bad recipient address syntax',
    meaning: 'RCPT TO is not a valid address.',
  },
  authRequired: {
    code: 530,
    enhanced: '5.7.0',
    text: 'Authentication required',
    meaning: 'SMTP_USERS (or USE_APIKEY) is set and the client is not in SMTP_TRUSTED_NETWORKS: AUTH first.',
  },
  authInvalid: {
    code: 535,
    enhanced: '5.7.8',
    text: 'Authentication credentials invalid',
    meaning: 'Wrong user name, password or API key.',
  },
  encryptionRequired: {
    code: 538,
    enhanced: '5.7.11',
    text: 'Encryption required for requested authentication mechanism',
    meaning: 'AUTH over plaintext is refused: use STARTTLS (or set SMTP_ALLOW_INSECURE_AUTH).',
  },
  relayDenied: {
    code: 550,
    enhanced: '5.7.1',
    text: 'Relay access denied',
    meaning: 'No SMTP_USERS are configured and the client is not in a trusted network.',
  },
  recipientSuppressed: {
    code: 550,
    enhanced: '5.7.1',
    text: 'Recipient address is on the suppression list',
    meaning: 'BLOCKLIST_ACTION=reject and the recipient (or its domain) bounced or complained before.',
  },
  messageTooBig: {
    code: 552,
    enhanced: '5.3.4',
    text: 'Message size exceeds fixed maximum message size',
    meaning: 'The message is larger than SMTP_MAX_MESSAGE_SIZE (advertised in EHLO SIZE).',
  },
  senderNotAllowed: {
    code: 553,
    enhanced: '5.7.1',
    text: 'Sender address not allowed for this API key',
    meaning: 'The API key may only send from the domains listed in its table item.',
  },
  headerSenderNotAllowed: {
    code: 553,
    enhanced: '5.7.1',
    text: 'From or Sender header not allowed for this API key',
    meaning:
      "An address in the message's From: or Sender: header is outside the API key's domains (or there is no From address); nothing was stored.",
  },
  // The autoresponder's MX-facing listener (AUTORESPONDER_PORT).
  autoresponderReceived: {
    code: 250,
    enhanced: '2.0.0',
    text: 'Ok: request received',
    meaning:
      'Autoresponder: the request is taken; when it is answered every reply is already in the spool (the request id follows).',
  },
  autoresponderUnavailable: {
    code: 451,
    enhanced: '4.3.0',
    text: 'Request cannot be handled now, try again later',
    meaning:
      'Autoresponder: the quota table or DNS (AUTORESPONDER_REQUIRE_DKIM) could not be consulted; nothing was counted or stored.',
  },
  autoresponderUnknownAddress: {
    code: 550,
    enhanced: '5.1.1',
    text: 'Recipient address rejected: no such autoresponder address',
    meaning: 'Autoresponder: the domain is configured but this local part is not.',
  },
  autoresponderRelayDenied: {
    code: 550,
    enhanced: '5.7.1',
    text: 'Relay access denied: not an autoresponder domain',
    meaning:
      'Autoresponder: the recipient domain is not one of the configured addresses (the front door never relays).',
  },
} as const satisfies Record<string, ReplyDefinition>;

export type ReplyKey = keyof typeof REPLIES;

/** An Error that smtp-server turns into the SMTP reply (it reads `responseCode`). */
export class SmtpReplyError extends Error {
  readonly responseCode: number;
  readonly enhanced: string;
  readonly key: ReplyKey;
  constructor(key: ReplyKey, detail?: string) {
    const r = REPLIES[key];
    super(`${r.enhanced} ${r.text}${detail ? ` (${detail})` : ''}`);
    this.name = 'SmtpReplyError';
    this.responseCode = r.code;
    this.enhanced = r.enhanced;
    this.key = key;
  }
}

export function smtpError(key: ReplyKey, detail?: string): SmtpReplyError {
  return new SmtpReplyError(key, detail);
}

/** Full reply line text for a catalogue entry, e.g. `452 4.3.1 Insufficient system storage...`. */
export function replyLine(key: ReplyKey, detail?: string): string {
  const r = REPLIES[key];
  return `${r.code} ${r.enhanced} ${r.text}${detail ? ` ${detail}` : ''}`;
}
