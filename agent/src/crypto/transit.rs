//! A key-encryption key held by OpenBao/Vault Transit.
//!
//! The data key is sent to Transit's `encrypt` endpoint once, when the store is made,
//! and the returned ciphertext is kept in the store's `meta` tree; at every start the
//! agent asks Transit to `decrypt` it. The Transit key never leaves the server, so a
//! copy of the agent's disk alone does not open the store.

use async_trait::async_trait;

use super::{Error, KeyWrapper};
use crate::secret::SecretBytes;
use crate::upstream::openbao::TransitWrapper;

/// [`KeyWrapper`] over a Transit key.
#[derive(Debug)]
pub struct TransitKek {
    id: String,
    transit: TransitWrapper,
}

impl TransitKek {
    /// Wraps with the given Transit client; `mount` only names the key in the id.
    pub fn new(mount: &str, transit: TransitWrapper) -> Self {
        TransitKek {
            id: format!("transit:{}/{}", mount.trim_matches('/'), transit.key_name()),
            transit,
        }
    }
}

#[async_trait]
impl KeyWrapper for TransitKek {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &SecretBytes) -> Result<Vec<u8>, Error> {
        self.transit.wrap(dek).await.map_err(|e| Error::Wrapper {
            kek_id: self.id.clone(),
            source: Box::new(e),
        })
    }

    async fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        self.transit
            .unwrap(wrapped)
            .await
            .map_err(|e| Error::Wrapper {
                kek_id: self.id.clone(),
                source: Box::new(e),
            })
    }
}
