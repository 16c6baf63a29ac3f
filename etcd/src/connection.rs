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
    /// Per job, when this process last looked for attempts lost with an expired lease.
    pub(crate) lost_checked: std::sync::Arc<Mutex<HashMap<JobId, std::time::Instant>>>,
    /// Held by every clone: the member watcher (several endpoints) stops when the last goes.
    pub(crate) alive: std::sync::Arc<()>,
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
        let tls = security.ca.is_some() || security.cert.is_some();
        let endpoints: Vec<String> = endpoints.iter().map(|e| with_scheme(e, tls)).collect();
        // Several members: balance over those that answer now (see `watch_members`).
        let mut members = Members::new(&endpoints, &options);
        let first: Vec<String> = if endpoints.len() > 1 {
            members.probe_all().await;
            let up = members.up();
            if up.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {where_}: no member answers"
                )));
            }
            up
        } else {
            endpoints.clone()
        };
        let client = Client::connect(&first, Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        let store = EtcdStore {
            client,
            root: if root.ends_with('/') {
                root.to_string()
            } else {
                format!("{root}/")
            },
            endpoints: endpoints.clone(),
            metas: Default::default(),
            drained: Default::default(),
            low: Default::default(),
            turn: Default::default(),
            cache: Default::default(),
            lost_checked: Default::default(),
            alive: Default::default(),
        };
        store
            .client
            .kv_client()
            .get(format!("{}probe", store.root), None)
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        if endpoints.len() > 1 {
            tokio::spawn(watch_members(
                store.client.clone(),
                members,
                std::sync::Arc::downgrade(&store.alive),
            ));
        }
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

/// An endpoint as etcd-client keys its balanced channel: with its scheme (it adds `http://`, or
/// `https://` with TLS, to a bare `host:port`), so that removing it later finds it.
fn with_scheme(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Which etcd members answer, probed one by one. etcd-client balances every request over all
/// the endpoints it was given, whether or not the member behind one is up, so a killed or
/// frozen member fails (or stalls for the request timeout) a share of every request of every
/// process — found by the chaos load test: with one of three members down, workers and
/// coordinators stopped making progress (etcdv3/etcd-client#39). Each member is probed with a
/// status call on a connection of its own, with a short timeout.
struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// One single-endpoint client per member, made on first use.
    probes: Vec<Option<Client>>,
    up: Vec<bool>,
}

/// How long a member may take to answer a probe before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Members {
    fn new(endpoints: &[String], options: &ConnectOptions) -> Members {
        Members {
            endpoints: endpoints.to_vec(),
            options: options
                .clone()
                .with_connect_timeout(PROBE_TIMEOUT)
                .with_timeout(PROBE_TIMEOUT),
            probes: vec![None; endpoints.len()],
            up: vec![false; endpoints.len()],
        }
    }

    async fn answers(&mut self, i: usize) -> bool {
        if self.probes[i].is_none() {
            let connect = Client::connect([&self.endpoints[i]], Some(self.options.clone()));
            match tokio::time::timeout(PROBE_TIMEOUT * 2, connect).await {
                Ok(Ok(c)) => self.probes[i] = Some(c),
                _ => return false,
            }
        }
        let Some(probe) = self.probes[i].as_mut() else {
            return false;
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT * 2, probe.status()).await,
            Ok(Ok(_))
        )
    }

    async fn probe_all(&mut self) {
        for i in 0..self.endpoints.len() {
            self.up[i] = self.answers(i).await;
        }
    }

    fn up(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .zip(&self.up)
            .filter(|(_, up)| **up)
            .map(|(e, _)| e.clone())
            .collect()
    }
}

/// Keeps `client`'s balanced channel to the members that answer: every second each member is
/// probed; one that stops answering leaves the channel (never the last one: requests then fail
/// and are retried as before), one that answers again rejoins it. Requests already sent to a
/// member that died fail or time out and are retried by their callers. Ends when the store's
/// last clone is dropped.
async fn watch_members(client: Client, mut members: Members, alive: std::sync::Weak<()>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if alive.upgrade().is_none() {
            return;
        }
        for i in 0..members.endpoints.len() {
            let answers = members.answers(i).await;
            let endpoint = members.endpoints[i].clone();
            let others_up = members.up.iter().filter(|u| **u).count() > 1;
            if answers && !members.up[i] && client.add_endpoint(&endpoint).await.is_ok() {
                members.up[i] = true;
                tracing::info!(endpoint, "etcd member answers: requests go to it again");
            } else if !answers
                && members.up[i]
                && others_up
                && client.remove_endpoint(&endpoint).await.is_ok()
            {
                members.up[i] = false;
                warn!(
                    endpoint,
                    "etcd member does not answer: no requests go to it until it does"
                );
            }
        }
    }
}
