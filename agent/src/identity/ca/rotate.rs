//! Rotating the CA with an overlap: the new CA is trusted beside the old one before it
//! signs anything, and the old one stays trusted until what it signed has expired.
//!
//! Three steps (`latchkey ca rotate --stage | --activate | --finish`):
//!
//! 1. **Stage.** A new CA (`ca/next.pem`, `ca/next.key`) joins the trust bundle
//!    `ca.pem`, after the issuing one. It has signed nothing yet. A running agent
//!    trusts the bundle within a second; copy it to every client that verifies the
//!    agent from elsewhere before the next step.
//! 2. **Activate.** The new CA issues from now on: `ca.key` becomes its key, and the
//!    old CA's pair is kept as `ca/previous.pem` / `ca/previous.key` so the CRL is
//!    signed by both (a certificate of the old CA can still be revoked). The CLI then
//!    reissues the server certificate. Apps' certificates from the old CA keep
//!    working and renew into the new one.
//! 3. **Finish.** Once nothing the old CA issued is still valid (`issued.json`,
//!    revoked ones aside), it leaves the bundle and the CRL. `force` drops it sooner:
//!    its certificates then stop working at once.
//!
//! Which CA issues is decided by `ca.key` alone ([`Ca::load`] picks the bundle's
//! certificate that key belongs to), so every step writes its files in an order that
//! leaves a directory `load` accepts after a crash at any point, and a step stopped
//! half-way can be run again.

use std::fs;
use std::io;
use std::path::PathBuf;

use rcgen::{Issuer, KeyPair};
use serde::{Deserialize, Serialize};

use super::{
    io_err, now_utc, pem_blocks, read_issued, revoked_serials, write_atomic, Ca, Error, Layout,
    MadeCa, MODE_KEY, MODE_PUBLIC,
};
use crate::secret::SecretString;

impl Layout {
    /// `DIR/ca/next.pem`: a staged CA, trusted, not yet issuing.
    pub fn next_cert(&self) -> PathBuf {
        self.ca_dir().join("next.pem")
    }

    /// `DIR/ca/next.key`.
    pub fn next_key(&self) -> PathBuf {
        self.ca_dir().join("next.key")
    }

    /// `DIR/ca/previous.pem`: the CA before the issuing one, trusted until finished.
    pub fn previous_cert(&self) -> PathBuf {
        self.ca_dir().join("previous.pem")
    }

    /// `DIR/ca/previous.key`: kept to sign its CRL during the overlap.
    pub fn previous_key(&self) -> PathBuf {
        self.ca_dir().join("previous.key")
    }

