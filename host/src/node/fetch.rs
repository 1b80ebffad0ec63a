//! Fetching a file from the mesh for a tenant: its manifest, then its missing chunks in
//! parallel from several providers, each chunk verified before it is stored. A provider that
//! serves a bad chunk is dropped for the rest of the fetch and the chunk is asked of another.
//!
//! Every request carries the tenant's credential, and providers serve only files the tenant
//! may read there. A local copy counts only if the tenant may read it here: otherwise its
//! manifest is asked of a provider, whose answer is the proof, and the file is then granted
//! to the tenant here too.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use futures::{StreamExt, stream};
use shoal_p2p::{BlockRequest, Credential, PeerId};

use super::{NodeInner, blocking};
use crate::store::{Cid, StoreError};

/// Chunks fetched at once for one file.
const PARALLEL_CHUNKS: usize = 16;

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peer that was asked had a good copy.
    #[error("block {cid} was not found in the mesh (asked {asked} peer(s))")]
    NotFound {
        /// The block.
        cid: Cid,
        /// How many peers were asked.
        asked: usize,
    },
    /// No peer would serve it to the tenant: it is not the tenant's to read, or it does not
    /// exist (providers answer both alike).
    #[error(
        "no peer would serve block {cid} to tenant {tenant}: it is not the tenant's to read, \
         or it does not exist (asked {asked} peer(s))"
    )]
    Denied {
        /// The block.
        cid: Cid,
        /// The tenant it was asked for.
        tenant: String,
        /// How many peers were asked.
        asked: usize,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NodeInner {
    /// Makes file `cid` present here and readable by `credential`'s tenant, asking `hints`
    /// first, then where this node's tasks left it, then the peers that announce it.
    pub(crate) async fn fetch_file(
        &self,
        cid: Cid,
        hints: &[PeerId],
        credential: &Credential,
    ) -> Result<(), FetchError> {
        // A GC while we fetch must not take the manifest or the chunks stored so far.
        let _lease = self.store.lease(&[cid]);
        let me = self.net.local_peer_id();
        let tenant = credential.tenant().map_err(|e| FetchError::Denied {
            cid,
            tenant: e.to_string(),
            asked: 0,
        })?;
        let reader = (tenant != me).then(|| tenant.to_string());
        let mut providers: Vec<PeerId> = hints.to_vec();
        providers.extend(self.locations.of(&cid).filter(|p| !providers.contains(p)));
        let bad = Arc::new(Mutex::new(HashSet::new()));
        let have = self.store.has_block(&cid);
        let may_read = reader
            .as_ref()
            .is_none_or(|r| self.store.may_read(&cid, &cid, r));
        if !have || !may_read {
            let bytes = self
                .fetch_block(cid, cid, credential, &mut providers, &bad, 0)
                .await?;
            if !have {
                self.store_blocks(vec![(cid, bytes)]).await?;
            }
        }
        let store = self.store.clone();
        let missing = blocking("listing chunks", move || store.missing_blocks(&cid)).await?;
        if !missing.is_empty() && providers.is_empty() {
            providers = self.find_providers(cid).await;
        }
        let mut fetched = stream::iter(missing.into_iter().enumerate())
            .map(|(i, chunk)| {
                let mut providers = providers.clone();
                let bad = bad.clone();
                async move {
                    self.fetch_block(chunk, cid, credential, &mut providers, &bad, i)
                        .await
                        .map(|b| (chunk, b))
                }
            })
            .buffer_unordered(PARALLEL_CHUNKS)
            .ready_chunks(PARALLEL_CHUNKS);
        // Store each batch while the next one arrives, so network and disk overlap; this loop
        // holds at most two batches (32 MiB).
        let mut storing = None;
        while let Some(batch) = fetched.next().await {
            let batch = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
            if let Some(previous) = storing.take() {
                previous.await?;
            }
            storing = Some(self.store_blocks(batch));
        }
        if let Some(last) = storing {
            last.await?;
        }
        if let Some(reader) = reader {
            let store = self.store.clone();
            blocking("granting a file", move || store.grant(&cid, &reader)).await?;
        }
        Ok(())
    }

    /// Stores verified blocks with one disk sync for the lot. The work starts at once, on a
    /// blocking thread; the returned future reports how it went.
    fn store_blocks(
        &self,
        blocks: Vec<(Cid, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let store = self.store.clone();
        blocking("storing blocks", move || store.put_verified_batch(&blocks))
    }

    async fn find_providers(&self, cid: Cid) -> Vec<PeerId> {
        let me = self.net.local_peer_id();
        match self.net.find_providers(cid).await {
            Ok(found) => found.into_iter().filter(|p| *p != me).collect(),
            Err(e) => {
                tracing::debug!(%cid, error = %e, "provider lookup failed");
                Vec::new()
            }
        }
    }

    /// Fetches block `cid` of file `file` for `credential`'s tenant and checks it against its
    /// CID, starting at provider `start % len` so parallel chunks spread over the providers.
    /// Falls back to a provider lookup when the known peers fail.
    async fn fetch_block(
        &self,
        cid: Cid,
        file: Cid,
        credential: &Credential,
        providers: &mut Vec<PeerId>,
        bad: &Mutex<HashSet<PeerId>>,
        start: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let mut asked = 0;
        // Peers that answered without the block, denied or not found: for another tenant the
        // two mean the same, as they do to its requests.
        let mut answered = 0;
        let mut denied = 0;
        for round in 0..2 {
            if round == 1 {
                let found = self.find_providers(cid).await;
                providers.retain(|p| !found.contains(p));
                providers.extend(found);
            }
            let n = providers.len();
            for k in 0..n {
                let peer = providers[(start + k) % n];
                if bad
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&peer)
                {
                    continue;
                }
                asked += 1;
                // The network client checks the bytes against the id before returning them.
                let request = BlockRequest {
                    cid,
                    file,
                    credential: credential.clone(),
                };
                match self.net.fetch_block(peer, request).await {
                    Ok(Some(bytes)) => return Ok(bytes),
                    Ok(None) => answered += 1,
                    Err(shoal_p2p::Error::Denied { .. }) => denied += 1,
                    Err(shoal_p2p::Error::BlockMismatch { .. }) => {
                        tracing::warn!(%peer, %cid, "peer served a corrupt block; asking another provider");
                        bad.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(peer);
                    }
                    Err(e) => tracing::debug!(%peer, %cid, error = %e, "block fetch failed"),
                }
            }
        }
        let tenant = credential.tenant().ok();
        let for_another = tenant.is_some_and(|t| t != self.net.local_peer_id());
        if denied > 0 || (for_another && answered > 0) {
            let tenant = tenant.map_or_else(|| "with a malformed key".into(), |t| t.to_string());
            return Err(FetchError::Denied { cid, tenant, asked });
        }
        Err(FetchError::NotFound { cid, asked })
    }
}
