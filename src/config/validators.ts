/**
 * The envalid validators of the configuration's value formats (durations, CIDR lists, bcrypt users, URLs,
 * domains), and the readers of files and addresses the sections share. A validator's error names the
 * format, never the value of a secret.
 */
import fs from 'node:fs';
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';
import ms from 'ms';
import { makeValidator, EnvError } from 'envalid';
import { ConfigError } from './config-error';
import type { SmtpUser } from './config-types';

export const duration = makeValidator<number>((input) => {
  const value = ms(String(input).trim() as ms.StringValue);
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new EnvError(`not a duration (examples: 500ms, 30s, 5m, 5d)`);
  }
  return value;
});

export const durationList = makeValidator<number[]>((input) => {
  const parts = String(input)
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (parts.length === 0) throw new EnvError('empty list of durations');
  return parts.map((p) => {
    const v = ms(p as ms.StringValue);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new EnvError(`"${p}" is not a duration`);
    return v;
  });
});

export const positiveNumber = makeValidator<number>((input) => {
  const v = Number(input);
  if (String(input).trim() === '' || !Number.isFinite(v) || v <= 0)
    throw new EnvError('must be a number > 0');
  return v;
});

/** SES_RATE_LIMIT: recipients per second, or `auto` (read from SES). */
export const rateOrAuto = makeValidator<number | 'auto'>((input) => {
  if (String(input).trim().toLowerCase() === 'auto') return 'auto';
  const v = Number(input);
  if (String(input).trim() === '' || !Number.isFinite(v) || v <= 0)
    throw new EnvError('must be a number > 0 or auto');
  return v;
});

export const httpUrl = makeValidator<string>((input) => {
  const s = String(input).trim();
  if (s === '') return '';
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new EnvError('must be an http:// or https:// URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new EnvError('must be an http:// or https:// URL');
  return s;
});

export const positiveInt = makeValidator<number>((input) => {
  const v = Number(input);
  if (!Number.isInteger(v) || v <= 0) throw new EnvError('must be a whole number > 0');
  return v;
});

export const cidrList = makeValidator<string[]>((input) => {
  const list = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const c of list) {
    if (!ipaddr.isValidCIDR(c) && !ipaddr.isValid(c))
      throw new EnvError(`"${c}" is not a CIDR range or address`);
  }
  return list.map((c) =>
    ipaddr.isValidCIDR(c) ? c : `${c}/${ipaddr.parse(c).kind() === 'ipv4' ? 32 : 128}`,
  );
});

export const userList = makeValidator<SmtpUser[]>((input) => {
  const entries = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return entries.map((e) => {
    const i = e.indexOf(':');
    const username = i > 0 ? e.slice(0, i) : '';
    const hash = i > 0 ? e.slice(i + 1) : '';
    // Do not echo the entry: it carries a password hash.
    if (!username) throw new EnvError('each entry must be user:bcrypt-hash (htpasswd -B format)');
    if (!/^\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}$/.test(hash)) {
      throw new EnvError(`the entry for "${username}" is not a bcrypt hash (htpasswd -nbB user password)`);
    }
    return { username, bcryptHash: hash };
  });
});

export const domainList = makeValidator<string[]>((input) => {
  const list = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return list.map((d) => {
    const ascii = domainToASCII(d.toLowerCase().replace(/^@/, ''));
    if (!ascii || !ascii.includes('.')) throw new EnvError(`"${d}" is not a domain`);
    return ascii;
  });
});

/** A secret: the value is never echoed in the error. */
export const hashKey = makeValidator<string>((input) => {
  const v = String(input);
  if (v !== '' && v.length < 16)
    throw new EnvError('must be at least 16 characters (e.g. openssl rand -hex 32)');
  return v;
});

export const smtpUrl = makeValidator<string>((input) => {
  const v = String(input).trim();
  if (v === '') return v;
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    throw new EnvError('is not a URL (smtp://host:port or smtps://user:password@host:465)');
  }
  if (!/^smtps?:$/.test(url.protocol) || !url.hostname) {
    throw new EnvError('must be smtp://host[:port] or smtps://host[:port] (credentials may be in the URL)');
  }
  return v;
});

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export function readPem(variable: string, file: string): Buffer {
  try {
    const data = fs.readFileSync(file);
    if (!data.includes('-----BEGIN')) throw new ConfigError(variable, `${file} is not a PEM file`);
    return data;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(
      variable,
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
}

/** `Name <addr@domain>` or `addr@domain` -> the bare address, or undefined when it is not one address. */
export function bareAddress(value: string): string | undefined {
  const m = /^\s*(?:[^<>]*<\s*([^<>\s]+)\s*>|([^<>\s]+))\s*$/.exec(value);
  const address = m?.[1] ?? m?.[2];
  if (!address) return undefined;
  const at = address.lastIndexOf('@');
  if (at <= 0 || !/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(address.slice(0, at))) return undefined;
  const domain = domainToASCII(address.slice(at + 1).toLowerCase());
  return domain && domain.includes('.') ? `${address.slice(0, at)}@${domain}` : undefined;
}
