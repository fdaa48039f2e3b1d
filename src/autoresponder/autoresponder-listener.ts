/**
 * The autoresponder's MX-facing SMTP listener (smtp-server, public API only). Other mail servers deliver
 * requests here; it never relays and offers no AUTH.
 *
 * - STARTTLS is offered with the relay's certificate (SSL_CERT_PATH / SSL_KEY_PATH) when there is one.
 * - RCPT TO: a configured address `250`; an unknown local part of a configured domain `550 5.1.1`; any
 *   other domain `550 5.7.1` (RFC 5321 section 3.6.2: a server that is not a relay refuses other domains).
 * - DATA: the header block is kept, the rest is counted (and streamed to the DKIM verifier when
 *   AUTORESPONDER_REQUIRE_DKIM is on), then the request handler decides. Its answer is the reply: 250 when
 *   the request is answered (every reply already in the spool) or deliberately not answered, 451 when it
 *   could not decide now (quota store or DNS unreachable), 452 when the spool could not store the replies.
 * - Enhanced status codes are not advertised (smtp-server would put a second one in front of ours); our
 *   replies carry the catalogue's code in their text, as the relay's ingress does.
 */
import { listenSmtp } from '../ingress/listen';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import {
  SMTPServer,
  type SMTPServerDataStream,
  type SMTPServerOptions,
  type SMTPServerSession,
} from 'smtp-server';
import type { IngressConfig } from '../config';
import { checkAddress } from '../ingress/address-syntax';
import type { Logger } from '../observability/logger';
import { REPLIES, smtpError, type ReplyKey, type SmtpReplyError } from '../replies';
import { autoresponderMetrics } from './autoresponder-metrics';
import { addressKey } from './config-schema';
import { verifyDkim, type DkimOutcome, type DnsResolver } from './dkim-check';
import { HeaderBlockCollector, parseRequestHeaders, type ParsedRequest } from './request-parser';

/** What the listener hands the request handler once DATA is complete. */
export interface IncomingRequest {
  /** MAIL FROM ('' for the null sender). */
  envelopeSender: string;
  /** Keys (lower case) of the configured addresses it was sent to, in RCPT order. */
  addresses: string[];
  client: string;
  helo?: string;
  parsed: ParsedRequest;
  /** Present with AUTORESPONDER_REQUIRE_DKIM. */
  dkim?: Promise<DkimOutcome>;
}

/** `accepted`: 250; `temporary`: 451; `storage`: 452 (nothing stored). */
export type RequestOutcome = { reply: 'accepted'; requestId: string } | { reply: 'temporary' | 'storage' };

export interface AddressBook {
  /** True for a configured address (key = lower case). */
  has(key: string): boolean;
  /** True for a domain of a configured address. */
  hasDomain(domain: string): boolean;
}

export interface AutoresponderListenerOptions {
  host: string;
  port: number;
  /** Server name, size limit, client and socket limits, TLS material: shared with the relay's ingress. */
  ingress: IngressConfig;
  addresses: () => AddressBook;
  requireDkim: boolean;
  dnsResolver?: DnsResolver;
  handle: (request: IncomingRequest) => Promise<RequestOutcome>;
  logger: Logger;
}

export interface AutoresponderListener {
  listen(): Promise<void>;
  close(graceMs: number): Promise<void>;
  address(): AddressInfo;
  readonly listening: boolean;
}

export const AUTORESPONDER_BANNER = 'ses-email-service autoresponder';

function reject(key: ReplyKey): SmtpReplyError {
  autoresponderMetrics.rejections.inc({ reply: key });
  return smtpError(key);
}

