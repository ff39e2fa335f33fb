// Failing an operation with one of the contract's `provider-error` variants.
//
// `throw errors.unavailable('token service answered 503')` from a provider method;
// componentize-js turns the thrown ProviderError into the `err` of the operation's
// result (it reads `tag` and `val`). What the host does with each variant is in
// wit/types.wit:
//
//   rejected        the service refused the credential          no retry, alerts
//   unavailable     timeout, 5xx, 429, network, bad response    retries with backoff
//   denied          the host refused an HTTP authority or SQL   no retry, audits
//   unsupported     operation or kind not implemented           configuration error
//   invalid-config  a config field is missing or malformed      configuration error
//
// Messages must never contain a secret: the host logs them. Any other thrown value
// (a TypeError from a bug) traps the call, which the host reports as a plugin fault.

/** A provider-error variant: `tag` is its WIT name, `val` the message. */
export class ProviderError {
  constructor(tag, val) {
    this.tag = tag;
    this.val = String(val);
  }

  toString() {
    return `${this.tag}: ${this.val}`;
  }
}

/** The service refused the credential (bad key, revoked, wrong password). */
export const rejected = (message) => new ProviderError('rejected', message);
/** A transient failure: the host retries with backoff and keeps the credential. */
export const unavailable = (message) => new ProviderError('unavailable', message);
/** The host refused a capability (an HTTP authority or SQL connection). */
export const denied = (message) => new ProviderError('denied', message);
/** The operation or credential kind is not implemented by this provider. */
export const unsupported = (message) => new ProviderError('unsupported', message);
/** A provider config field is missing or malformed; name the field. */
export const invalidConfig = (message) => new ProviderError('invalid-config', message);

/** Whether an HTTP status is transient: 408, 429 and 5xx. */
export const isTransientStatus = (status) =>
  status === 408 || status === 429 || (status >= 500 && status <= 599);

/** The error for a non-success HTTP status: transient ones are `unavailable`, any
 * other is `rejected`. */
export function fromStatus(status, what = 'service') {
  const message = `${what} answered ${status}`;
  return isTransientStatus(status) ? unavailable(message) : rejected(message);
}
