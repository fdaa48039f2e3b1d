/**
 * Start an smtp-server instance listening: resolves with its address once it listens, rejects with the
 * bind error (EADDRINUSE, EACCES…) otherwise. Shared by the relay's SMTP listener and the autoresponder's.
 */
import type { AddressInfo } from 'node:net';
import type { SMTPServer } from 'smtp-server';

export function listenSmtp(smtp: SMTPServer, port: number, host: string): Promise<AddressInfo> {
  return new Promise<AddressInfo>((resolve, reject) => {
    const onError = (err: Error): void => {
      smtp.server.off('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      smtp.server.off('error', onError);
      resolve(smtp.server.address() as AddressInfo);
    };
    smtp.server.once('error', onError);
    smtp.server.once('listening', onListening);
    smtp.listen(port, host);
  });
}
