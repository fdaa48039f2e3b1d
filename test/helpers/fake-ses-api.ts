/**
 * A fake Amazon SES v2 API endpoint for tests: a real node:http server on 127.0.0.1 speaking SES v2's
 * REST-JSON protocol, spoken to by the real @aws-sdk/client-sesv2 (point the SDK at it with
 * `endpoint: fake.url` or AWS_ENDPOINT_URL_SESV2). It answers
 * - POST /v2/email/outbound-emails (SendEmail): records the call (sender, Destination, the raw message
 *   decoded from base64, configuration set, the signing key id and region), answers {"MessageId": ...};
 * - GET /v2/email/account (GetAccount): answers the scripted account (SendQuota, SendingEnabled...).
 * Errors are answered the way SES does: the HTTP status of the error in the API reference, an
 * `x-amzn-ErrorType: <Name>:<namespace>` header and a {"message": ...} body, which the SDK turns into its
 * named exception classes (MessageRejected, TooManyRequestsException, ...).
 *
 * Scripting: `queueSend(...answers)` / `queueAccount(...answers)` answer the next calls; `script(fn)` answers
 * any call; an optional recipient-counted rate limit (`rateLimit`) refuses with TooManyRequestsException
 * "Maximum sending rate exceeded." like SES, and `enforceDailyQuota` refuses once SentLast24Hours would pass
 * Max24HourSend. Never a mocked client: the SDK's serialisation, signing and error parsing all run.
 *
 * Not library code: Raw content only (the relay never sends Simple or Template content).
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { maxInWindow } from './windows';

/** A SendEmail call SES accepted. */
export interface ApiSend {
  at: number;
  messageId: string;
  from?: string;
  feedbackTo?: string;
  to: string[];
  cc: string[];
  bcc: string[];
  /** Every Destination address (what SES delivers to and counts). */
  recipients: string[];
  /** The raw message as SES received it (decoded from base64). */
  raw: Buffer;
  configurationSet?: string;
  /** EmailTags, as name -> value (undefined when the call had none). */
  tags?: Record<string, string>;
  accessKeyId?: string;
  region?: string;
  service?: string;
}

/** Every request, answered or refused. */
export interface ApiCall {
  at: number;
  operation: 'SendEmail' | 'GetAccount' | 'Other';
  recipients: string[];
  status: number;
  error?: string;
  accessKeyId?: string;
}

/** A scripted answer: an SES error, a raw HTTP answer, a dropped connection, and/or a delay. */
export interface FakeApiAnswer {
  /** Error name, e.g. 'MessageRejected' (see FAKE_API_ERRORS for the documented ones). */
  error?: string;
  status?: number;
  message?: string;
  /** Answer with this status and body as they are (e.g. a load balancer's 503 page). */
  rawStatus?: number;
  rawBody?: string;
  /** Destroy the connection without answering. */
  drop?: boolean;
  delayMs?: number;
}

/** The SendEmail errors of the SES v2 API reference (and common errors), with SES's HTTP status. */
export const FAKE_API_ERRORS = {
  messageRejected: {
    error: 'MessageRejected',
    status: 400,
    message: 'Email address is not verified. The following identities failed the check: a@example.com',
  },
  mailFromNotVerified: {
    error: 'MailFromDomainNotVerifiedException',
    status: 400,
    message: 'The MAIL FROM domain is not verified',
  },
  badRequest: { error: 'BadRequestException', status: 400, message: 'Illegal address' },
  tooManyRequests: {
    error: 'TooManyRequestsException',
    status: 429,
    message: 'Maximum sending rate exceeded.',
  },
  dailyQuota: { error: 'TooManyRequestsException', status: 429, message: 'Daily message quota exceeded.' },
  dailyQuotaLimit: { error: 'LimitExceededException', status: 400, message: 'Daily message quota exceeded.' },
  limitExceeded: {
    error: 'LimitExceededException',
    status: 400,
    message: 'There are too many instances of the specified resource type.',
  },
  sendingPaused: {
    error: 'SendingPausedException',
    status: 400,
    message: "The message can't be sent because the account's ability to send email is currently paused.",
  },
  accountSuspended: {
    error: 'AccountSuspendedException',
    status: 400,
    message:
      "The message can't be sent because the account's ability to send email has been permanently restricted.",
  },
  notFound: {
    error: 'NotFoundException',
    status: 404,
    message: 'Configuration set <missing> does not exist.',
  },
  throttling: { error: 'ThrottlingException', status: 400, message: 'Rate exceeded' },
  accessDenied: {
    error: 'AccessDeniedException',
    status: 403,
    message:
      'User: arn:aws:sts::123456789012:assumed-role/relay/x is not authorized to perform: ses:GetAccount',
  },
  unrecognizedClient: {
    error: 'UnrecognizedClientException',
    status: 403,
    message: 'The security token included in the request is invalid.',
  },
  internal: { error: 'InternalFailure', status: 500, message: 'Internal failure' },
  serviceUnavailable: { error: 'ServiceUnavailable', status: 503, message: 'Service unavailable' },
  tooLarge: { error: 'RequestEntityTooLargeException', status: 413, message: 'Request entity too large' },
  gatewayPage: { rawStatus: 502, rawBody: '<html><body>Bad Gateway</body></html>' },
  drop: { drop: true },
} as const satisfies Record<string, FakeApiAnswer>;

