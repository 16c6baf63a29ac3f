//! The connection: clients, TLS and users, retries, and the key helpers every part uses.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, Txn};
use rewind_common::shard_store::StoreError;
use rewind_common::{JobId, ShardId};
use tracing::warn;

use crate::shards::Meta;
use crate::{ROUND_TRIPS, unavailable};

/// The etcd shard store and job registry. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) client: Client,
    pub(crate) root: String,
    pub(crate) endpoints: Vec<String>,
    pub(crate) metas: std::sync::Arc<Mutex<HashMap<JobId, Meta>>>,
    /// Jobs whose cursor reached the end (it only moves forward): no more refills to try.
    pub(crate) drained: std::sync::Arc<Mutex<HashSet<JobId>>>,
    /// Per job, the lowest fresh ready key last seen (see `fresh_ready`).
    pub(crate) low: std::sync::Arc<Mutex<HashMap<JobId, Vec<u8>>>>,
    /// Claimable keys read but not tried yet, per job; shared by the process's claimants.
    pub(crate) cache: std::sync::Arc<Mutex<HashMap<JobId, Vec<KeyValue>>>>,
    /// Counts reads of claimable keys, to look at retries on every fourth one.
    pub(crate) turn: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .finish()
    }
}

/// How to reach a secured etcd: TLS (a CA to trust, a client certificate for etcd's
/// `--client-cert-auth`) and/or etcd's own users. Paths are read at connect time.
#[derive(Debug, Clone, Default)]
pub struct EtcdSecurity {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
}

impl EtcdSecurity {
    fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, StoreError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                StoreError::Unavailable(format!("reading the etcd {what} {}: {e}", p.display()))
            })
        };
        if self.ca.is_some() || self.cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("CA", ca)?));
            }
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read("certificate", cert)?,
                        read("key", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "an etcd client certificate needs both --etcd-cert and --etcd-key".into(),
                    ));
                }
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(p) => String::from_utf8_lossy(&read("password file", p)?)
                    .trim()
                    .to_string(),
                None => String::new(),
            };
            options = options.with_user(user.clone(), password);
        }
        Ok(options)
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers. One attempt; see [`EtcdStore::connect_retrying`].
    pub async fn connect(endpoints: &[String], root: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_secured(endpoints, root, &EtcdSecurity::default()).await
    }

    /// Connects to a secured etcd (TLS, users).
    pub async fn connect_secured(
        endpoints: &[String],
        root: &str,
        security: &EtcdSecurity,
    ) -> Result<EtcdStore, StoreError> {
        let options = security.apply(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(5))
                .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3)),
        )?;
        let where_ = endpoints.join(",");
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        let store = EtcdStore {
            client,
            root: if root.ends_with('/') {
                root.to_string()
            } else {
                format!("{root}/")
            },
            endpoints: endpoints.to_vec(),
            metas: Default::default(),
            drained: Default::default(),
            low: Default::default(),
            turn: Default::default(),
            cache: Default::default(),
        };
        store
            .client
            .kv_client()
            .get(format!("{}probe", store.root), None)
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        Ok(store)
    }

    /// Connects, retrying with exponential backoff (capped at 5 s) until etcd answers or
    /// `give_up_after` passes. Each failed attempt is logged with the address.
    pub async fn connect_retrying(
        endpoints: &[String],
        root: &str,
        security: &EtcdSecurity,
        give_up_after: Option<Duration>,
    ) -> Result<EtcdStore, StoreError> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match EtcdStore::connect_secured(endpoints, root, security).await {
                Ok(store) => return Ok(store),
                Err(e) => {
                    if give_up_after.is_some_and(|limit| started.elapsed() >= limit) {
                        return Err(e);
                    }
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A KV client, counting the request it is taken for.
    pub(crate) fn kv(&self) -> etcd_client::KvClient {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client.kv_client()
    }

    /// A lease client, counting the request it is taken for.
    pub(crate) fn leases(&self) -> etcd_client::LeaseClient {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client.lease_client()
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn job_key(&self, job: &JobId, kind: &str) -> String {
        format!("{}jobs/{job}/{kind}", self.root)
    }

    pub(crate) fn shard_key(&self, job: &JobId, kind: &str, shard: ShardId) -> String {
        format!("{}jobs/{job}/{kind}/{shard}", self.root)
    }

    pub(crate) fn shard_of(key: &[u8]) -> Option<ShardId> {
        let key = std::str::from_utf8(key).ok()?;
        ShardId::parse(key.rsplit('/').next()?).ok()
    }

    pub(crate) async fn get(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self.kv().get(key, options).await.map_err(unavailable)?;
        Ok(resp.take_kvs())
    }

    pub(crate) async fn get_raw(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self.kv().get(key, options).await.map_err(unavailable)?;
        Ok(resp.take_kvs())
    }

    pub(crate) async fn prefix(&self, key: String) -> Result<Vec<KeyValue>, StoreError> {
        self.get(key, Some(GetOptions::new().with_prefix())).await
    }

    pub(crate) async fn count(&self, key: String) -> Result<u64, StoreError> {
        let resp = self
            .kv()
            .get(key, Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(resp.count().max(0) as u64)
    }

    pub(crate) async fn txn(
        &self,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.kv().txn(txn).await
    }
}
