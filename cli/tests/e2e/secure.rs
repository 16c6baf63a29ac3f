//! TLS, mutual TLS and bearer-token authentication of the coordinator's API, with a real etcd
//! and the binaries as processes. Certificates are made here with rcgen (a test CA).

use std::fs;
use std::time::Duration;

use rewind_testkit::pki::Pki;
use rewind_testkit::run;
use rewind_testkit::servers::{Etcd, Proc, free_port, wait_port};

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const COORDINATOR: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "coordinator"];

fn jobs(addr: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["jobs", "--coordinator", addr];
    args.extend_from_slice(extra);
    let out = run(REWIND, &args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// TLS with client certificates and a token: a client without the token, with a wrong token,
/// without a client certificate or trusting the wrong CA is refused (exit 1, saying why); with
/// all of them it works.
#[test]
fn tls_mutual_tls_and_token() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "good");
    let other = Pki::new(tmp.path(), "other");
    let token = tmp.path().join("token");
    fs::write(&token, "s3cr3t-token\n").unwrap();
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "not-the-token").unwrap();

    let etcd = Etcd::start();
    let port = free_port();
    let coordinator = Proc::spawn(
        COORDINATOR,
        &[
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--etcd".into(),
            etcd.endpoint(),
            "--tls-cert".into(),
            pki.path("server.pem"),
            "--tls-key".into(),
            pki.path("server.key"),
            "--tls-client-ca".into(),
            pki.path("ca.pem"),
            "--auth-token-file".into(),
            token.display().to_string(),
        ],
        tmp.path().join("coordinator.log"),
    );
    assert!(
        wait_port(port, Duration::from_secs(20)),
        "{}",
        coordinator.log_text()
    );
    let addr = format!("https://127.0.0.1:{port}");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let token_arg = token.display().to_string();
    let wrong_arg = wrong.display().to_string();

    let mut all = tls.to_vec();
    all.extend(["--token-file", &token_arg]);
    let (code, err) = jobs(&addr, &all);
    assert_eq!(code, Some(0), "everything right: {err}");

    let (code, err) = jobs(&addr, &tls);
    assert_eq!(code, Some(1), "no token: {err}");
    assert!(err.contains("missing bearer token"), "{err}");

    let mut bad = tls.to_vec();
    bad.extend(["--token-file", &wrong_arg]);
    let (code, err) = jobs(&addr, &bad);
    assert_eq!(code, Some(1), "wrong token: {err}");
    assert!(err.contains("invalid bearer token"), "{err}");

    let (code, err) = jobs(&addr, &["--tls-ca", &ca, "--token-file", &token_arg]);
    assert_eq!(code, Some(1), "no client certificate: {err}");

    let other_ca = other.path("ca.pem");
    let (code, err) = jobs(
        &addr,
        &[
            "--tls-ca",
            &other_ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token-file",
            &token_arg,
        ],
    );
    assert_eq!(code, Some(1), "wrong CA: {err}");
    assert!(err.contains("cannot reach the coordinator"), "{err}");

    // Plain text to a TLS port does not work either.
    let (code, _) = jobs(
        &format!("http://127.0.0.1:{port}"),
        &["--token-file", &token_arg],
    );
    assert_eq!(code, Some(1));
}

/// A coordinator started with an unreadable or empty token file refuses to start (exit 2).
#[test]
fn bad_security_flags_refuse_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::write(&empty, "  \n").unwrap();
    for (flag, value) in [
        ("--auth-token-file", empty.display().to_string()),
        ("--auth-token-file", "/nonexistent/token".to_string()),
    ] {
        let out = run(
            COORDINATOR,
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                flag,
                &value,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag));
    }
    let out = run(
        COORDINATOR,
        &[
            "--etcd",
            "http://127.0.0.1:1",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
}
