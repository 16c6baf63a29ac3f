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

/// Scoped tokens (`--tokens-file`): a token acts only for its tenants and only below its
/// source and destination prefixes (`PERMISSION_DENIED` otherwise, nothing written); the jobs
/// of other tenants do not exist for it (status, cancel and listing); an all-tenant token sees
/// everything. A tokens file with a bad entry stops the coordinator at start, naming the entry.
#[test]
fn scoped_tokens_limit_tenants_and_places() {
    const WORKER: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "worker"];
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p).display().to_string();
    let (archive, out_a) = (t("archive-a"), t("out-a"));
    crate::common::generate(
        &tmp.path().join("archive-a"),
        "TN-a",
        "2024-04-01T00",
        "1",
        "0.2",
        "5",
        &[],
    );
    let tokens = tmp.path().join("tokens.toml");
    fs::write(
        &tokens,
        format!(
            "[[token]]\nsubject = \"team-a\"\ntoken = \"token-of-team-a-0001\"\n\
             tenants = [\"TN-a\"]\nsources = [\"{archive}\"]\ndestinations = [\"{out_a}\"]\n\n\
             [[token]]\nsubject = \"team-b\"\ntoken = \"token-of-team-b-0002\"\n\
             tenants = [\"TN-b\"]\n\n\
             [[token]]\nsubject = \"ops\"\ntoken = \"token-of-ops-00000003\"\ntenants = [\"*\"]\n"
        ),
    )
    .unwrap();
    let token_file = |name: &str, value: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, value).unwrap();
        p.display().to_string()
    };
    let (a, b, ops) = (
        token_file("a", "token-of-team-a-0001"),
        token_file("b", "token-of-team-b-0002"),
        token_file("ops", "token-of-ops-00000003"),
    );

    let etcd = Etcd::start();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let coordinator = Proc::spawn(
        COORDINATOR,
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--etcd".into(),
            etcd.endpoint(),
            "--tokens-file".into(),
            tokens.display().to_string(),
        ],
        tmp.path().join("coordinator.log"),
    );
    assert!(
        wait_port(port, Duration::from_secs(20)),
        "{}",
        coordinator.log_text()
    );
    let _worker = Proc::spawn(
        WORKER,
        &[
            "--etcd".into(),
            etcd.endpoint(),
            "--poll-ms".into(),
            "100".into(),
        ],
        tmp.path().join("worker.log"),
    );
    let cli = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &addr, "--token-file", token]);
        run(REWIND, &all)
    };
    let submit = |token: &str, org: &str, dest: &str, extra: &[&str]| {
        let mut args = vec![
            "submit",
            "--source",
            &archive,
            "--org",
            org,
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T00",
            "--dest",
            dest,
        ];
        args.extend_from_slice(extra);
        cli(token, &args)
    };

    // Team A, inside its scope: runs.
    let out = submit(&a, "TN-a", &out_a, &["--wait", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = rewind_testkit::stdout_json(&out)["job_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Team A outside its scope: refused, saying what, writing nothing.
    let elsewhere = t("elsewhere");
    let failed = t("failed");
    for (org, dest, extra, says) in [
        ("TN-a", elsewhere.as_str(), &[][..], "as the destination"),
        ("TN-b", out_a.as_str(), &[][..], "org TN-b"),
        (
            "TN-a",
            out_a.as_str(),
            &["--failed-output", failed.as_str()][..],
            "failed output",
        ),
    ] {
        let out = submit(&a, org, dest, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("team-a may not") && err.contains(says),
            "{err}"
        );
    }
    assert!(!tmp.path().join("elsewhere").exists() && !tmp.path().join("failed").exists());

    // Team B does not see team A's job; ops does.
    let listed = |token: &str| -> Vec<String> {
        let out = cli(token, &["jobs", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rewind_testkit::stdout_json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(listed(&b).is_empty());
    assert_eq!(listed(&ops), vec![job.clone()]);
    assert_eq!(listed(&a), vec![job.clone()]);
    for args in [&["status", job.as_str()][..], &["cancel", job.as_str()][..]] {
        let out = cli(&b, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    }
    assert!(cli(&ops, &["status", &job]).status.success());

    // A bad entry: named at start.
    let bad = tmp.path().join("bad.toml");
    fs::write(
        &bad,
        "[[token]]\nsubject = \"short\"\ntoken = \"abc\"\ntenants = [\"TN-a\"]\n",
    )
    .unwrap();
    let out = run(
        COORDINATOR,
        &[
            "--etcd",
            "http://127.0.0.1:1",
            "--tokens-file",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[[token]] 1 (short)") && err.contains("16 characters"),
        "{err}"
    );
}
