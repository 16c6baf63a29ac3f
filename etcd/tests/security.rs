//! A secured etcd: TLS with client certificates, and etcd's own users. Real etcd servers,
//! certificates from a test CA.

use std::time::Duration;

use rewind_common::registry::JobRegistry as _;
use rewind_common::shard_store::{ShardStore, contract};
use rewind_etcd::{EtcdSecurity, EtcdStore};
use rewind_testkit::pki::Pki;
use rewind_testkit::servers::Etcd;

/// With the CA and a client certificate the store works (the contract's exclusivity check);
/// without a client certificate, or trusting another CA, it does not connect.
#[tokio::test]
async fn tls_with_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "etcd");
    let other = Pki::new(tmp.path(), "other");
    let etcd = Etcd::start_tls(&pki);
    let endpoint = [format!("https://127.0.0.1:{}", etcd.client_port)];
    let good = EtcdSecurity {
        ca: Some(pki.path("ca.pem").into()),
        cert: Some(pki.path("client.pem").into()),
        key: Some(pki.path("client.key").into()),
        ..EtcdSecurity::default()
    };
    let store = EtcdStore::connect_secured(&endpoint, "/rewind/tls/", &good)
        .await
        .expect("TLS with a client certificate");
    contract::claims_are_exclusive(&store).await;

    let no_client_cert = EtcdSecurity {
        ca: Some(pki.path("ca.pem").into()),
        ..EtcdSecurity::default()
    };
    assert!(
        EtcdStore::connect_secured(&endpoint, "/rewind/tls/", &no_client_cert)
            .await
            .is_err()
    );
    let wrong_ca = EtcdSecurity {
        ca: Some(other.path("ca.pem").into()),
        ..good.clone()
    };
    assert!(
        EtcdStore::connect_secured(&endpoint, "/rewind/tls/", &wrong_ca)
            .await
            .is_err()
    );
    assert!(
        EtcdStore::connect(&endpoint, "/rewind/tls/").await.is_err(),
        "no TLS at all"
    );
}

/// etcd with authentication enabled: the configured user and password work, no user does not.
#[tokio::test]
async fn etcd_users() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let password = tmp.path().join("password");
    std::fs::write(&password, "root-pw\n").unwrap();
    let user = EtcdSecurity {
        user: Some("root".into()),
        password_file: Some(password),
        ..EtcdSecurity::default()
    };
    let endpoint = [etcd.endpoint()];
    let store = EtcdStore::connect_secured(&endpoint, "/rewind/auth/", &user)
        .await
        .expect("the user's password works");
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert!(store.lead("c1", lease).await.unwrap());
    assert!(
        EtcdStore::connect(&endpoint, "/rewind/auth/")
            .await
            .is_err(),
        "no user: refused"
    );
}
