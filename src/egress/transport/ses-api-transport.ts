/**
 * SES over the v2 API (SES_TRANSPORT=api): each upstream transaction is one `SendEmail` call
 * (@aws-sdk/client-sesv2) with
 * - `Content.Raw.Data` = the spooled bytes, unchanged (the SDK base64-encodes them);
 * - `Destination.ToAddresses` = the envelope recipients of this transaction. What the documentation says:
 *   SendEmail's `Destination` is "an object that contains the recipients of the email message"
 *   (APIReference-V2/API_SendEmail.html), and for Raw content "you have to specify all of the message
 *   headers" (same page): SES composes no headers from Destination for raw mail. With the v1 API's
 *   SendRawEmail, once Destinations is given the addresses in the message's headers are no longer used
 *   (observed and reported in drewblas/aws-ses#53). So a Bcc recipient, in no header, is delivered, and a
 *   header field never adds a recipient the relay did not accept (no bypass of the suppression list).
 *   All go in ToAddresses because the API has no plain envelope list; for raw content To/Cc/Bcc are not
 *   distinguished. (Not checkable here against real SES; the local endpoint in the tests records Destination.)
 * - `FromEmailAddress` and `FeedbackForwardingEmailAddress` = the envelope sender, as SES over SMTP uses
 *   MAIL FROM (both omitted for the null sender `<>`: SES then takes the From: header);
 * - `ConfigurationSetName` = the tenant's configuration set (enforced: a X-SES-CONFIGURATION-SET header of
 *   the message is removed), else SES_CONFIGURATION_SET unless the message carries that header (then the
 *   sender's choice wins, as with SMTP); `EmailTags` = the
 *   tenant's tags (SES then ignores X-SES-MESSAGE-TAGS headers of the message: API tags win, not joined).
 *
 * Credentials come from the SDK's default chain (environment keys, profile, web identity, ECS/EC2 role),
 * the region from AWS_REGION, the endpoint from the SDK's standard AWS_ENDPOINT_URL_SESV2 (read by the SDK
 * itself: @smithy/core's getEndpointUrlConfig with service id "SESv2"; tests point it at a local server).
 *
 * The SDK's own retries are off (maxAttempts 1): a retry would send outside the rate limiter, and a retry
 * after a timeout can duplicate a message SES had accepted. The dispatcher decides about retries.
 *
 * Every outcome is classified per recipient (classifyApiError); `send` never throws.
 */
import type { Readable } from 'node:stream';
import {
  SESv2Client,
  SendEmailCommand,
  type SESv2ClientConfig,
  type SendEmailCommandInput,
} from '@aws-sdk/client-sesv2';
import type { Logger } from '../../observability/logger';
import type { ReplyClass } from '../../types';
import {
  CONFIGURATION_SET_HEADER,
  hasHeader,
  headerSection,
  validTags,
  withoutHeaderField,
} from './ses-headers';
import type { RecipientResult, Transaction, Transport, UpstreamSignal } from './transport';

/**
 * SES service quotas ("Service quotas in Amazon SES", message quotas): with the SES v2 API or SMTP the
 * maximum message size, attachments included, is 40 MB per message after base64 encoding.
 */
export const SES_API_MAX_ENCODED_BYTES = 40 * 1024 * 1024;
/** The largest raw message whose base64 encoding fits SES_API_MAX_ENCODED_BYTES (30 MiB). */
export const SES_API_MAX_RAW_BYTES = (SES_API_MAX_ENCODED_BYTES / 4) * 3;

export const base64Length = (bytes: number) => 4 * Math.ceil(bytes / 3);

export interface SesApiTransportOptions {
  region: string;
  /** Only for tests that build the transport in-process; the relay leaves it to AWS_ENDPOINT_URL_SESV2. */
  endpoint?: string;
  /** Only for tests; the relay uses the SDK's default credential chain. */
  credentials?: SESv2ClientConfig['credentials'];
  /** Default configuration set (SES_CONFIGURATION_SET). */
  configurationSet?: string;
  /** TCP connect timeout (SES_CONNECTION_TIMEOUT). */
  connectionTimeoutMs: number;
  /** Bound on one whole call, upload included (default 2 min); the socket's idle timeout is max(connect, 60 s). */
  requestTimeoutMs?: number;
  /** Shown in logs and the ready line (default `ses-api:<region>`). */
  name?: string;
  logger: Logger;
}

/** What an API error means for the recipients of the call. */
export interface ApiOutcome {
  class: ReplyClass;
  /** The SMTP reply code that means the same (0: network error, nothing reached SES). */
  code: number;
  enhanced: string;
  signal?: UpstreamSignal;
  /** Not the message's fault but ours (credentials, IAM policy, a missing configuration set): log loudly. */
  operator?: string;
}

interface SdkError extends Error {
  code?: string;
  $fault?: 'client' | 'server';
  $metadata?: { httpStatusCode?: number };
}

