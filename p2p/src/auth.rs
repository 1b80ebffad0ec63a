//! Who a request acts for, and the proof: a [`Credential`] is a tenant's key and a chain of
//! [`Delegation`]s from that tenant to the peer that holds it. One mechanism serves both
//! places that need a tenant: a task spec ([`TaskAuth`]: the chain ends at the peer that runs
//! the task) and a block request (the chain ends at the peer that asks for the block).
//!
//! **The chain.** Link 0 is signed by the tenant; link `i` by link `i - 1`'s audience (its key
//! is read from its peer id: ed25519 peer ids embed the key). Each link names the link before
//! it (`parent`), so a link cannot be moved to another chain, and is no wider than it: its
//! expiry and its subtask budget are at most the parent's. The holder is the last link's
//! audience, or the tenant itself when the chain is empty. Every link must be unexpired.
//!
//! A task of a user's own is sent with one link, tenant → executor. A driver's subtask is sent
//! with the driver's chain plus one link, driver's node → subtask's executor; that is the only
//! way a chain grows, so its length is bounded by the subtask depth ([`MAX_CHAIN`]).

use std::{
    collections::HashSet,
    sync::{LazyLock, Mutex, PoisonError},
};

use libp2p::identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use shoal::abi::Cid;

/// The longest chain accepted: a user's task and subtasks up to depth 7.
pub const MAX_CHAIN: usize = 8;

const SPEC_CONTEXT: &[u8] = b"shoal/task-spec/2\n";
const DELEGATION_CONTEXT: &[u8] = b"shoal/delegation/2\n";

/// Links whose signature this process has verified, by [`link_key`]. A link recurs on every
/// request of its chain (a driver's link on each of its subtasks, a task's credential on each
/// block fetched for it), and a signature that verified once verifies again: the ed25519
/// check (~30 µs) is done once, while the parent, width, expiry and audience rules are
/// checked on every use. Cleared when full.
static VERIFIED: LazyLock<Mutex<HashSet<Cid>>> = LazyLock::new(Mutex::default);
const VERIFIED_MAX: usize = 1 << 14;

/// What a link's verification depends on: the signer's key (the tenant's key bytes, or the
/// previous link's audience, whose peer id embeds it), what was signed and the signature.
fn link_key(signer: &[u8], signed: &[u8], signature: &[u8]) -> Cid {
    let mut bytes = Vec::with_capacity(signer.len() + signed.len() + signature.len() + 16);
    for part in [signer, signed] {
        // Length-prefixed, so no two triples give the same bytes.
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.extend_from_slice(signature);
    Cid::of(&bytes)
}

/// Whether the link `key` names verified before.
fn remembered(key: &Cid) -> bool {
    VERIFIED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(key)
}

/// Remembers that the link `key` names verified; true.
fn remember(key: Cid) -> bool {
    let mut verified = VERIFIED.lock().unwrap_or_else(PoisonError::into_inner);
    if verified.len() >= VERIFIED_MAX {
        verified.clear();
    }
    verified.insert(key);
    true
}

/// A tenant and the chain of delegations that lets the holder act for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Credential {
    /// The tenant's ed25519 public key, protobuf-encoded as libp2p encodes keys; its
    /// `PeerId` form is how nodes name the tenant (`--allow`).
    pub tenant: Vec<u8>,
    /// From the tenant to the holder, in order; empty when the holder is the tenant.
    pub chain: Vec<Delegation>,
}

/// One link: its signer's leave for `audience` to act for the tenant within a task, until a
/// time. The signer signs the context string `shoal/delegation/2\n` followed by the postcard
/// encoding of this struct with `signature` empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The peer it is for (its `PeerId` bytes).
    pub audience: Vec<u8>,
    /// Not valid from this time on, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The task it is for ([`crate::TaskSpec::id`]).
    pub task: Cid,
    /// How many subtasks the audience may submit under it.
    pub max_subtasks: u32,
    /// The hash of the previous link's signature, or of the tenant's key for the first.
    pub parent: Cid,
    /// The signer's signature.
    pub signature: Vec<u8>,
}