export interface FakeAccount {
  MaxSendRate: number;
  Max24HourSend: number;
  SentLast24Hours: number;
  SendingEnabled: boolean;
  ProductionAccessEnabled: boolean;
  EnforcementStatus: string;
}

export interface FakeSesApiOptions {
  account?: Partial<FakeAccount>;
  /** Enforce SES's sending rate: recipients per second with a bucket of `burst` recipients. */
  rateLimit?: { perSecond: number; burst: number };
  /** Refuse a send that would take SentLast24Hours past Max24HourSend. */
  enforceDailyQuota?: boolean;
}

export type FakeApiScript = (ctx: {
  operation: ApiCall['operation'];
  recipients: string[];
}) => FakeApiAnswer | undefined;

export interface FakeSesApi {
  url: string;
  port: number;
  /** Mutable: what GetAccount answers (SentLast24Hours grows with every accepted recipient). */
  account: FakeAccount;
  readonly sends: ApiSend[];
  readonly calls: ApiCall[];
  readonly throttledCount: number;
  recipientsReceived(): number;
  maxRecipientsInWindow(ms: number): number;
  waitFor(what: number | ((sends: ApiSend[]) => boolean), timeoutMs?: number): Promise<void>;
  queueSend(...answers: FakeApiAnswer[]): void;
  queueAccount(...answers: FakeApiAnswer[]): void;
  script(fn: FakeApiScript | undefined): void;
  reset(): void;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ses/aws4_request, ...` → its parts. */
function credentialOf(auth: string | undefined): { accessKeyId?: string; region?: string; service?: string } {
  const m = /Credential=([^/]+)\/\d{8}\/([^/]+)\/([^/]+)\/aws4_request/.exec(auth ?? '');
  return m ? { accessKeyId: m[1], region: m[2], service: m[3] } : {};
}

function sendError(res: http.ServerResponse, a: FakeApiAnswer): void {
  if (a.rawStatus) {
    res.writeHead(a.rawStatus, { 'content-type': 'text/html' });
    res.end(a.rawBody ?? '');
    return;
  }
  const name = a.error ?? 'InternalFailure';
  const body = JSON.stringify({ message: a.message ?? name });
  res.writeHead(a.status ?? 400, {
    'content-type': 'application/json',
    'x-amzn-errortype': `${name}:http://internal.amazon.com/coral/com.amazonaws.sesv2/`,
    'x-amzn-requestid': `req-${Date.now()}`,
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function sendJson(res: http.ServerResponse, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

interface SendEmailBody {
  FromEmailAddress?: string;
  FeedbackForwardingEmailAddress?: string;
  Destination?: { ToAddresses?: string[]; CcAddresses?: string[]; BccAddresses?: string[] };
  Content?: { Raw?: { Data?: string } };
  ConfigurationSetName?: string;
  EmailTags?: Array<{ Name?: string; Value?: string }>;
}

export async function startFakeSesApi(options: FakeSesApiOptions = {}): Promise<FakeSesApi> {
  const account: FakeAccount = {
    MaxSendRate: 14,
    Max24HourSend: 50_000,
    SentLast24Hours: 0,
    SendingEnabled: true,
    ProductionAccessEnabled: true,
    EnforcementStatus: 'HEALTHY',
    ...options.account,
  };
  const sends: ApiSend[] = [];
  const calls: ApiCall[] = [];
  const sendQueue: FakeApiAnswer[] = [];
  const accountQueue: FakeApiAnswer[] = [];
  const sockets = new Set<Socket>();
  const waiters = new Set<() => void>();
  let scriptFn: FakeApiScript | undefined;
  let throttledCount = 0;
  let counter = 0;

  const rl = options.rateLimit;
  let tokens = rl ? rl.burst : 0;
  let tokensAt = Date.now();
  const takeTokens = (n: number): boolean => {
    if (!rl) return true;
    const now = Date.now();
    tokens = Math.min(rl.burst, tokens + ((now - tokensAt) / 1000) * rl.perSecond);
    tokensAt = now;
    if (tokens + 1e-9 < n) return false;
    tokens -= n;
    return true;
  };

  async function handleSend(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const cred = credentialOf(req.headers.authorization);
    let body: SendEmailBody;
    try {
      body = JSON.parse((await readBody(req)).toString('utf8')) as SendEmailBody;
    } catch {
      return sendError(res, { error: 'SerializationException', status: 400, message: 'not JSON' });
    }
    const d = body.Destination ?? {};
    const recipients = [...(d.ToAddresses ?? []), ...(d.CcAddresses ?? []), ...(d.BccAddresses ?? [])];
    const call: ApiCall = { at: Date.now(), operation: 'SendEmail', recipients, status: 200, ...cred };
    calls.push(call);
    const answer = sendQueue.shift() ?? scriptFn?.({ operation: 'SendEmail', recipients });
    if (answer?.delayMs) await sleep(answer.delayMs);
    if (answer?.drop) {
      call.status = 0;
      req.socket.destroy();
      return;
    }
    if (answer && (answer.error || answer.rawStatus)) {
      call.status = answer.rawStatus ?? answer.status ?? 400;
      call.error = answer.error;
      return sendError(res, answer);
    }
    if (!body.Content?.Raw?.Data)
      return sendError(res, { error: 'BadRequestException', message: 'no content' });
    if (recipients.length === 0 || recipients.length > 50) {
      call.status = 400;
      call.error = 'MessageRejected';
      return sendError(res, { error: 'MessageRejected', message: 'Recipient count must be 1 to 50' });
    }
    if (options.enforceDailyQuota && account.SentLast24Hours + recipients.length > account.Max24HourSend) {
      call.status = 429;
      call.error = 'TooManyRequestsException';
      return sendError(res, FAKE_API_ERRORS.dailyQuota);
    }
    if (!takeTokens(recipients.length)) {
      throttledCount++;
      call.status = 429;
      call.error = 'TooManyRequestsException';
      return sendError(res, FAKE_API_ERRORS.tooManyRequests);
    }
    const messageId = `0100fake${String(++counter).padStart(6, '0')}-ses`;
    account.SentLast24Hours += recipients.length;
    sends.push({
      at: Date.now(),
      messageId,
      from: body.FromEmailAddress,
      feedbackTo: body.FeedbackForwardingEmailAddress,
      to: d.ToAddresses ?? [],
      cc: d.CcAddresses ?? [],
      bcc: d.BccAddresses ?? [],
      recipients,
      raw: Buffer.from(body.Content.Raw.Data, 'base64'),
      configurationSet: body.ConfigurationSetName,
      tags: body.EmailTags
        ? Object.fromEntries(body.EmailTags.map((t) => [String(t.Name), String(t.Value)]))
        : undefined,
      ...cred,
    });
    sendJson(res, { MessageId: messageId });
    for (const w of [...waiters]) w();
  }

  async function handleAccount(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    await readBody(req);
    const call: ApiCall = {
      at: Date.now(),
      operation: 'GetAccount',
      recipients: [],
      status: 200,
      ...credentialOf(req.headers.authorization),
    };
    calls.push(call);
    const answer = accountQueue.shift() ?? scriptFn?.({ operation: 'GetAccount', recipients: [] });
    if (answer?.delayMs) await sleep(answer.delayMs);
    if (answer?.drop) {
      call.status = 0;
      req.socket.destroy();
      return;
    }
    if (answer && (answer.error || answer.rawStatus)) {
      call.status = answer.rawStatus ?? answer.status ?? 400;
      call.error = answer.error;
      return sendError(res, answer);
    }
    const { MaxSendRate, Max24HourSend, SentLast24Hours, ...rest } = account;
    sendJson(res, {
      ...rest,
      DedicatedIpAutoWarmupEnabled: false,
      SendQuota: { MaxSendRate, Max24HourSend, SentLast24Hours },
    });
  }

  const server = http.createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    const run =
      req.method === 'POST' && url === '/v2/email/outbound-emails'
        ? handleSend(req, res)
        : req.method === 'GET' && url === '/v2/email/account'
          ? handleAccount(req, res)
          : readBody(req).then(() => {
              calls.push({ at: Date.now(), operation: 'Other', recipients: [], status: 404 });
              sendError(res, { error: 'UnknownOperationException', status: 404 });
            });
    run.catch(() => req.socket.destroy());
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    account,
    sends,
    calls,
    get throttledCount() {
      return throttledCount;
    },
    recipientsReceived: () => sends.reduce((n, s) => n + s.recipients.length, 0),
    maxRecipientsInWindow: (ms) =>
      maxInWindow(
        sends.map((s) => ({ at: s.at, n: s.recipients.length })),
        ms,
      ),
    waitFor(what, timeoutMs = 10_000) {
      const done = typeof what === 'number' ? () => sends.length >= what : () => what(sends);
      if (done()) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!done()) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`fake SES API: condition not met within ${timeoutMs} ms (${sends.length} sends)`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    queueSend: (...answers) => void sendQueue.push(...answers),
    queueAccount: (...answers) => void accountQueue.push(...answers),
    script(fn) {
      scriptFn = fn;
    },
    reset() {
      sends.length = 0;
      calls.length = 0;
      throttledCount = 0;
      if (rl) {
        tokens = rl.burst;
        tokensAt = Date.now();
      }
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
