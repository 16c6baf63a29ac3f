//! Static validation of `deploy/` (Docker and Kubernetes cannot run on our CI machines): the
//! Kubernetes manifests and the compose file parse, and every command, flag, env var, port and
//! probe they name exists in the binaries, checked against the binaries' own `--help`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rewind_testkit::servers::Program as _;
use serde_json::Value;

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const WORKER: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "worker"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of a file, with merge keys (`<<`) applied, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut v = serde_yaml_ng::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        v.apply_merge()
            .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
        if !v.is_null() {
            docs.push(serde_json::to_value(v).unwrap());
        }
    }
    docs
}

fn help(bin: &str, sub: Option<&str>) -> String {
    let mut cmd = Command::new(bin);
    if let Some(sub) = sub {
        cmd.arg(sub);
    }
    let out = cmd.arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {sub:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One run of one of our binaries, as a manifest states it.
#[derive(Debug)]
struct Invocation {
    bin: &'static str,
    sub: Option<String>,
    args: Vec<String>,
}

impl Invocation {
    /// Through the image's entrypoint, `rewind`: `coordinator …`, `worker …` or a CLI command.
    fn from_entrypoint_args(args: &[String]) -> Invocation {
        Invocation::cli(args)
    }

    fn cli(args: &[String]) -> Invocation {
        Invocation {
            bin: REWIND,
            sub: args.first().cloned(),
            args: args.get(1..).unwrap_or_default().to_vec(),
        }
    }

    /// `rewind …` lines of a shell script.
    fn from_script(script: &str) -> Vec<Invocation> {
        script
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("rewind "))
            .map(|l| Invocation::cli(&l.split_whitespace().map(String::from).collect::<Vec<_>>()))
            .collect()
    }

    fn help(&self) -> String {
        help(self.bin, self.sub.as_deref())
    }

    /// Checks every `--flag` against the binary's help; returns the flags' values.
    fn check_flags(&self, whence: &str) -> BTreeMap<String, String> {
        let help = self.help();
        let mut values = BTreeMap::new();
        let mut i = 0;
        while i < self.args.len() {
            let a = &self.args[i];
            if let Some(flag) = a.strip_prefix("--") {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (flag, None),
                };
                let spelled = format!("--{name}");
                assert!(
                    help.split(|c: char| !(c.is_alphanumeric() || c == '-'))
                        .any(|w| w == spelled),
                    "{whence}: {} {:?} has no flag {spelled}",
                    self.bin,
                    self.sub
                );
                let value = inline.or_else(|| {
                    self.args
                        .get(i + 1)
                        .filter(|v| !v.starts_with("--"))
                        .cloned()
                });
                values.insert(spelled, value.unwrap_or_default());
            }
            i += 1;
        }
        values
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check_env(names: &BTreeSet<String>, invocations: &[Invocation], whence: &str) {
    // The subcommand's help and the binary's own (where process-wide settings are told).
    let helps: Vec<String> = invocations
        .iter()
        .flat_map(|i| [i.help(), help(i.bin, None)])
        .collect();
    for name in names.iter().filter(|n| n.starts_with("REWIND_")) {
        assert!(
            helps.iter().any(|h| h.contains(name.as_str())),
            "{whence}: env {name} is read by none of {:?}",
            invocations.iter().map(|i| i.bin).collect::<Vec<_>>()
        );
    }
}

#[test]
fn kubernetes_manifests_match_the_binaries() {
    let base = deploy().join("k8s/base");
    let kustomization = &yaml_docs(&base.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for r in strings(&kustomization["resources"]) {
        let path = base.join(&r);
        assert!(path.exists(), "kustomization names a missing resource {r}");
        docs.extend(yaml_docs(&path).into_iter().map(|d| (r.clone(), d)));
    }
    yaml_docs(&base.join("hpa.example.yaml"));
    let images: BTreeSet<String> = kustomization["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    // The overlay points at the base and patches a resource that exists.
    let overlay_dir = deploy().join("k8s/overlays/example");
    let overlay = &yaml_docs(&overlay_dir.join("kustomization.yaml"))[0];
    for r in strings(&overlay["resources"]) {
        assert!(
            overlay_dir.join(&r).join("kustomization.yaml").exists(),
            "{r}"
        );
    }

    let configmaps: BTreeMap<String, BTreeSet<String>> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ConfigMap")
        .map(|(_, d)| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["data"].as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect();
    let mut ours = 0;
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        assert!(doc["apiVersion"].is_string(), "{file}: apiVersion");
        assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
        if !matches!(kind, "Deployment" | "StatefulSet") {
            continue;
        }
        let spec = &doc["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().unwrap() {
            let whence = format!("{file} {}", c["name"]);
            let image = c["image"].as_str().unwrap();
            if image != "rewind" {
                continue; // etcd
            }
            assert!(
                images.contains(image),
                "{whence}: image {image} not set by kustomize"
            );
            ours += 1;
            let inv = Invocation::from_entrypoint_args(&strings(&c["args"]));
            let flags = inv.check_flags(&whence);
            // Ports: named container ports are the ones the flags listen on.
            let mut ports = BTreeMap::new();
            for p in c["ports"].as_array().cloned().unwrap_or_default() {
                ports.insert(
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_u64().unwrap() as u16,
                );
            }
            if let Some(listen) = flags.get("--listen") {
                assert_eq!(ports.get("grpc"), Some(&port_of(listen)), "{whence}");
            }
            let metrics = flags.get("--metrics-listen").map(|a| port_of(a));
            assert_eq!(ports.get("metrics").copied(), metrics, "{whence}");
            for probe in ["livenessProbe", "readinessProbe"] {
                let get = &c[probe]["httpGet"];
                assert!(get.is_object(), "{whence}: {probe} missing");
                let path = get["path"].as_str().unwrap();
                assert!(
                    matches!(
                        (probe, path),
                        ("livenessProbe", "/healthz") | ("readinessProbe", "/readyz")
                    ),
                    "{whence}: {probe} on {path}"
                );
                let port = match &get["port"] {
                    Value::String(name) => ports.get(name).copied(),
                    Value::Number(n) => n.as_u64().map(|n| n as u16),
                    _ => None,
                };
                assert_eq!(
                    port, metrics,
                    "{whence}: {probe} must hit the metrics listener"
                );
            }
            let mut env: BTreeSet<String> = c["env"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            for from in c["envFrom"].as_array().cloned().unwrap_or_default() {
                let name = from["configMapRef"]["name"].as_str().unwrap();
                env.extend(configmaps[name].iter().cloned());
            }
            check_env(&env, &[inv], &whence);
            // Workers must be given the time their drain takes.
            if kind == "Deployment" && c["name"] == "worker" {
                let grace: u64 = flags["--grace"].parse().unwrap();
                let pod_grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
                assert!(
                    pod_grace > grace,
                    "terminationGracePeriodSeconds {pod_grace} <= --grace {grace}"
                );
            }
        }
    }
    assert_eq!(ours, 2, "a coordinator and a worker Deployment");
    // The autoscaler's query names a metric the coordinator exports.
    let scaled = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ScaledObject")
        .expect("a KEDA ScaledObject");
    let query = scaled.1["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    let coordinator_src = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/src/metrics.rs"),
    )
    .unwrap();
    // Scaling on pending + running: pending alone drains workers under running shards.
    assert!(query.contains("rewind_shards_wanted"), "{query}");
    assert!(coordinator_src.contains("\"shards_wanted\""));
}

#[test]
fn compose_file_matches_the_binaries() {
    let docs = yaml_docs(&deploy().join("compose/docker-compose.yml"));
    let services = docs[0]["services"].as_object().expect("services");
    for name in ["etcd", "coordinator", "worker", "loadgen"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, svc) in services {
        if svc["image"] != "rewind:dev" {
            continue;
        }
        let whence = format!("compose service {name}");
        let command = strings(&svc["command"]);
        let invocations =
            if strings(&svc["entrypoint"]).first().map(String::as_str) == Some("/bin/sh") {
                let found = Invocation::from_script(&command.join("\n"));
                assert!(
                    !found.is_empty(),
                    "{whence}: no rewind command in the script"
                );
                found
            } else {
                vec![Invocation::from_entrypoint_args(&command)]
            };
        for inv in &invocations {
            inv.check_flags(&whence);
        }
        let env: BTreeSet<String> = svc["environment"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        check_env(&env, &invocations, &whence);
        if let Some(test) = svc["healthcheck"]["test"].as_array() {
            let test: Vec<String> = test
                .iter()
                .skip(1)
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(test[0], "rewind", "{whence}: healthcheck runs the CLI");
            Invocation::cli(&test[1..]).check_flags(&whence);
        }
    }
}

/// The S3 and Kafka load tests are wired: every bucket a load generator names is created in
/// MinIO, every topic it replays into (and, exactly once, its control topic) is created in
/// Redpanda, the hosts it names are services of the file on the ports they listen on, and the
/// Rewind processes hold MinIO's credentials.
#[test]
fn compose_load_tests_name_what_the_file_provides() {
    let docs = yaml_docs(&deploy().join("compose/docker-compose.yml"));
    let services = docs[0]["services"].as_object().expect("services");
    let script = |name: &str| strings(&services[name]["command"]).join("\n");
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let made_buckets: BTreeSet<String> = script("minio-init")
        .lines()
        .filter(|l| l.trim_start().starts_with("mc mb"))
        .flat_map(&words)
        .filter_map(|w| w.strip_prefix("load/").map(String::from))
        .collect();
    let made_topics: BTreeSet<String> = script("redpanda-init")
        .lines()
        .filter(|l| l.trim_start().starts_with("rpk topic create"))
        .flat_map(|l| {
            words(l)
                .into_iter()
                .skip(3)
                .take_while(|w| !w.starts_with('-'))
        })
        .collect();
    let redpanda = strings(&services["redpanda"]["command"]);
    let kafka_port = redpanda
        .iter()
        .find_map(|a| a.strip_prefix("--kafka-addr="))
        .map(port_of)
        .expect("redpanda --kafka-addr");
    let minio = &services["minio"]["environment"];
    for who in ["coordinator", "worker", "loadgen-s3"] {
        let env = &services[who]["environment"];
        assert_eq!(env["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"], "{who}");
        assert_eq!(
            env["AWS_SECRET_ACCESS_KEY"], minio["MINIO_ROOT_PASSWORD"],
            "{who}"
        );
    }
    let (mut buckets, mut topics) = (0, 0);
    for name in ["loadgen", "loadgen-s3", "loadgen-kafka"] {
        for inv in Invocation::from_script(&script(name)) {
            let flags = inv.check_flags(name);
            for (flag, value) in &flags {
                if let Some(rest) = value.strip_prefix("s3://") {
                    let bucket = rest.split('/').next().unwrap();
                    assert!(
                        made_buckets.contains(bucket),
                        "{name}: {flag} {value}: bucket {bucket} is not created by minio-init"
                    );
                    buckets += 1;
                }
            }
            if let Some(url) = flags.get("--endpoint-url") {
                let host = url.trim_start_matches("http://");
                let (host, port) = host.split_once(':').unwrap();
                assert!(services.contains_key(host), "{name}: no service {host}");
                assert_eq!(port, "9000", "{name}: MinIO's S3 port");
            }
            if let Some(brokers) = flags.get("--brokers") {
                for b in brokers.split(',') {
                    let (host, port) = b.split_once(':').unwrap();
                    assert!(services.contains_key(host), "{name}: no service {host}");
                    assert_eq!(port.parse::<u16>().unwrap(), kafka_port, "{name}: {b}");
                }
                let topic = &flags["--topic"];
                let mut need = vec![topic.clone()];
                if flags.get("--delivery").map(String::as_str) == Some("exactly-once") {
                    need.push(format!("{topic}.rewind-control"));
                }
                for t in need {
                    assert!(
                        made_topics.contains(&t),
                        "{name}: topic {t} is not created by redpanda-init {made_topics:?}"
                    );
                    topics += 1;
                }
            }
        }
    }
    assert!(
        buckets >= 3 && topics >= 2,
        "{buckets} buckets, {topics} topics"
    );
}

/// The chaos load test's fleet (`deploy/compose/loadtest/`, run by `deploy/compose/loadtest.sh`):
/// every service on the host's network, 3 etcd members that name each other, 2 coordinators
/// with the ids the chaos loop looks for in etcd's leader key, and every Rewind command, flag
/// and REWIND_* variable known to the binary. Every `${LT_…}` the file reads is one the driver
/// sets, so the ports it talks to are the ports the fleet listens on.
#[test]
fn chaos_load_test_fleet_matches_the_binaries() {
    let dir = deploy().join("compose/loadtest");
    let docs = yaml_docs(&dir.join("compose.yml"));
    let services = docs[0]["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let want = [
        "etcd1",
        "etcd2",
        "etcd3",
        "coordinator1",
        "coordinator2",
        "worker",
        "s3",
        "kafka",
    ];
    assert_eq!(names, BTreeSet::from(want), "services");
    let driver = fs::read_to_string(dir.join("loadtest.py")).unwrap();
    let text = fs::read_to_string(dir.join("compose.yml")).unwrap();
    for var in text.split("${").skip(1) {
        let name = var.split([':', '}']).next().unwrap();
        assert!(
            driver.contains(&format!("\"{name}\"")) || driver.contains(&format!("{name}=")),
            "compose.yml reads ${{{name}}}, which loadtest.py does not set"
        );
    }
    let mut rewinds = 0;
    for (name, svc) in services {
        let whence = format!("chaos fleet service {name}");
        assert_eq!(svc["network_mode"], "host", "{whence}: host network");
        assert_eq!(svc["image"], "rewind-loadtest:local", "{whence}");
        let command = strings(&svc["command"]);
        let script = command.join(" ");
        if let Some(member) = name.strip_prefix("etcd") {
            assert!(script.contains(&format!("--name e{member}")), "{whence}");
            let cluster = svc["environment"]["ETCD_INITIAL_CLUSTER"].as_str().unwrap();
            assert_eq!(cluster.split(',').count(), 3, "{whence}: {cluster}");
            continue;
        }
        // `rewind …` as the command itself or after `exec` in a shell line.
        let args: Vec<String> = match script.split_once("exec rewind ") {
            Some((_, rest)) => rest.split_whitespace().map(String::from).collect(),
            None if command.first().map(String::as_str) == Some("rewind") => command[1..].to_vec(),
            None => continue,
        };
        let inv = Invocation::cli(&args);
        inv.check_flags(&whence);
        let mut env: BTreeSet<String> = svc["environment"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        env.extend(
            script
                .split_whitespace()
                .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_string()))
                .filter(|k| k.starts_with("REWIND_")),
        );
        check_env(&env, std::slice::from_ref(&inv), &whence);
        if name.starts_with("coordinator") {
            assert_eq!(svc["environment"]["REWIND_COORDINATOR_ID"], name.as_str());
        }
        rewinds += 1;
    }
    assert_eq!(rewinds, 3, "two coordinators and the workers run rewind");
}

#[test]
fn dockerfile_ships_the_one_binary_and_its_services_start_from_it() {
    let dockerfile = fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--profile dist"), "built with thin LTO");
    assert!(dockerfile.contains("target/dist/rewind "), "ships rewind");
    for gone in ["rewind-coordinator", "rewind-worker", "entrypoint.sh"] {
        assert!(!dockerfile.contains(gone), "{gone} is gone");
    }
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/rewind"]"#));
    // The image's `coordinator …` / `worker …` reach the services' own command lines.
    for (arg, expect) in [
        ("coordinator", "Usage: rewind coordinator"),
        ("worker", "Usage: rewind worker"),
        ("run", "Usage: rewind run"),
    ] {
        let out = Command::new(REWIND).args([arg, "--help"]).output().unwrap();
        assert!(out.status.success(), "{arg}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expect), "{arg}: {text}");
    }
    let out = Command::new(REWIND).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("coordinator") && text.contains("worker"),
        "{text}"
    );
}

/// docs/configuration.md is generated from the binaries' definitions and must be current
/// (regenerate: `cargo run -p rewind-cli -- config docs > docs/configuration.md`).
#[test]
fn configuration_docs_are_current() {
    let out = Command::new(REWIND)
        .args(["config", "docs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = fs::read_to_string(deploy().join("../docs/configuration.md")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "docs/configuration.md is stale: run `cargo run -p rewind-cli -- config docs > docs/configuration.md`"
    );
}

/// Layering through the real binaries: file < env < flag, unknown keys refused (exit 2), and
/// `rewind config show` masks nothing it should not and shows sources.
#[test]
fn layered_configuration_through_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rewind.toml");
    fs::write(
        &file,
        "[worker]\netcd = [\"http://a:2379\", \"http://b:2379\"]\nslots = 3\ngrace = 40\n\
         [coordinator]\nlease-ttl = 7\n[cli]\ncoordinator = \"http://coord:50051\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = WORKER
        .command()
        .args(["--config", f, "--grace", "50", "--print-config"])
        .env("REWIND_WORKER_SLOTS", "4")
        .env_remove("REWIND_ETCD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("etcd = \"http://a:2379,http://b:2379\"  # file"),
        "{text}"
    );
    assert!(text.contains("slots = \"4\"  # env"), "{text}");
    assert!(text.contains("grace = \"50\"  # flag"), "{text}");
    assert!(text.contains("poll-ms = \"500\"  # default"), "{text}");

    let out = Command::new(REWIND)
        .args(["config", "show", "--for", "coordinator", "--config", f])
        .env_remove("REWIND_ETCD")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lease-ttl = \"7\"  # file"), "{text}");
    assert!(text.contains("# etcd # (unset)"), "{text}");
    let out = Command::new(REWIND)
        .args(["config", "show", "--config", f])
        .env_remove("REWIND_COORDINATOR")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("coordinator = \"http://coord:50051\"  # file")
    );

    fs::write(&file, "[worker]\nslotz = 3\n").unwrap();
    let out = WORKER.command().args(["--config", f]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no setting slotz"));
    // Options before the service's name reach it too.
    let out = Command::new(REWIND)
        .args(["--config", f, "worker"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no setting slotz"));
    fs::write(&file, "slots = 3\n").unwrap();
    let out = Command::new(REWIND)
        .args(["jobs", "--config", f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The README's front door is `scripts/sample.sh`, which runs `cargo run -p rewind-cli -- run …`
/// (the README also gives that command): with three binaries in the package, that only works
/// while `rewind` is the package's default-run binary.
#[test]
fn readme_cargo_run_reaches_the_rewind_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("../README.md")).unwrap();
    assert!(readme.contains("```sh\nscripts/sample.sh\n```"));
    assert!(readme.contains("cargo run --release -p rewind-cli -- run "));
    let sample = fs::read_to_string(root.join("../scripts/sample.sh")).unwrap();
    assert!(sample.contains("scripts/build-deps.sh"));
    assert!(sample.contains("cargo run --release -p rewind-cli -- run --source examples/archive"));
    let manifest: toml::Table = fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        manifest["package"]["default-run"].as_str(),
        Some("rewind"),
        "cli/Cargo.toml needs default-run = \"rewind\""
    );
}
