//! Who may hold how much of the listener, so one client cannot lock the others out,
//! and which live connections carry which certificate, so a revocation reaches them.
//!
//! Four budgets, each taken by a guard and given back when it is dropped:
//!
//! - **Handshakes** ([`Budget::handshake`]): connections still in their TLS
//!   handshake. When the budget is full, a new connection cuts the oldest handshake
//!   that has not yet sent its ClientHello, or the oldest of all when every one has
//!   ([`Handshake::spoke`]), rather than wait: clients that open connections and
//!   stall cannot keep a prompt client out, and a burst of silent connections cannot
//!   evict a client already in the middle of its handshake. Each handshake also has a
//!   deadline (`limits.handshake_timeout`).
//! - **Per uid** ([`Budget::peer_uid`]): every connection of one Unix-socket peer uid
//!   (`SO_PEERCRED`), handshakes included, counted from accept.
//! - **Established** ([`Budget::establish`]): connections past their handshake, in
//!   total and per identity (the SPIFFE id, or the unidentified together).
//!
//! Established connections are registered with their client certificate; after the
//! CRL changes, [`Budget::cut_if`] cuts every one whose certificate no longer passes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;

/// The sizes of the budgets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) handshakes: usize,
    pub(crate) connections: usize,
    pub(crate) per_identity: usize,
    pub(crate) per_uid: usize,
}

/// Why an established connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every connection slot is taken.
    Total,
    /// This identity holds its share.
    Identity,
}

