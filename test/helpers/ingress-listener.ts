/**
 * A real SMTP listener for ingress tests: testIngressConfig() with overrides, an in-memory spool unless one
 * is given, silent logs, listening on an ephemeral 127.0.0.1 port.
 */
import {
  createSmtpListener,
  type SmtpListener,
  type SmtpListenerOptions,
} from '../../src/ingress/smtp-listener';
import type { Spool } from '../../src/spool/spool';
import { silentLogger } from '../../src/observability/logger';
import type { IngressConfig } from '../../src/config';
import { MemorySpool } from './memory-spool';
import { testIngressConfig } from './smtp-client';

export async function startTestListener<S extends Spool = MemorySpool>(
  overrides: Partial<IngressConfig> = {},
  extra: Partial<Omit<SmtpListenerOptions, 'config' | 'spool'>> & { spool?: S } = {},
): Promise<{ listener: SmtpListener; spool: S; port: number }> {
  const spool = (extra.spool ?? new MemorySpool()) as S;
  const listener = createSmtpListener({
    logger: silentLogger,
    ...extra,
    config: testIngressConfig(overrides),
    spool,
  });
  await listener.listen();
  return { listener, spool, port: listener.address().port };
}