/// Who a task runs for and the proof: every spec on the wire is signed.
///
/// **What is signed.** [`crate::TaskSpec::signed_bytes`]: the context string
/// `shoal/task-spec/2\n` followed by the spec's postcard encoding with `auth.signature` empty
/// (every other field, the credential included, as sent). Postcard is canonical for these
/// types (no maps, no floats, fixed field order), so both sides compute the same bytes.
///
/// **Who signs.** The signer of the credential's last link (the tenant, for a user's own
/// task; the driver's node, for a subtask); that link names the spec's id and its executor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskAuth {
    /// The tenant and the chain that ends at the executor.
    pub credential: Credential,
    /// When it was signed, in milliseconds since the Unix epoch; executors refuse specs
    /// older than their replay window.
    pub issued_at_ms: u64,
    /// Random: two signings of the same spec differ, so an executor can refuse a replay.
    pub nonce: u64,
    /// The ed25519 signature of the last link's signer over the spec's signed bytes.
    pub signature: Vec<u8>,
}

/// Why a credential or a spec's signature does not hold; the receiver refuses with it
/// (`Denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A key is missing or not an ed25519 key.
    #[error("the {what} key is missing or malformed")]
    BadKey {
        /// Whose key.
        what: &'static str,
    },
    /// The signature over the spec is wrong: the spec was changed after signing, or signed
    /// with another key.
    #[error("the task's signature does not verify")]
    BadSignature,
    /// A link's signature is wrong, or the link was taken from another chain.
    #[error("link {link} of tenant {tenant}'s delegation chain is forged or out of place")]
    BadDelegation {
        /// The tenant.
        tenant: String,
        /// The link's place in the chain, from 0.
        link: usize,
    },
    /// The chain ends at another peer than the one presenting it: replayed or re-targeted.
    #[error("tenant {tenant}'s delegation is for {audience}, not for {holder}")]
    NotTheAudience {
        /// The tenant.
        tenant: String,
        /// Who presented it.
        holder: String,
        /// Whom the chain names.
        audience: String,
    },
    /// A link's time is up.
    #[error("tenant {tenant}'s delegation expired {ago_ms} ms ago")]
    Expired {
        /// The tenant.
        tenant: String,
        /// How long ago.
        ago_ms: u64,
    },
    /// A link gives more than the link it comes from: a later expiry or a larger subtask
    /// budget.
    #[error("link {link} of tenant {tenant}'s delegation chain is wider than its parent")]
    Widened {
        /// The tenant.
        tenant: String,
        /// The link's place in the chain, from 0.
        link: usize,
    },
    /// The chain's last link names another task than the spec it came with.
    #[error("tenant {tenant}'s delegation is for another task")]
    OtherTask {
        /// The tenant.
        tenant: String,
    },
    /// Longer than [`MAX_CHAIN`].
    #[error("the delegation chain has {0} links, more than {MAX_CHAIN}")]
    TooLong(usize),
    /// The presenting key is not the chain's holder, so it cannot extend it.
    #[error("cannot delegate: this key does not hold the credential")]
    NotHolder,
    /// The key could not sign.
    #[error("cannot sign: {0}")]
    Signing(String),
}

pub(crate) fn context_and(context: &[u8], value: &impl Serialize) -> Vec<u8> {
    let mut bytes = context.to_vec();
    bytes.extend(postcard::to_stdvec(value).unwrap_or_default());
    bytes
}

fn public_key(bytes: &[u8], what: &'static str) -> Result<PublicKey, AuthError> {
    PublicKey::try_decode_protobuf(bytes).map_err(|_| AuthError::BadKey { what })
}

/// The public key inside an ed25519 peer id (an identity multihash of the key).
fn key_of_peer(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    (hash.code() == 0).then(|| PublicKey::try_decode_protobuf(hash.digest()).ok())?
}

fn peer_of(bytes: &[u8]) -> String {
    PeerId::from_bytes(bytes).map_or_else(|_| "a malformed peer id".to_owned(), |p| p.to_string())
}

impl Credential {
    /// `keypair` acting for itself.
    pub fn of(keypair: &Keypair) -> Self {
        Self {
            tenant: keypair.public().encode_protobuf(),
            chain: Vec::new(),
        }
    }

