// Reading provider configuration (`config: list<field>`) and credential fields.
//
//   const base = config.require(cfg, 'base-url');        // invalid-config "missing config base-url"
//   const key = config.requireField(cred, 'api-key');    // invalid-config naming the field
//   const scope = config.get(cfg, 'scope', 'read');

import { invalidConfig } from './errors.js';

/** The value of field `name` in a field list, else `fallback`. */
export function get(fields, name, fallback = undefined) {
  const f = fields.find((f) => f.name === name);
  return f === undefined ? fallback : f.value;
}

/** The value of config field `name`; throws `invalid-config` naming it when missing
 * or empty. */
export function require(fields, name) {
  const value = get(fields, name);
  if (value === undefined || value === '') {
    throw invalidConfig(`missing config ${name}`);
  }
  return value;
}

/** The value of credential field `name`, if present. */
export const field = (cred, name) => get(cred.fields, name);

/** The value of credential field `name`; throws `invalid-config` naming the field
 * (never its value) when missing or empty. */
export function requireField(cred, name) {
  const value = field(cred, name);
  if (value === undefined || value === '') {
    throw invalidConfig(`credential of kind ${cred.kind} has no field ${name}`);
  }
  return value;
}

/** A field list from an object: `fields({ 'api-key': '…' })`. */
export const fields = (values) => Object.entries(values).map(([name, value]) => ({ name, value }));
