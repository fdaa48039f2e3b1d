/**
 * The message receiver: streams the DATA of one transaction into the spool.
 *
 * - 250 is sent only after `spool.store` resolved (durable). The body is streamed, never buffered whole.
 * - Bare LF and bare CR become CRLF on the way (line-endings.ts holds the smuggling rule).
 * - SMTP_MAX_MESSAGE_SIZE counts the bytes as stored, after that normalisation: going over fails the body
 *   before its end, so the spool keeps nothing; the rest of the DATA is read and discarded, then 552 5.3.4.
 * - An API key with allowed_from_domains: the header section is checked as soon as it is complete
 *   (message-headers.ts, session-policy.ts); a refusal fails the body the same way (553 5.7.1).
 * - A spool that cannot store answers 452 4.3.1 and keeps nothing.
 * - The reception carries the session's tenant (session-policy.ts `tenantOf`); after the 250 its stored
 *   recipients are counted towards its daily quota (quota-gate.ts) and in
 *   ses_relay_tenant_recipients_accepted_total{tenant}.
 * Replies come after the client's end-of-data, never in between (smtp-server waits for the stream's end).
 */
import type { Readable, Transform } from 'node:stream';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { IngressConfig } from '../config';
import type { Logger } from '../observability/logger';
import { REPLIES, SmtpReplyError } from '../replies';
import { SpoolWriteError, type Spool } from '../spool/spool';
import type { Envelope } from '../types';
import { tenantLabel } from '../observability/tenant-label';
import { ingressMetrics, rejection } from './ingress-metrics';
import { LineEndingNormalizer, MessageTooBigError } from './line-endings';
import { HeaderSectionCheck } from './message-headers';
import type { SessionPolicy } from './session-policy';

type DataDone = (err?: Error | null, message?: string) => void;

export interface MessageReceiverOptions {
  config: IngressConfig;
  spool: Spool;
  policy: SessionPolicy;
  logger: Logger;
  /** Called once the transaction is answered, with the DATA stream (which may still be draining). */
  afterReply?(session: SMTPServerSession, stream: SMTPServerDataStream): void;
}

/** The body as the spool reads it, and how to stop it. */
interface BodyPipeline {
  body: Readable;
  normalizer: LineEndingNormalizer;
  /** Why we refused the message ourselves (the spool then reports the failed body as a write error). */
  refusal(): SmtpReplyError | undefined;
  abort(err: Error): void;
}

export class MessageReceiver {
  private readonly receiving = new WeakSet<SMTPServerSession>();

  constructor(private readonly options: MessageReceiverOptions) {}

  /** A DATA transaction of this session is being received or stored (shutdown lets it finish). */
  isReceiving(session: SMTPServerSession): boolean {
    return this.receiving.has(session);
  }

  /** smtp-server's onData. */
  receive(stream: SMTPServerDataStream, session: SMTPServerSession, callback: DataDone): void {
    const { policy, spool } = this.options;
    this.receiving.add(session);
    const envelope = policy.envelopeOf(session);
    const user = policy.userOf(session);
    const pipeline = this.pipeline(stream, user?.allowedFromDomains);
    let answered = false;
    const finish = (err: Error | null, message?: string): void => {
      if (answered) return;
      answered = true;
      this.receiving.delete(session);
      callback(err, message);
      this.options.afterReply?.(session, stream);
    };
    const tenant = policy.tenantOf(session);
    const reception = {
      clientAddress: session.remoteAddress,
      heloName: session.hostNameAppearsAs || undefined,
      authUser: user?.user,
      tenant,
    };
    spool.store(envelope, pipeline.body, reception).then(
      (queueId) => finish(null, this.accepted(queueId, envelope, pipeline, session)),
      (err: unknown) => {
        policy.quotaGate.release(session);
        pipeline.abort(err instanceof Error ? err : new Error(String(err)));
        finish(this.refused(err, pipeline, session));
      },
    );
  }

  /** client stream → normalizer (size limit) → header check (API keys with domains) → spool. */
  private pipeline(stream: SMTPServerDataStream, allowedFromDomains?: string[]): BodyPipeline {
    const { config, policy } = this.options;
    const normalizer = new LineEndingNormalizer({ maxBytes: config.maxMessageSize });
    const stages: Transform[] = [normalizer];
    if (allowedFromDomains) {
      const check = (section: string | undefined) => policy.senderHeadersRefusal(section, allowedFromDomains);
      stages.push(new HeaderSectionCheck(check));
    }
    let refusal: SmtpReplyError | undefined;
    let aborted = false;
    // Stop storing: the spool sees the error and keeps nothing. The rest of the DATA is still read (and
    // discarded) so that the reply comes after the client's end-of-data.
    const abort = (err: Error): void => {
      if (aborted) return;
      aborted = true;
      stream.unpipe(normalizer);
      for (const stage of stages) stage.destroy(err);
      stream.resume();
      setImmediate(() => stream.resume());
    };
    for (const stage of stages) {
      stage.on('error', (err) => {
        if (err instanceof MessageTooBigError) refusal ??= rejection('messageTooBig');
        else if (err instanceof SmtpReplyError) refusal ??= err;
        abort(err);
      });
    }
    stream.on('error', (err) => abort(err));
    stream.pipe(normalizer);
    for (let i = 1; i < stages.length; i++) stages[i - 1].pipe(stages[i]);
    return { body: stages[stages.length - 1], normalizer, refusal: () => refusal, abort };
  }

  private accepted(queueId: string, envelope: Envelope, p: BodyPipeline, session: SMTPServerSession): string {
    const size = p.normalizer.bytesOut;
    ingressMetrics.messagesReceived.inc();
    ingressMetrics.recipientsReceived.inc(envelope.recipients.length);
    ingressMetrics.receivedBytes.inc(size);
    const { policy } = this.options;
    const tenant = policy.tenantOf(session);
    ingressMetrics.tenantRecipientsAccepted.inc({ tenant: tenantLabel(tenant) }, envelope.recipients.length);
    policy.quotaGate.accepted(session, tenant, envelope.recipients.length);
    const user = policy.userOf(session)?.user;
    this.options.logger.info(
      {
        event: 'message:accepted',
        queueId,
        from: envelope.mailFrom,
        rcpts: envelope.recipients.length,
        size,
        client: session.remoteAddress,
        user,
      },
      'message accepted',
    );
    return `${REPLIES.queued.enhanced} ${REPLIES.queued.text} ${queueId}`;
  }

  private refused(err: unknown, p: BodyPipeline, session: SMTPServerSession): SmtpReplyError {
    const { logger, config } = this.options;
    const client = session.remoteAddress;
    const refusal = p.refusal();
    if (refusal) {
      const fields = { event: 'message:refused', client, reply: refusal.key, limit: config.maxMessageSize };
      logger.info(fields, 'message refused');
      return refusal;
    }
    if (err instanceof SpoolWriteError) {
      logger.error({ event: 'spool:write-failed', client, err: err.message }, 'spool store failed');
    } else {
      logger.error({ event: 'spool:error', client, err }, 'spool store failed unexpectedly');
    }
    return rejection('spoolUnavailable');
  }
}