    /// The tenant's peer id.
    ///
    /// # Errors
    /// [`AuthError::BadKey`] when the tenant key is malformed.
    pub fn tenant(&self) -> Result<PeerId, AuthError> {
        Ok(public_key(&self.tenant, "tenant")?.to_peer_id())
    }

    /// The key that signed the last link (the tenant's for a chain of one or none).
    fn last_signer(&self) -> Result<PublicKey, AuthError> {
        match self.chain.len() {
            0 | 1 => public_key(&self.tenant, "tenant"),
            n => PeerId::from_bytes(&self.chain[n - 2].audience)
                .ok()
                .as_ref()
                .and_then(key_of_peer)
                .ok_or(AuthError::BadKey { what: "delegate" }),
        }
    }

    /// This credential extended by one link, signed by `keypair` (its holder), for `audience`
    /// to act for the tenant in task `task` until `expires_at_ms` with up to `max_subtasks`
    /// subtasks; the expiry and budget are narrowed to the last link's.
    ///
    /// # Errors
    /// [`AuthError::NotHolder`] when `keypair` does not hold it; [`AuthError::Signing`].
    pub fn delegate(
        &self,
        keypair: &Keypair,
        audience: PeerId,
        expires_at_ms: u64,
        task: Cid,
        max_subtasks: u32,
    ) -> Result<Self, AuthError> {
        let me = keypair.public().to_peer_id();
        let (parent, expires_at_ms, max_subtasks) = match self.chain.last() {
            None if self.tenant == keypair.public().encode_protobuf() => {
                (Cid::of(&self.tenant), expires_at_ms, max_subtasks)
            }
            Some(last) if last.audience == me.to_bytes() => (
                Cid::of(&last.signature),
                expires_at_ms.min(last.expires_at_ms),
                max_subtasks.min(last.max_subtasks),
            ),
            _ => return Err(AuthError::NotHolder),
        };
        let mut link = Delegation {
            audience: audience.to_bytes(),
            expires_at_ms,
            task,
            max_subtasks,
            parent,
            signature: Vec::new(),
        };
        link.signature = keypair
            .sign(&link.signed_bytes())
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        let mut extended = self.clone();
        extended.chain.push(link);
        Ok(extended)
    }

    /// Checks the chain at `now_ms` for `holder` (the peer presenting it) and returns the
    /// tenant it acts for.
    ///
    /// # Errors
    /// [`AuthError`] naming the first thing that does not hold.
    pub fn verify(&self, holder: PeerId, now_ms: u64) -> Result<PeerId, AuthError> {
        self.verify_chain(holder, now_ms).map(|(tenant, _)| tenant)
    }

    /// [`Self::verify`], also giving the tenant's key, decoded (a point decompression).
    fn verify_chain(&self, holder: PeerId, now_ms: u64) -> Result<(PeerId, PublicKey), AuthError> {
        if self.chain.len() > MAX_CHAIN {
            return Err(AuthError::TooLong(self.chain.len()));
        }
        let tenant_key = public_key(&self.tenant, "tenant")?;
        let tenant = tenant_key.to_peer_id();
        let named = || tenant.to_string();
        let mut parent = Cid::of(&self.tenant);
        let mut bounds = (u64::MAX, u32::MAX);
        for (i, link) in self.chain.iter().enumerate() {
            // Each link is signed by the previous one's audience, the first by the tenant.
            let signer_bytes = match i {
                0 => &self.tenant,
                _ => &self.chain[i - 1].audience,
            };
            let signed = link.signed_bytes();
            let key = link_key(signer_bytes, &signed, &link.signature);
            // Only a link not verified before needs its signer's key (a point decompression).
            let signer = match (remembered(&key), i) {
                (true, _) => None,
                (false, 0) => Some(tenant_key.clone()),
                (false, _) => Some(
                    PeerId::from_bytes(signer_bytes)
                        .ok()
                        .as_ref()
                        .and_then(key_of_peer)
                        .ok_or(AuthError::BadKey { what: "delegate" })?,
                ),
            };
            let signed_ok =
                signer.is_none_or(|s| s.verify(&signed, &link.signature) && remember(key));
            if link.parent != parent || !signed_ok {
                return Err(AuthError::BadDelegation {
                    tenant: named(),
                    link: i,
                });
            }
            if link.expires_at_ms > bounds.0 || link.max_subtasks > bounds.1 {
                return Err(AuthError::Widened {
                    tenant: named(),
                    link: i,
                });
            }
            if now_ms >= link.expires_at_ms {
                return Err(AuthError::Expired {
                    tenant: named(),
                    ago_ms: now_ms - link.expires_at_ms,
                });
            }
            bounds = (link.expires_at_ms, link.max_subtasks);
            parent = Cid::of(&link.signature);
        }
        let end = self
            .chain
            .last()
            .map_or_else(|| tenant.to_bytes(), |l| l.audience.clone());
        if end != holder.to_bytes() {
            return Err(AuthError::NotTheAudience {
                tenant: named(),
                holder: holder.to_string(),
                audience: peer_of(&end),
            });
        }
        Ok((tenant, tenant_key))
    }
}

