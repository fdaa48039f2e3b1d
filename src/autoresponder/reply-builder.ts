/**
 * Building one reply (one configured entry) to one request, with nodemailer's MimeNode, the class its
 * MailComposer composes with (MailComposer picks the tree itself: it drops the `multipart/alternative`
 * around a single part and the `multipart/mixed` without attachments, and this tree is fixed):
 *
 *   multipart/mixed
 *     multipart/alternative
 *       text/plain | text/html; charset=utf-8   (the entry's parts, in config order)
 *     <attachment>; name="<configured file name>"   (base64, Content-Disposition: attachment)
 *
 * as the original autoresponder built it; a reply with neither attachments nor several parts is a single
 * text part. Headers:
 * - `To` (and the envelope recipient) = the requester, local part exactly as written (`o'brien@...`:
 *   a dot-atom, which nodemailer never quotes or re-encodes);
 * - `Subject: Re: <original subject>` (no second `Re:`), UTF-8 encoded-words only when needed;
 * - `In-Reply-To` and `References` = the request's Message-ID token, raw (the original encoded them as
 *   MIME words, which broke threads);
 * - `Auto-Submitted: auto-replied` unencoded (RFC 3834 section 5), so other responders recognise it;
 * - `Reply-To` = the requested address; a new `Message-ID` in the domain of AUTORESPONDER_FROM; `Date`.
 * With DKIM_* set, `send_method: "SMTP"` replies are signed with nodemailer's DKIM signer (large messages
 * are cached on disk while the body hash is computed).
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import DKIM from 'nodemailer/lib/dkim';
import { detectMimeType } from 'nodemailer/lib/mime-funcs';
import MimeNode from 'nodemailer/lib/mime-node';
import type { ResponderEntry } from './config-schema';
import { attachmentId, type CachedAttachment } from './config-source';

export interface ReplyTo {
  /** The requester: `To` and envelope recipient. */
  requester: string;
  /** The request's decoded Subject. */
  subject: string;
  /** The request's Message-ID token (`<...>`). */
  messageId?: string;
}

export interface ReplySettings {
  /** AUTORESPONDER_FROM as configured. */
  from: string;
  /** Its bare address (the Message-ID domain comes from it). */
  fromAddress: string;
  dkim?: { domain: string; selector: string; privateKey: string };
  /** Where the DKIM signer may cache large messages. */
  dkimCacheDir?: string;
}

/** A header value written as given (already checked to be ASCII without CR/LF). */
const prepared = (value: string) => ({ prepared: true, value }) as unknown as string;

/** `Re: <subject>` without piling up prefixes. */
export function replySubject(subject: string): string {
  const s = subject.replace(/[\r\n]+/g, ' ').trim();
  if (/^re\s*:/i.test(s)) return s;
  return s ? `Re: ${s}` : 'Re:';
}

export function newMessageId(fromAddress: string): string {
  const domain = fromAddress.slice(fromAddress.lastIndexOf('@') + 1);
  return `<${Date.now().toString(36)}.${randomBytes(12).toString('hex')}@${domain}>`;
}

function textNode(type: 'plain' | 'html', parent?: MimeNode): MimeNode {
  const contentType = `text/${type}; charset=utf-8`;
  return parent ? parent.createChild(contentType) : new MimeNode(contentType, { newline: 'win' });
}

/** The MIME tree of one reply (headers included). */
export function buildReplyNode(
  entry: ResponderEntry,
  attachments: ReadonlyMap<string, CachedAttachment>,
  to: ReplyTo,
  settings: ReplySettings,
): MimeNode {
  let root: MimeNode;
  if (entry.attachments.length === 0 && entry.parts.length === 1) {
    root = textNode(entry.parts[0].type).setContent(entry.parts[0].text);
  } else {
    root = new MimeNode('multipart/mixed', { newline: 'win' });
    const alternative = root.createChild('multipart/alternative');
    for (const part of entry.parts) textNode(part.type, alternative).setContent(part.text);
    for (const ref of entry.attachments) {
      const cached = attachments.get(attachmentId(ref.bucket, ref.key));
      if (!cached) throw new Error(`attachment s3://${ref.bucket}/${ref.key} is not cached`);
      root
        .createChild(detectMimeType(ref.filename), { filename: ref.filename })
        .setHeader('Content-Transfer-Encoding', 'base64')
        // A content object: the file is opened only when the stream reaches it (no descriptor is held by a
        // reply that is never read to the end).
        .setContent({ path: cached.path } as unknown as string);
    }
  }
  root.setHeader('From', settings.from);
  // A dot-atom local part (all requesters are, see requesterOf) is written by nodemailer exactly as given.
  root.setHeader('To', to.requester);
  root.setHeader('Reply-To', entry.address);
  root.setHeader('Subject', replySubject(to.subject));
  root.setHeader('Message-ID', prepared(newMessageId(settings.fromAddress)));
  root.setHeader('Date', new Date().toUTCString().replace(/GMT/, '+0000'));
  root.setHeader('Auto-Submitted', prepared('auto-replied'));
  if (to.messageId) {
    root.setHeader('In-Reply-To', prepared(to.messageId));
    root.setHeader('References', to.messageId); // one `<id>` token without spaces: written as it is
  }
  return root;
}

/** The reply as a byte stream (DKIM-signed for `send_method: "SMTP"` when DKIM_* is set). */
export function buildReply(
  entry: ResponderEntry,
  attachments: ReadonlyMap<string, CachedAttachment>,
  to: ReplyTo,
  settings: ReplySettings,
): Readable {
  const stream = buildReplyNode(entry, attachments, to, settings).createReadStream();
  if (!settings.dkim || entry.sendMethod !== 'SMTP') return stream;
  const signer = new DKIM({
    domainName: settings.dkim.domain,
    keySelector: settings.dkim.selector,
    privateKey: settings.dkim.privateKey,
    cacheDir: settings.dkimCacheDir ?? false,
  });
  return signer.sign(stream);
}
