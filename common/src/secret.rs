//! Secrets by reference. No secret value travels with a job: a request names where each
//! process finds it (`env:NAME`, `file:PATH`), the reference is what is stored (etcd, manifests)
//! and shown (APIs, summaries), and every process that needs the value resolves it itself.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a process finds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SecretRef {
    /// An environment variable of the process.
    Env(String),
    /// A file (a mounted Kubernetes secret, say); one trailing newline is dropped.
    File(PathBuf),
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        if let Some(name) = s.strip_prefix("env:") {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            return if ok {
                Ok(SecretRef::Env(name.to_string()))
            } else {
                Err(format!("{s:?}: env:NAME needs a variable name"))
            };
        }
        if let Some(path) = s.strip_prefix("file:") {
            return if path.is_empty() {
                Err(format!("{s:?}: file:PATH needs a path"))
            } else {
                Ok(SecretRef::File(PathBuf::from(path)))
            };
        }
        Err(format!(
            "{s:?} is not a reference: give env:NAME or file:PATH (secret values are never taken inline)"
        ))
    }

    /// The value, read now in this process.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("the environment variable {name} is not set in this process")),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_string())
                .map_err(|e| format!("reading {}: {e}", path.display())),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for SecretRef {
    type Error = String;
    fn try_from(s: String) -> Result<SecretRef, String> {
        SecretRef::parse(&s)
    }
}

/// Whether a librdkafka property carries a secret value (passwords, private keys and their
/// passphrases, OAuth client secrets; librdkafka's own "sensitive" list, less the paths and
/// the public CA certificate).
pub fn kafka_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("passphrase")
        || k == "ssl.key.pem"
        || k.ends_with("private.key.pem")
        || k == "sasl.oauthbearer.config"
}

/// What is shown in place of a secret value.
pub const MASK: &str = "****";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_resolve_and_round_trip() {
        let r = SecretRef::parse("env:REWIND_TEST_SECRET_X").unwrap();
        assert_eq!(r.to_string(), "env:REWIND_TEST_SECRET_X");
        assert!(r.resolve().unwrap_err().contains("not set"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let r = SecretRef::parse(&format!("file:{}", f.display())).unwrap();
        assert_eq!(r.resolve().unwrap(), "hunter2");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SecretRef>(&json).unwrap(), r);
        for bad in ["hunter2", "env:", "env:1X", "env:A-B", "file:", ""] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kafka_secret_keys_are_librdkafkas_sensitive_values() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            " SASL.Password ",
        ] {
            assert!(kafka_secret_key(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "ssl.ca.location",
            "ssl.key.location",
            "ssl.ca.pem",
            "message.timeout.ms",
        ] {
            assert!(!kafka_secret_key(k), "{k}");
        }
    }
}