const AUTH_ERRORS = new Set([
  'AccessDeniedException',
  'AccessDenied',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'SignatureDoesNotMatch',
  'IncompleteSignature',
  'InvalidClientTokenId',
  'MissingAuthenticationToken',
  'ExpiredTokenException',
  'ExpiredToken',
  'RequestExpired',
  'NotAuthorized',
  'OptInRequired',
  'CredentialsProviderError',
]);
const REQUEST_ERRORS = new Set([
  'BadRequestException',
  'ValidationError',
  'ValidationException',
  'InvalidParameterValue',
  'SerializationException',
  'MalformedHttpRequestException',
]);

const outcome = (cls: ReplyClass, code: number, enhanced: string, extra: Partial<ApiOutcome> = {}) => ({
  class: cls,
  code,
  enhanced,
  ...extra,
});

/**
 * The outcome class of a SendEmail error. Sources (Amazon SES API v2 reference and developer guide):
 * - API_SendEmail.html#API_SendEmail_Errors: AccountSuspendedException (400), BadRequestException (400),
 *   LimitExceededException (400), MailFromDomainNotVerifiedException (400), MessageRejected (400),
 *   NotFoundException (404), SendingPausedException (400), TooManyRequestsException (429).
 * - CommonErrors.html: AccessDeniedException / UnrecognizedClientException / ExpiredTokenException /
 *   IncompleteSignature (403), ThrottlingException (400), RequestEntityTooLargeException (413),
 *   InternalFailure (500), ServiceUnavailable (503), ValidationError (400), RequestTimeoutException (408).
 * - manage-sending-quotas-errors.html: over the sending limits the API answers a throttling error whose
 *   message is "Maximum sending rate exceeded" or "Daily message quota exceeded"; SES drops that message
 *   and it should be retried later. The text decides, whatever the error's name (seen as
 *   TooManyRequestsException 429 with {"message":"Maximum sending rate exceeded."}).
 */
export function classifyApiError(err: unknown): ApiOutcome {
  const e = (err ?? {}) as SdkError;
  const name = e.name ?? 'Error';
  const text = e.message ?? '';
  const status = e.$metadata?.httpStatusCode;
  // A spent daily quota: slowing down does not help; a later step pauses delivery until the window rolls.
  if (/daily (message |sending )?quota|quota exceeded/i.test(text)) {
    return outcome('transient', 454, '4.7.0', { signal: 'daily-quota-exceeded' });
  }
  if (
    /maximum sending rate|rate exceeded/i.test(text) ||
    ['TooManyRequestsException', 'ThrottlingException', 'Throttling'].includes(name) ||
    status === 429
  ) {
    return outcome('throttled', 454, '4.7.0');
  }
  switch (name) {
    case 'SendingPausedException':
      return outcome('transient', 451, '4.7.0', {
        signal: 'sending-paused',
        operator: 'SES has paused sending for this account (or its configuration set): mail stays queued',
      });
    case 'AccountSuspendedException':
      return outcome('transient', 451, '4.7.0', {
        signal: 'sending-paused',
        operator: "SES has suspended this account's ability to send: mail stays queued",
      });
    case 'MessageRejected':
      return outcome('permanent', 554, '5.7.1');
    case 'MailFromDomainNotVerifiedException':
      return outcome('permanent', 553, '5.7.1');
    case 'RequestEntityTooLargeException':
      return outcome('permanent', 552, '5.3.4');
    case 'NotFoundException':
      return outcome('transient', 451, '4.3.5', {
        operator:
          'SES does not know a resource the call names: check SES_CONFIGURATION_SET; mail stays queued',
      });
    case 'LimitExceededException':
      return outcome('transient', 451, '4.7.0');
  }
  if (REQUEST_ERRORS.has(name)) return outcome('permanent', 554, '5.5.4');
  if (AUTH_ERRORS.has(name) || status === 401 || status === 403) {
    return outcome('transient', 451, '4.7.0', {
      operator:
        'SES refused our AWS credentials or IAM policy (the role needs ses:SendEmail): mail stays queued',
    });
  }
  if (status === 413) return outcome('permanent', 552, '5.3.4');
  if (e.$fault === 'server' || (status !== undefined && status >= 500))
    return outcome('transient', 451, '4.3.0');
  // No HTTP answer at all (ECONNREFUSED, a reset, a TimeoutError of the SDK's handler, DNS): network.
  if (status === undefined) return outcome('transient', 0, '');
  // Any other answer of SES: not known to be the message's fault, so retried (until MAX_QUEUE_AGE).
  return outcome('transient', 451, '4.0.0');
}

/** The reply text recorded in the spool and the logs for an API error. */
export function apiErrorReply(err: unknown, o: ApiOutcome): string {
  const e = (err ?? {}) as SdkError;
  const message = (e.message || String(err)).replace(/\s+/g, ' ').trim();
  if (o.code === 0) return `${e.code ?? e.name ?? 'ERROR'}: ${message}`;
  const status = e.$metadata?.httpStatusCode;
  return `${o.code} ${o.enhanced} SES API ${e.name ?? 'Error'}${status ? ` (HTTP ${status})` : ''}: ${message}`;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream)
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}

