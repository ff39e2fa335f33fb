// Logging into the agent's log, tagged with the plugin's name.
//
// Never log credential values: the host cannot tell a secret from other text. Log
// field names, lengths, statuses and counts instead.

import { log as hostLog } from 'latchkey:provider/log@0.1.0';

export const trace = (message) => hostLog('trace', String(message));
export const debug = (message) => hostLog('debug', String(message));
export const info = (message) => hostLog('info', String(message));
export const warn = (message) => hostLog('warn', String(message));
export const error = (message) => hostLog('error', String(message));
