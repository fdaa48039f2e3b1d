/**
 * Optional alert email through SES when processing fails (as the original service did): EMAIL_FROM sends to
 * every address of EMAIL_TO (separated by `;`), using the SES API in SES_REGION.
 */
import { SendEmailCommand, type SESClient } from '@aws-sdk/client-ses';

export interface AlertConfig {
  ses: SESClient;
  from: string;
  to: string[];
}

/** Parse EMAIL_TO: `a@x.com; b@y.com` -> ['a@x.com', 'b@y.com']. */
export function parseRecipients(value: string | undefined): string[] {
  return (value ?? '')
    .split(';')
    .map((s) => s.trim())
    .filter(Boolean);
}

export async function sendAlert(alert: AlertConfig, subject: string, text: string): Promise<void> {
  await alert.ses.send(
    new SendEmailCommand({
      Source: alert.from,
      Destination: { ToAddresses: alert.to },
      Message: {
        Subject: { Data: subject, Charset: 'UTF-8' },
        Body: { Text: { Data: text, Charset: 'UTF-8' } },
      },
    }),
  );
}