function replyText(key: ReplyKey, detail: string): string {
  const r = REPLIES[key];
  return `${r.enhanced} ${r.text} ${detail}`;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/** Why RCPT TO is refused, or undefined for a configured address (RFC 5321 section 3.6.2: no relaying). */
function recipientRefusal(
  address: string,
  session: SMTPServerSession,
  maxRecipients: number,
  book: AddressBook,
): ReplyKey | undefined {
  const check = checkAddress(address, 'recipient');
  const key = check.ok ? addressKey(check.address) : undefined;
  if (!key) return 'badRecipientSyntax';
  if (session.envelope.rcptTo.length >= maxRecipients) return 'tooManyRecipients';
  if (book.has(key)) return undefined;
  const domain = key.slice(key.lastIndexOf('@') + 1);
  return book.hasDomain(domain) ? 'autoresponderUnknownAddress' : 'autoresponderRelayDenied';
}

/** DATA of one request: keep the header block, count the rest (and feed DKIM), then ask the handler. */
async function receiveRequest(
  stream: SMTPServerDataStream,
  session: SMTPServerSession,
  options: AutoresponderListenerOptions,
  log: Logger,
): Promise<{ err: Error | null; message?: string }> {
  const collector = new HeaderBlockCollector();
  const dkimInput = options.requireDkim ? new PassThrough() : undefined;
  const dkim = dkimInput ? verifyDkim(dkimInput, options.dnsResolver) : undefined;
  dkim?.catch(() => undefined); // awaited by the handler, or dropped for a message that is too big
  stream.on('data', (chunk: Buffer) => {
    if (stream.sizeExceeded) return;
    collector.push(chunk);
    dkimInput?.write(chunk);
  });
  const received = await new Promise<boolean>((resolve) => {
    stream.once('end', () => resolve(true));
    // The client went away mid-DATA (smtp-server destroys the stream): nothing to answer, nothing kept.
    stream.once('error', () => resolve(false));
    stream.once('close', () => resolve(stream.readableEnded));
  });
  if (!received) {
    dkimInput?.destroy();
    log.debug(
      { event: 'autoresponder:client-gone', client: session.remoteAddress },
      'connection closed during DATA',
    );
    return { err: reject('autoresponderUnavailable') };
  }
  dkimInput?.end();
  if (stream.sizeExceeded) return { err: reject('messageTooBig') };
  const { block, complete } = collector.result();
  const addresses = [
    ...new Set(session.envelope.rcptTo.map((r) => addressKey(r.address)).filter((k) => k !== undefined)),
  ];
  const from = session.envelope.mailFrom;
  const outcome = await options.handle({
    envelopeSender: from ? from.address : '',
    addresses,
    client: session.remoteAddress,
    helo: session.hostNameAppearsAs || undefined,
    parsed: await parseRequestHeaders(block, complete),
    dkim,
  });
  if (outcome.reply === 'accepted')
    return { err: null, message: replyText('autoresponderReceived', outcome.requestId) };
  return { err: reject(outcome.reply === 'storage' ? 'spoolUnavailable' : 'autoresponderUnavailable') };
}

/** The listener's fixed smtp-server settings: no AUTH, STARTTLS with the relay's certificate if any. */
function serverSettings(ingress: IngressConfig): SMTPServerOptions {
  const starttls = !!ingress.tls;
  return {
    name: ingress.serverName,
    banner: AUTORESPONDER_BANNER,
    secure: false,
    key: ingress.tls?.key,
    cert: ingress.tls?.cert,
    hideSTARTTLS: !starttls,
    disabledCommands: starttls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    authOptional: true,
    size: ingress.maxMessageSize,
    hideENHANCEDSTATUSCODES: true,
    hideSMTPUTF8: true,
    disableReverseLookup: true,
    maxClients: ingress.maxClients,
    socketTimeout: ingress.socketTimeoutMs,
    closeTimeout: 250,
    logger: false,
  };
}

export function createAutoresponderListener(options: AutoresponderListenerOptions): AutoresponderListener {
  const { ingress } = options;
  const log = options.logger.child({ component: 'autoresponder' });
  const starttls = !!ingress.tls;
  let closing = false;
  let closePromise: Promise<void> | undefined;
  const inData = new Set<Promise<unknown>>();

  const smtp = new SMTPServer({
    ...serverSettings(ingress),
    onConnect(_session, callback) {
      callback(closing ? reject('shuttingDown') : undefined);
    },
    onMailFrom(address, _session, callback) {
      if (closing) return callback(reject('shuttingDown'));
      const check = checkAddress(address.address, 'sender');
      callback(check.ok ? undefined : reject('badSenderSyntax'));
    },
    onRcptTo(address, session, callback) {
      if (closing) return callback(reject('shuttingDown'));
      const refusal = recipientRefusal(address.address, session, ingress.maxRecipients, options.addresses());
      callback(refusal && reject(refusal));
    },
    onData(stream, session, callback) {
      const done = receiveRequest(stream, session, options, log).then(
        (r) => callback(r.err, r.message),
        (err: unknown) => {
          log.error({ event: 'autoresponder:error', err }, 'request handling failed unexpectedly');
          callback(reject('autoresponderUnavailable'));
        },
      );
      inData.add(done);
      void done.finally(() => inData.delete(done));
    },
  });
  smtp.on('error', (err: Error & { code?: string }) => {
    log.debug(
      { event: 'autoresponder:smtp-error', code: err.code, err: err.message },
      'SMTP connection error',
    );
  });

  return {
    async listen() {
      const a = await listenSmtp(smtp, options.port, options.host);
      log.info(
        {
          event: 'autoresponder:listening',
          host: a.address,
          port: a.port,
          tls: starttls ? 'starttls' : 'none',
        },
        'autoresponder listener ready',
      );
    },
    close(graceMs: number) {
      closePromise ??= (async () => {
        closing = true;
        const deadline = Date.now() + Math.max(0, graceMs);
        while (inData.size > 0 && Date.now() < deadline) await sleep(20);
        await new Promise<void>((resolve) => smtp.close(() => resolve()));
      })();
      return closePromise;
    },
    address() {
      return smtp.server.address() as AddressInfo;
    },
    get listening() {
      return smtp.server.listening;
    },
  };
}
