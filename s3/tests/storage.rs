//! The storage contract and the S3 failure modes against real S3-compatible servers.
//! s3s-fs (checks signatures, no versioning) runs the main cases; moto (versioning) the
//! pinned-version case. A fault proxy sits between the client and s3s-fs for the fault cases.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rewind_common::S3Options;
use rewind_common::storage::{IoStats, ObjectSource, OutputStore, StorageError};
use rewind_common::storage_contract::{Backend, pattern, read_pinned, run_all};
use rewind_s3::{RetryPolicy, S3Output, S3Source, connect_static};
use rewind_testkit::s3::{ACCESS_KEY, FaultProxy, Faults, S3Kind, S3Server, SECRET_KEY};

const PART: usize = 5 * 1024 * 1024;

fn options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint_url: Some(endpoint.to_string()),
        force_path_style: true,
        region: Some("us-east-1".into()),
        ..S3Options::default()
    }
}

fn stores(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    secret: &str,
) -> Result<(S3Source, S3Output), StorageError> {
    rt.block_on(async {
        let client = connect_static(&options(endpoint), ACCESS_KEY, secret)
            .await?
            .with_retry(RetryPolicy {
                max_attempts: 6,
                base: std::time::Duration::from_millis(5),
                cap: std::time::Duration::from_millis(50),
            });
        let source = S3Source::open(client.clone(), bucket, prefix, 4).await?;
        Ok((source, S3Output::new(client, bucket, prefix, PART)))
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// s3s-fs: the whole contract, below a prefix, without versions.
#[test]
fn s3s_fs_passes_the_storage_contract() {
    let server = S3Server::start_s3s();
    server.create_bucket("contract", false);
    let rt = runtime();
    let (source, output) =
        stores(&rt, &server.endpoint(), "contract", "root/", SECRET_KEY).unwrap();
    run_all(&Backend {
        source: &source,
        output: &output,
        part_size: PART,
        versioned: false,
        lists_unfinished: false,
    });
    // Everything stayed below the prefix.
    assert!(
        server
            .list("contract", "")
            .iter()
            .all(|(k, _)| k.starts_with("root/"))
    );
}

/// Azurite (the Azure Storage emulator): the whole contract, below a prefix, without versions;
/// reads pinned by ETag.
#[test]
fn azurite_passes_the_storage_contract() {
    use rewind_testkit::azure::{ACCOUNT, ACCOUNT_KEY, Azurite};
    let az = Azurite::start();
    az.create_container("contract");
    let rt = runtime();
    let store = rt
        .block_on(rewind_s3::AzureStore::open_with(
            rewind_s3::MicrosoftAzureBuilder::new()
                .with_endpoint(format!("{}/{ACCOUNT}", az.url()))
                .with_account(ACCOUNT)
                .with_access_key(ACCOUNT_KEY)
                .with_allow_http(true),
            "contract",
            "root/",
            PART,
            4,
        ))
        .unwrap();
    run_all(&Backend {
        source: &store,
        output: &store,
        part_size: PART,
        versioned: false,
        lists_unfinished: false,
    });
    assert!(
        az.list("contract", "")
            .iter()
            .all(|(k, _)| k.starts_with("root/"))
    );
}

/// gcp-storage-emulator (GCS's JSON API) behind the testkit's proxy for generation reads and
/// create-if-absent: the whole contract, below a prefix, without versions; reads pinned by
/// generation; files over a part go up as resumable uploads in 256 KiB units.
#[test]
fn gcs_emulator_passes_the_storage_contract() {
    use rewind_testkit::gcs::GcsEmulator;
    let gcs = GcsEmulator::start();
    gcs.create_bucket("contract");
    let rt = runtime();
    // A part of 1 MiB: resumable uploads in several chunks.
    let part = 1 << 20;
    let store = rt
        .block_on(rewind_s3::GcsStore::open_at(
            Some(gcs.url()),
            "contract",
            "root/",
            part,
            4,
        ))
        .unwrap();
    run_all(&Backend {
        source: &store,
        output: &store,
        part_size: part,
        versioned: false,
        lists_unfinished: false,
    });
    assert!(
        gcs.list("contract", "")
            .iter()
            .all(|(k, _)| k.starts_with("root/"))
    );
    // A bucket that is not there is named when the store opens.
    let err = rt
        .block_on(rewind_s3::GcsStore::open_at(
            Some(gcs.url()),
            "no-such-bucket",
            "",
            part,
            4,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gs://no-such-bucket"), "{err}");
}

/// moto: the contract with a versioned bucket; pinned reads survive overwrites and deletes.
#[test]
fn moto_passes_the_storage_contract_with_versions() {
    let server = S3Server::start_moto();
    server.create_bucket("versioned", true);
    let rt = runtime();
    let (source, output) = stores(&rt, &server.endpoint(), "versioned", "", SECRET_KEY).unwrap();
    run_all(&Backend {
        source: &source,
        output: &output,
        part_size: PART,
        versioned: true,
        lists_unfinished: true,
    });
    // Outputs in a versioned bucket report their VersionId.
    let written = output.put("v/x", b"x").unwrap();
    assert!(written.version.is_some());
}

/// Through a proxy that cuts every other object body half-way and throttles every 4th request:
/// the bytes arrive exact, cut bodies resume from where they stopped (ranged GET), and every
/// retry is counted.
#[test]
fn cut_bodies_resume_and_throttling_is_retried_and_counted() {
    let server = S3Server::start_s3s();
    server.create_bucket("faulty", false);
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| pattern(1_500_000 + i * 977, i as u8))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        server.put("faulty", &format!("p/obj-{i}"), b);
    }
    let proxy = FaultProxy::start(
        server.port,
        Faults {
            slowdown_every: 4,
            reset_every: 2,
        },
    );
    let rt = runtime();
    let (source, _) = stores(&rt, &proxy.endpoint(), "faulty", "", SECRET_KEY).unwrap();
    let stats = Arc::new(IoStats::default());
    let source = source.with_stats(stats.clone());
    let listed = source.list("p/").unwrap();
    assert_eq!(listed.len(), bodies.len());
    for (meta, body) in listed.iter().zip(&bodies) {
        let got = read_pinned(source.as_ref(), meta).unwrap();
        assert!(&got == body, "{} differs", meta.key);
    }
    let resets = proxy.counts.resets.load(Ordering::Relaxed);
    let slowdowns = proxy.counts.slowdowns.load(Ordering::Relaxed);
    assert!(
        resets >= 2 && slowdowns >= 2,
        "faults injected: {resets} resets, {slowdowns} 503s"
    );
    assert_eq!(
        stats.resumed.load(Ordering::Relaxed),
        resets,
        "one resume per cut body"
    );
    assert!(
        stats.retries.load(Ordering::Relaxed) >= resets + slowdowns,
        "retries {} < faults {}",
        stats.retries.load(Ordering::Relaxed),
        resets + slowdowns
    );
}

/// Listing pins each object with what the listing gives: where a store lists ETags (moto, as AWS
/// S3 does) no object costs a HEAD; where it lists none (s3s-fs) each object costs one, and the
/// pin still holds.
#[test]
fn listings_that_carry_etags_pin_without_a_head_per_object() {
    for server in [S3Server::start_moto(), S3Server::start_s3s()] {
        server.create_bucket("pinned", false);
        for i in 0..5 {
            server.put(
                "pinned",
                &format!("h/obj-{i}"),
                &pattern(1_000 + i, i as u8),
            );
        }
        let proxy = FaultProxy::start(server.port, Faults::default());
        let rt = runtime();
        let (source, _) = stores(&rt, &proxy.endpoint(), "pinned", "", SECRET_KEY).unwrap();
        let listed = source.list("h/").unwrap();
        assert_eq!(listed.len(), 5, "{:?}", server.kind);
        assert!(
            listed
                .iter()
                .all(|m| m.etag.is_some() || m.version.is_some()),
            "every object pinned: {listed:?}"
        );
        let heads = proxy.counts.heads.load(Ordering::Relaxed);
        match server.kind {
            S3Kind::Moto => assert_eq!(heads, 0, "moto lists ETags: no HEAD needed"),
            S3Kind::S3sFs => assert_eq!(heads, 5, "s3s-fs lists no ETags: one HEAD per object"),
        }
        for (i, meta) in listed.iter().enumerate() {
            assert_eq!(
                read_pinned(&source, meta).unwrap(),
                pattern(1_000 + i, i as u8)
            );
        }
    }
}

/// A paged listing hands over the objects of one listing, a page at a time, in key order, each
/// pinned: ListObjectsV2 pages from s3s-fs (which lists no ETags: a HEAD each) and
/// ListObjectVersions pages from moto (versioned). 1,001 objects make two pages of S3's 1,000;
/// the keys are written out of order and the source's root prefix is cut from them.
#[test]
fn paged_listings_hand_over_every_object_once_in_key_order() {
    for (server, versioned) in [
        (S3Server::start_s3s(), false),
        (S3Server::start_moto(), true),
    ] {
        server.create_bucket("paged", versioned);
        let keys: Vec<String> = (0..1_001)
            .map(|i| format!("zone/{:04}/o", (i * 619) % 1_001))
            .collect();
        server.put_many(
            "paged",
            keys.iter().map(|k| (k.clone(), k.as_bytes().to_vec())),
        );
        server.put("paged", "other/x", b"outside the root");
        let rt = runtime();
        let (source, _) = stores(&rt, &server.endpoint(), "paged", "zone/", SECRET_KEY).unwrap();
        let mut pages = Vec::new();
        source
            .list_pages("", &mut |page| {
                pages.push(page);
                Ok(())
            })
            .unwrap();
        assert!(
            pages.len() >= 2,
            "{:?}: {} page(s)",
            server.kind,
            pages.len()
        );
        let flat: Vec<_> = pages.concat();
        assert_eq!(flat.len(), 1_001, "{:?}", server.kind);
        assert!(flat.windows(2).all(|w| w[0].key < w[1].key), "key order");
        assert_eq!(flat[0].key, "0000/o");
        assert!(flat.iter().all(|m| m.etag.is_some() || m.version.is_some()));
        assert_eq!(flat, source.list("").unwrap(), "{:?}", server.kind);
        // An error from the caller stops the listing at that page.
        let mut calls = 0;
        let err = source
            .list_pages("", &mut |_| {
                calls += 1;
                Err(StorageError::Unavailable {
                    what: "the caller".into(),
                    why: "stop here".into(),
                })
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert!(err.to_string().contains("stop here"), "{err}");
    }
}

/// An object overwritten after it was listed fails the read with what changed, not other bytes.
#[test]
fn an_object_overwritten_after_listing_is_refused() {
    let server = S3Server::start_s3s();
    server.create_bucket("pins", false);
    server.put("pins", "h/a", &pattern(100_000, 1));
    let rt = runtime();
    let (source, _) = stores(&rt, &server.endpoint(), "pins", "", SECRET_KEY).unwrap();
    let meta = source.list("h/").unwrap().remove(0);
    server.put("pins", "h/a", &pattern(100_000, 2)); // same size, other bytes
    let mut r = source.open(&meta).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("s3://pins/h/a") && err.contains("changed"),
        "{err}"
    );
}

/// Wrong credentials: refused at once, not retried, naming the bucket and the identity.
#[test]
fn wrong_credentials_fail_fast_naming_bucket_and_identity() {
    let server = S3Server::start_s3s();
    server.create_bucket("locked", false);
    let rt = runtime();
    let started = std::time::Instant::now();
    let err = stores(&rt, &server.endpoint(), "locked", "x/", "not-the-secret")
        .map(|_| ())
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("s3://locked/x/") && text.contains("credential chain"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "not fast: {:?}",
        started.elapsed()
    );
}