export class SesApiTransport implements Transport {
  readonly name: string;
  private readonly client: SESv2Client;
  private readonly options: SesApiTransportOptions;
  private readonly logger: Logger;
  private lastNetworkFailure = false;
  private closed = false;

  constructor(options: SesApiTransportOptions) {
    this.options = options;
    this.logger = options.logger;
    this.name = options.name ?? `ses-api:${options.region}`;
    this.client = new SESv2Client({
      region: options.region,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      maxAttempts: 1,
      requestHandler: {
        connectionTimeout: options.connectionTimeoutMs,
        socketTimeout: Math.max(options.connectionTimeoutMs, 60_000),
        requestTimeout: options.requestTimeoutMs ?? 120_000,
        // Without it @smithy/node-http-handler (4.14 here) only logs a warning when requestTimeout passes.
        throwOnRequestTimeout: true,
      },
    });
  }

  async send(tx: Transaction): Promise<RecipientResult[]> {
    if (this.closed) return this.all(tx, { class: 'transient', code: 0, enhanced: '' }, 'transport closed');
    const tooBig = (bytes: number) =>
      this.all(
        tx,
        { class: 'permanent', code: 552, enhanced: '5.3.4' },
        `552 5.3.4 Message too big for SES: ${base64Length(bytes)} bytes after base64 encoding, the SES API limit is ${SES_API_MAX_ENCODED_BYTES}`,
      );
    if (base64Length(tx.size) > SES_API_MAX_ENCODED_BYTES) return tooBig(tx.size);
    let raw: Buffer;
    try {
      raw = await readAll(tx.body());
    } catch (err) {
      this.logger.error({ err, queueId: tx.id }, 'cannot read the spooled body');
      const reply = `spooled body unreadable: ${(err as Error).message}`;
      return this.all(tx, { class: 'transient', code: 0, enhanced: '' }, reply);
    }
    if (base64Length(raw.length) > SES_API_MAX_ENCODED_BYTES) return tooBig(raw.length);
    try {
      const out = await this.client.send(new SendEmailCommand(this.input(tx, raw)));
      this.lastNetworkFailure = false;
      const sesMessageId = out.MessageId ?? '';
      const reply = `250 Ok ${sesMessageId}`.trim();
      this.logger.debug(
        { event: 'transport:sent', queueId: tx.id, sesMessageId, rcpts: tx.recipients.length },
        'SES accepted the message',
      );
      return tx.recipients.map((recipient) => ({
        recipient,
        class: 'delivered' as const,
        code: 250,
        reply,
        ...(sesMessageId ? { sesMessageId } : {}),
      }));
    } catch (err) {
      return this.fromError(tx, err);
    }
  }

  private input(tx: Transaction, spooled: Buffer): SendEmailCommandInput {
    const set = tx.configurationSet ?? this.options.configurationSet;
    // A tenant's set is enforced: the message's own header is removed and the tenant's named.
    const raw = tx.configurationSet ? withoutHeaderField(spooled, CONFIGURATION_SET_HEADER) : spooled;
    const useSet = set && !hasHeader(headerSection(raw), CONFIGURATION_SET_HEADER);
    const tags = validTags(tx.tags);
    return {
      ...(tx.mailFrom ? { FromEmailAddress: tx.mailFrom, FeedbackForwardingEmailAddress: tx.mailFrom } : {}),
      Destination: { ToAddresses: [...tx.recipients] },
      Content: { Raw: { Data: raw } },
      ...(useSet ? { ConfigurationSetName: set } : {}),
      ...(tags.length ? { EmailTags: tags.map(([Name, Value]) => ({ Name, Value })) } : {}),
    };
  }

  private fromError(tx: Transaction, err: unknown): RecipientResult[] {
    const o = classifyApiError(err);
    const reply = apiErrorReply(err, o);
    this.lastNetworkFailure = o.code === 0;
    if (o.code === 0) {
      this.logger.warn(
        { event: 'transport:network-error', target: this.name, err: reply, queueId: tx.id },
        'SES API unreachable',
      );
    } else if (o.operator) {
      this.logger.error(
        { event: 'transport:ses-refused', target: this.name, reply, signal: o.signal, queueId: tx.id },
        o.operator,
      );
    }
    return this.all(tx, o, reply);
  }

  private all(tx: Transaction, o: Omit<ApiOutcome, 'operator'>, reply: string): RecipientResult[] {
    return tx.recipients.map((recipient) => ({
      recipient,
      class: o.class,
      code: o.code,
      reply,
      ...(o.signal ? { signal: o.signal } : {}),
    }));
  }

  healthy(): boolean {
    return !this.closed && !this.lastNetworkFailure;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.client.destroy();
  }
}