impl Delegation {
    /// The bytes the signer signs: see [`Delegation`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Self {
            signature: Vec::new(),
            ..self.clone()
        };
        context_and(DELEGATION_CONTEXT, &unsigned)
    }
}

impl crate::TaskSpec {
    /// The bytes the signer signs: see [`TaskAuth`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.auth.signature = Vec::new();
        context_and(SPEC_CONTEXT, &unsigned)
    }

    /// Stamps `issued_at_ms` and `nonce` and signs the spec with `keypair`, which must have
    /// signed the credential's last link (see [`Credential::delegate`]).
    ///
    /// # Errors
    /// [`AuthError::Signing`] when the key cannot sign.
    pub fn sign(
        &mut self,
        keypair: &Keypair,
        issued_at_ms: u64,
        nonce: u64,
    ) -> Result<(), AuthError> {
        self.auth.issued_at_ms = issued_at_ms;
        self.auth.nonce = nonce;
        self.auth.signature = keypair
            .sign(&self.signed_bytes())
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(())
    }

    /// Checks the spec at `now_ms` as received by `executor` and returns its tenant: the
    /// credential's chain ends at `executor`, its last link names this spec, and that link's
    /// signer signed the spec.
    ///
    /// # Errors
    /// [`AuthError`] naming what does not hold.
    pub fn verify(&self, executor: PeerId, now_ms: u64) -> Result<PeerId, AuthError> {
        let credential = &self.auth.credential;
        let (tenant, tenant_key) = credential.verify_chain(executor, now_ms)?;
        if let Some(last) = credential.chain.last()
            && last.task != self.id()
        {
            return Err(AuthError::OtherTask {
                tenant: tenant.to_string(),
            });
        }
        // A user's own task is signed by the tenant, whose key is decoded already.
        let signer = match credential.chain.len() {
            0 | 1 => tenant_key,
            _ => credential.last_signer()?,
        };
        if signer.verify(&self.signed_bytes(), &self.auth.signature) {
            Ok(tenant)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskLimits, TaskSpec};

    fn spec(entry: &str) -> TaskSpec {
        TaskSpec {
            module: Cid([1; 32]),
            entry: entry.into(),
            inputs: vec![],
            args: vec![],
            limits: TaskLimits::default(),
            depth: 0,
            progress: 0,
            deterministic: false,
            sources: vec![],
            auth: Box::default(),
        }
    }

    fn key() -> Keypair {
        Keypair::generate_ed25519()
    }

    fn id(k: &Keypair) -> PeerId {
        k.public().to_peer_id()
    }

    /// `spec` as `signer` sends it to `executor` under `credential` (extended to it).
    fn sent(
        mut spec: TaskSpec,
        credential: &Credential,
        signer: &Keypair,
        executor: &Keypair,
        expires: u64,
    ) -> TaskSpec {
        spec.auth.credential = credential
            .delegate(signer, id(executor), expires, spec.id(), 8)
            .unwrap();
        spec.sign(signer, 500, 2).unwrap();
        spec
    }

    /// A user's task verifies at its executor only; a subtask's chain grows by one link per
    /// hop and verifies at the end of it; every way to misuse a chain is refused by name.
    #[test]
    fn chains_verify_at_their_holder_and_nowhere_else() {
        let (tenant, driver, worker, other) = (key(), key(), key(), key());
        let t = id(&tenant);
        let own = Credential::of(&tenant);
        assert_eq!(own.verify(t, 0), Ok(t));
        let task = sent(spec("drive"), &own, &tenant, &driver, 1_000);
        assert_eq!(task.verify(id(&driver), 999), Ok(t));
        // A link verified once is remembered with its signature: another signature is checked.
        let mut flipped = task.clone();
        flipped.auth.credential.chain[0].signature[0] ^= 1;
        assert!(matches!(
            flipped.verify(id(&driver), 999),
            Err(AuthError::BadDelegation { link: 0, .. })
        ));
        // Replayed to another node.
        assert!(matches!(
            task.verify(id(&other), 999),
            Err(AuthError::NotTheAudience { .. })
        ));
        assert!(matches!(
            task.verify(id(&driver), 1_000),
            Err(AuthError::Expired { ago_ms: 0, .. })
        ));
        // The driver's subtask, one hop further; the driver cannot widen what it got.
        let held = task.auth.credential.clone();
        let sub = sent(spec("grad"), &held, &driver, &worker, u64::MAX);
        assert_eq!(sub.verify(id(&worker), 999), Ok(t));
        assert_eq!(sub.auth.credential.chain[1].expires_at_ms, 1_000);
        let mut wide = sub.clone();
        wide.auth.credential.chain[1].max_subtasks = 9;
        wide.auth.credential.chain[1].signature = driver
            .sign(&wide.auth.credential.chain[1].signed_bytes())
            .unwrap();
        wide.sign(&driver, 500, 3).unwrap();
        assert!(matches!(
            wide.verify(id(&worker), 999),
            Err(AuthError::Widened { link: 1, .. })
        ));
        // Only the holder extends a chain; a link signed by someone else is forged.
        assert_eq!(
            held.delegate(&other, id(&worker), 1, Cid([0; 32]), 1),
            Err(AuthError::NotHolder)
        );
        let mut forged = sub.clone();
        forged.auth.credential.chain[0].expires_at_ms = u64::MAX;
        assert!(matches!(
            forged.verify(id(&worker), 999),
            Err(AuthError::BadDelegation { link: 0, .. })
        ));
        // The last link binds the spec: another spec cannot ride on it.
        let mut swapped = spec("other");
        swapped.auth = sub.auth.clone();
        assert!(matches!(
            swapped.verify(id(&worker), 999),
            Err(AuthError::OtherTask { .. })
        ));
        // The spec's signer is the last link's: the tenant cannot sign for the driver's hop.
        let mut resigned = sub.clone();
        resigned.sign(&tenant, 500, 4).unwrap();
        assert_eq!(
            resigned.verify(id(&worker), 999),
            Err(AuthError::BadSignature)
        );
        // A block request's credential: the same chain, held by whoever presents it.
        assert_eq!(sub.auth.credential.verify(id(&worker), 999), Ok(t));
        assert!(matches!(
            sub.auth.credential.verify(id(&driver), 999),
            Err(AuthError::NotTheAudience { .. })
        ));
    }

    /// A link cut from one chain does not fit another of the same signer.
    #[test]
    fn links_do_not_move_between_chains() {
        let (a, b, driver, worker) = (key(), key(), key(), key());
        let from_a = sent(spec("a"), &Credential::of(&a), &a, &driver, 1_000);
        let from_b = sent(spec("b"), &Credential::of(&b), &b, &driver, 1_000);
        let sub_b = sent(spec("s"), &from_b.auth.credential, &driver, &worker, 1_000);
        let mut grafted = from_a.auth.credential.clone();
        grafted.chain.push(sub_b.auth.credential.chain[1].clone());
        assert!(matches!(
            grafted.verify(id(&worker), 0),
            Err(AuthError::BadDelegation { link: 1, .. })
        ));
    }
}