impl Full {
    /// The stable code in the audit trail.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Full::Total => "too_many_connections",
            Full::Identity => "too_many_connections_for_identity",
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Budget {
    sizes: Sizes,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Handshakes whose ClientHello has not arrived, by age (ids grow), each with
    /// what cuts it.
    silent: BTreeMap<u64, Arc<Notify>>,
    /// Handshakes past their ClientHello, by age.
    spoken: BTreeMap<u64, Arc<Notify>>,
    per_uid: HashMap<u32, usize>,
    per_identity: HashMap<Arc<str>, usize>,
    live: HashMap<u64, Live>,
}

#[derive(Debug)]
struct Live {
    identity: Arc<str>,
    cert: Option<CertificateDer<'static>>,
    cut: Arc<Notify>,
}

impl Budget {
    pub(crate) fn new(sizes: Sizes) -> Arc<Self> {
        Arc::new(Self {
            sizes,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a handshake slot; when all are taken, the oldest silent handshake (or,
    /// when none is silent, the oldest of all) is told to stop ([`Handshake::cut`])
    /// and its slot goes to this one.
    pub(crate) fn handshake(self: &Arc<Self>) -> Handshake {
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        while inner.silent.len() + inner.spoken.len() >= self.sizes.handshakes {
            let oldest = match inner.silent.pop_first() {
                Some(oldest) => Some(oldest),
                None => inner.spoken.pop_first(),
            };
            match oldest {
                Some((_, oldest)) => oldest.notify_one(),
                None => break,
            }
        }
        let cut = Arc::new(Notify::new());
        inner.silent.insert(id, cut.clone());
        Handshake {
            budget: self.clone(),
            id,
            cut,
        }
    }

    /// Takes a slot of `uid`'s share, or `None` when it holds all of it.
    pub(crate) fn peer_uid(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut inner = self.lock();
        let held = inner.per_uid.entry(uid).or_default();
        if *held >= self.sizes.per_uid {
            return None;
        }
        *held += 1;
        Some(UidSlot {
            budget: self.clone(),
            uid,
        })
    }

    /// Takes a connection slot for `identity`, registering `cert` for revocation.
    pub(crate) fn establish(
        self: &Arc<Self>,
        identity: Arc<str>,
        cert: Option<CertificateDer<'static>>,
    ) -> Result<Established, Full> {
        let mut inner = self.lock();
        if inner.live.len() >= self.sizes.connections {
            return Err(Full::Total);
        }
        let held = inner.per_identity.entry(identity.clone()).or_default();
        if *held >= self.sizes.per_identity {
            return Err(Full::Identity);
        }
        *held += 1;
        let id = inner.next;
        inner.next += 1;
        let cut = Arc::new(Notify::new());
        inner.live.insert(
            id,
            Live {
                identity,
                cert,
                cut: cut.clone(),
            },
        );
        Ok(Established {
            budget: self.clone(),
            id,
            cut,
        })
    }

    /// Cuts every established connection whose certificate `refused` says no to;
    /// returns how many.
    pub(crate) fn cut_if(&self, refused: impl Fn(&CertificateDer<'static>) -> bool) -> usize {
        let inner = self.lock();
        let mut cut = 0;
        for live in inner.live.values() {
            if live.cert.as_ref().is_some_and(&refused) {
                live.cut.notify_one();
                cut += 1;
            }
        }
        cut
    }

    /// Connections past their handshake, for tests and metrics.
    #[cfg(test)]
    fn established(&self) -> usize {
        self.lock().live.len()
    }
}

/// A handshake slot; [`Handshake::cut`] resolves when a newer connection took it.
#[derive(Debug)]
pub(crate) struct Handshake {
    budget: Arc<Budget>,
    id: u64,
    cut: Arc<Notify>,
}

impl Handshake {
    /// Resolves when this handshake must give up its slot.
    pub(crate) async fn cut(&self) {
        self.cut.notified().await;
    }

    /// Records that the client's ClientHello arrived: from now on this handshake is
    /// cut only when no silent one is left to cut.
    pub(crate) fn spoke(&self) {
        let mut inner = self.budget.lock();
        if let Some(cut) = inner.silent.remove(&self.id) {
            inner.spoken.insert(self.id, cut);
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        inner.silent.remove(&self.id);
        inner.spoken.remove(&self.id);
    }
}

/// A slot of one uid's share.
#[derive(Debug)]
pub(crate) struct UidSlot {
    budget: Arc<Budget>,
    uid: u32,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        if let Some(held) = inner.per_uid.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                inner.per_uid.remove(&self.uid);
            }
        }
    }
}

/// An established connection's slot; [`Established::cut`] resolves when its
/// certificate was revoked.
#[derive(Debug)]
pub(crate) struct Established {
    budget: Arc<Budget>,
    id: u64,
    cut: Arc<Notify>,
}

impl Established {
    /// Resolves when the connection must be closed at once.
    pub(crate) async fn cut(&self) {
        self.cut.notified().await;
    }
}

impl Drop for Established {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        if let Some(live) = inner.live.remove(&self.id) {
            if let Some(held) = inner.per_identity.get_mut(&live.identity) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    inner.per_identity.remove(&live.identity);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sizes() -> Sizes {
        Sizes {
            handshakes: 2,
            connections: 3,
            per_identity: 2,
            per_uid: 2,
        }
    }

    #[tokio::test]
    async fn a_new_handshake_cuts_the_oldest_when_the_budget_is_full() {
        let b = Budget::new(sizes());
        let first = b.handshake();
        let second = b.handshake();
        let third = b.handshake();
        tokio::time::timeout(Duration::from_secs(1), first.cut())
            .await
            .expect("the oldest is cut");
        let not_cut = tokio::time::timeout(Duration::from_millis(20), second.cut()).await;
        assert!(not_cut.is_err(), "the second keeps its slot");
        drop((first, second, third));
        assert!(b.lock().silent.is_empty());
    }

    #[tokio::test]
    async fn a_burst_of_silent_handshakes_cuts_each_other_before_one_that_spoke() {
        let b = Budget::new(sizes());
        let prompt = b.handshake();
        prompt.spoke();
        let burst: Vec<_> = (0..5).map(|_| b.handshake()).collect();
        let kept = tokio::time::timeout(Duration::from_millis(20), prompt.cut()).await;
        assert!(
            kept.is_err(),
            "the handshake past its ClientHello keeps its slot"
        );
        for cut in &burst[..4] {
            tokio::time::timeout(Duration::from_secs(1), cut.cut())
                .await
                .expect("older silent handshakes are cut");
        }
        let second = b.handshake();
        second.spoke();
        let third = b.handshake();
        tokio::time::timeout(Duration::from_secs(1), prompt.cut())
            .await
            .expect("with no silent one left, the oldest that spoke is cut");
        drop((prompt, burst, second, third));
        let inner = b.lock();
        assert!(inner.silent.is_empty() && inner.spoken.is_empty());
    }

    #[test]
    fn identities_and_uids_get_their_share_and_no_more() {
        let b = Budget::new(sizes());
        let a1 = b.establish("a".into(), None).expect("a first");
        let a2 = b.establish("a".into(), None).expect("a second");
        assert_eq!(
            b.establish("a".into(), None).err(),
            Some(Full::Identity),
            "a holds its share"
        );
        let other = b.establish("b".into(), None).expect("b is served");
        assert_eq!(b.establish("c".into(), None).err(), Some(Full::Total));
        drop(a1);
        let again = b.establish("a".into(), None).expect("a slot came back");
        drop((a2, other, again));
        assert_eq!(b.established(), 0);
        assert!(b.lock().per_identity.is_empty());

        let u1 = b.peer_uid(1000).expect("first");
        let _u2 = b.peer_uid(1000).expect("second");
        assert!(b.peer_uid(1000).is_none());
        assert!(b.peer_uid(1001).is_some(), "another uid is not affected");
        drop(u1);
        assert!(b.peer_uid(1000).is_some());
    }

    #[tokio::test]
    async fn cut_if_reaches_the_connections_of_a_refused_certificate() {
        let b = Budget::new(sizes());
        let revoked = CertificateDer::from(vec![1u8]);
        let fine = CertificateDer::from(vec![2u8]);
        let victim = b.establish("a".into(), Some(revoked.clone())).expect("a");
        let other = b.establish("b".into(), Some(fine)).expect("b");
        assert_eq!(b.cut_if(|c| *c == revoked), 1);
        tokio::time::timeout(Duration::from_secs(1), victim.cut())
            .await
            .expect("the revoked one is cut");
        let kept = tokio::time::timeout(Duration::from_millis(20), other.cut()).await;
        assert!(kept.is_err(), "the other is not");
    }
}
