//! The providers in force, replaceable by a reload.
//!
//! The lifecycle engine and the API hold one [`Live`]; a reload loads the new
//! `[[plugin]]` and `[[lifecycle]]` sections into a new [`Providers`] and swaps it
//! in. Each call takes the set in force when it starts and keeps it to its end, so a
//! call in flight during a reload finishes on the old plugin, and the next one uses
//! the new.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use latchkey_plugin_host as host;

use super::{Credential, Failure, LifecycleSpec, Provider, Providers, Validation};
use crate::path::SecretPath;

/// The [`Providers`] in force.
pub struct Live {
    current: RwLock<Arc<Providers>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live").field(&self.current()).finish()
    }
}

impl Live {
    /// `providers`, in force until [`Live::replace`].
    pub fn new(providers: Providers) -> Self {
        Live {
            current: RwLock::new(Arc::new(providers)),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<Providers> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `providers` in force; calls already running finish on the old set.
    pub fn replace(&self, providers: Providers) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(providers);
    }
}

#[async_trait]
impl Provider for Live {
    fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        self.current().policy(path)
    }

    fn has_rules(&self) -> bool {
        self.current().has_rules()
    }

    async fn validate(&self, path: &SecretPath, cred: &Credential) -> Result<Validation, Failure> {
        self.current().validate(path, cred).await
    }

    async fn create_pending(
        &self,
        path: &SecretPath,
        current: &Credential,
        seed: Option<&host::Seed>,
    ) -> Result<Credential, Failure> {
        self.current().create_pending(path, current, seed).await
    }

    async fn retire(&self, path: &SecretPath, cred: &Credential) -> Result<(), Failure> {
        self.current().retire(path, cred).await
    }

    async fn refresh(&self, path: &SecretPath, cred: &Credential) -> Result<Credential, Failure> {
        self.current().refresh(path, cred).await
    }
}