    /// `DIR/ca/rotation.json`: when the rotation in progress was staged and activated.
    pub fn rotation(&self) -> PathBuf {
        self.ca_dir().join("rotation.json")
    }
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum RotationState {
    /// No rotation in progress: one CA.
    None,
    /// A new CA is trusted and not yet issuing.
    Staged {
        /// Unix seconds.
        since: i64,
    },
    /// The new CA issues; the previous one is still trusted.
    Overlap {
        /// Unix seconds.
        since: i64,
        /// Certificates the previous CA issued that are still valid and not revoked.
        still_valid: usize,
        /// When the last of them expires (Unix seconds).
        last_expiry: Option<i64>,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    staged_at: Option<i64>,
    activated_at: Option<i64>,
}

fn exists(path: &std::path::Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn remove(path: &std::path::Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn in_progress(reason: &str) -> Error {
    Error::Rotation(reason.to_owned())
}

impl Ca {
    fn rotation_record(&self) -> Result<Record, Error> {
        let path = self.layout.rotation();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| Error::Invalid {
                path,
                reason: "not a rotation record",
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_rotation_record(&self, record: &Record) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(record).map_err(|_| Error::Invalid {
            path: self.layout.rotation(),
            reason: "cannot encode the rotation record",
        })?;
        write_atomic(&self.layout.rotation(), &json, MODE_KEY)
    }

    /// The previous CA as a CRL signer, during a rotation's overlap.
    pub(super) fn previous_issuer(&self) -> Result<Option<Issuer<'static, KeyPair>>, Error> {
        let (cert_path, key_path) = (self.layout.previous_cert(), self.layout.previous_key());
        if !exists(&key_path) || !exists(&cert_path) {
            return Ok(None);
        }
        let invalid = |path: &std::path::Path, reason| Error::Invalid {
            path: path.to_owned(),
            reason,
        };
        let key_pem =
            SecretString::new(fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?);
        let key = KeyPair::from_pem(key_pem.expose())
            .map_err(|_| invalid(&key_path, "not a pem private key"))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("read", &cert_path))?;
        Issuer::from_ca_cert_pem(&cert_pem, key)
            .map(Some)
            .map_err(|_| invalid(&cert_path, "not a valid ca certificate"))
    }

    /// Where the rotation stands.
    pub fn rotation_state(&self) -> Result<RotationState, Error> {
        let record = self.rotation_record()?;
        if exists(&self.layout.previous_key()) {
            let since = record.activated_at.unwrap_or(0);
            let (still_valid, last_expiry) =
                self.issued_by_previous(self.previous_serial().as_deref(), since)?;
            return Ok(RotationState::Overlap {
                since,
                still_valid,
                last_expiry,
            });
        }
        if exists(&self.layout.next_key()) {
            return Ok(RotationState::Staged {
                since: record.staged_at.unwrap_or(0),
            });
        }
        Ok(RotationState::None)
    }

    /// Holders whose newest certificate the previous CA issued (serial `previous`;
    /// for records that do not name their issuer: issued before `since`) and which
    /// is still valid and not revoked, and when the last of those expires. A
    /// certificate replaced by a newer one for the same holder (a renewal, a
    /// reissue) does not count.
    fn issued_by_previous(
        &self,
        previous: Option<&str>,
        since: i64,
    ) -> Result<(usize, Option<i64>), Error> {
        let now = crate::clock::unix_now();
        let revoked = revoked_serials(&self.layout.revoked())?;
        let mut newest = std::collections::HashMap::new();
        for record in read_issued(&self.layout.issued())? {
            let entry = newest
                .entry(record.holder.clone())
                .or_insert_with(|| record.clone());
            if record.issued_at >= entry.issued_at {
                *entry = record;
            }
        }
        let by_previous = |r: &super::IssuedRecord| match (&r.issuer, previous) {
            (Some(issuer), Some(previous)) => issuer == previous,
            _ => r.issued_at < since,
        };
        let valid: Vec<i64> = newest
            .into_values()
            .filter(|r| by_previous(r) && r.not_after > now && !revoked.contains(&r.serial))
            .map(|r| r.not_after)
            .collect();
        Ok((valid.len(), valid.iter().copied().max()))
    }

    /// The previous CA's serial, during the overlap.
    fn previous_serial(&self) -> Option<String> {
        fs::read_to_string(self.layout.previous_cert())
            .ok()
            .and_then(|pem| super::serial_of_pem(&pem).ok())
    }

    /// Step 1: a new CA, trusted beside this one, not issuing yet.
    pub fn stage_rotation(&self) -> Result<(), Error> {
        let _lock = self.lock()?;
        if exists(&self.layout.previous_key()) {
            return Err(in_progress(
                "the previous rotation is still in its overlap: finish it first",
            ));
        }
        if exists(&self.layout.next_key()) {
            return Err(in_progress("a new CA is staged already: activate it"));
        }
        let stamp = now_utc();
        let name = format!(
            "latchkey CA {} {:04}{:02}{:02}-{:02}{:02}{:02}",
            self.trust_domain,
            stamp.year(),
            u8::from(stamp.month()),
            stamp.day(),
            stamp.hour(),
            stamp.minute(),
            stamp.second()
        );
        let made = MadeCa::new(&self.trust_domain, name)?;
        // The certificate first: a crash before the key leaves a file the next run
        // replaces; the key's existence is what says a CA is staged.
        write_atomic(
            &self.layout.next_cert(),
            made.cert_pem.as_bytes(),
            MODE_PUBLIC,
        )?;
        write_atomic(
            &self.layout.next_key(),
            made.key_pem.expose().as_bytes(),
            MODE_KEY,
        )?;
        self.write_rotation_record(&Record {
            staged_at: Some(crate::clock::unix_now()),
            activated_at: None,
        })?;
        let bundle = format!("{}{}", self.bundle_pem, made.cert_pem);
        write_atomic(&self.layout.ca_cert(), bundle.as_bytes(), MODE_PUBLIC)
    }

    /// Step 2: the staged CA issues from now on; this one stays trusted and signs its
    /// CRL. Returns the CA as it is now (the server certificate is the caller's).
    pub fn activate_rotation(self) -> Result<Ca, Error> {
        let layout = self.layout.clone();
        {
            let _lock = self.lock()?;
            let (next_cert, next_key) = (layout.next_cert(), layout.next_key());
            if !exists(&next_key) || !exists(&next_cert) {
                return Err(in_progress("no CA is staged: run --stage first"));
            }
            let next_key_pem = SecretString::new(
                fs::read_to_string(&next_key).map_err(io_err("read", &next_key))?,
            );
            let next_cert_pem =
                fs::read_to_string(&next_cert).map_err(io_err("read", &next_cert))?;
            // The staged CA must be trusted before it issues (a crash between stage's
            // last two writes leaves it out of the bundle).
            let staged_block = pem_blocks(&next_cert_pem)
                .first()
                .map(|b| (*b).to_owned())
                .ok_or_else(|| Error::Invalid {
                    path: next_cert.clone(),
                    reason: "no pem certificate",
                })?;
            if !pem_blocks(&self.bundle_pem).contains(&staged_block.as_str()) {
                let bundle = format!("{}{}\n", self.bundle_pem, staged_block);
                write_atomic(&layout.ca_cert(), bundle.as_bytes(), MODE_PUBLIC)?;
            }
            let switched = next_key_pem.expose() == self.key_pem.expose();
            if !switched {
                write_atomic(
                    &layout.previous_cert(),
                    self.cert_pem.as_bytes(),
                    MODE_PUBLIC,
                )?;
                write_atomic(
                    &layout.previous_key(),
                    self.key_pem.expose().as_bytes(),
                    MODE_KEY,
                )?;
                let mut record = self.rotation_record()?;
                record.activated_at = Some(crate::clock::unix_now());
                self.write_rotation_record(&record)?;
                // The switch itself: from here `load` issues with the staged CA.
                write_atomic(&layout.ca_key(), next_key_pem.expose().as_bytes(), MODE_KEY)?;
            }
            remove(&next_key)?;
            remove(&next_cert)?;
        }
        let ca = Ca::load(layout.dir())?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Step 3: the previous CA leaves the bundle and the CRL. Refused while
    /// certificates it issued are still valid, unless `force`.
    pub fn finish_rotation(self, force: bool) -> Result<Ca, Error> {
        let layout = self.layout.clone();
        {
            let _lock = self.lock()?;
            if exists(&layout.next_key()) {
                return Err(in_progress(
                    "a staged CA is not active yet: activate it first",
                ));
            }
            if !exists(&layout.previous_key()) && !exists(&layout.previous_cert()) {
                if pem_blocks(&self.bundle_pem).len() <= 1 {
                    return Err(in_progress("no rotation is in progress"));
                }
            } else if !force {
                let since = self.rotation_record()?.activated_at.unwrap_or(i64::MAX);
                let (still_valid, last) =
                    self.issued_by_previous(self.previous_serial().as_deref(), since)?;
                if still_valid > 0 {
                    return Err(Error::Rotation(format!(
                        "{still_valid} certificate(s) the previous CA issued are still valid (the last until {}): renew them, wait, or finish with --force (they stop working at once)",
                        last.map_or_else(|| "-".to_owned(), crate::api::rfc3339)
                    )));
                }
            }
            // The key first (the CRL is then signed by the issuing CA alone), then the
            // bundle: a crash in between leaves the old CA trusted without a CRL,
            // which refuses only its own certificates.
            remove(&layout.previous_key())?;
        }
        self.write_crl()?;
        write_atomic(&layout.ca_cert(), self.cert_pem.as_bytes(), MODE_PUBLIC)?;
        remove(&layout.previous_cert())?;
        remove(&layout.rotation())?;
        Ca::load(layout.dir())
    }
}

#[cfg(test)]
mod tests;
