/**
 * smtp-server holds every new connection 100 ms before its 220 greeting (a hard-coded early-talker check in
 * SMTPConnection#init). For a relay that applications reach over a private network that delay only caps
 * throughput (20 clients opening one connection per message can never exceed 200 messages/s), and Postfix's
 * smtpd greets at once. SMTP_GREETING_DELAY (default 0) sets it; this replaces `init` with the same steps and
 * a configurable delay. Pipelining early talkers are still refused by smtp-server once the greeting is sent
 * late (delay > 0); with 0 the greeting goes out on the next tick.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection';

interface ConnectionInternals {
  _server: { options: { maxClients?: number }; connections: Set<unknown> };
  name: string;
  _setListeners(cb: () => void): void;
  connectionReady(): void;
  send(code: number, text: string, close?: boolean): void;
}

let applied: number | undefined;

export function setGreetingDelay(delayMs: number): void {
  if (applied === delayMs) return;
  applied = delayMs;
  const proto = (SMTPConnection as unknown as { prototype: ConnectionInternals & { init(): void } })
    .prototype;
  proto.init = function init(this: ConnectionInternals) {
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
      }
      const timer = setTimeout(() => this.connectionReady(), delayMs);
      timer.unref();
    });
  };
}
