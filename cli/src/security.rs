//! The API's security: bearer tokens (one all-access token, or scoped tokens from a tokens
//! file), server TLS, the crypto provider.

use rewind_coordinator::access::Scope;

/// Bearer-token check for the gRPC API: `authorization: Bearer <token>`, compared in constant
/// time with every known token; the caller's [`Scope`] goes with the request to the handlers.
/// Health and reflection stay open (probes and tooling need no secret).
#[derive(Clone)]
pub struct RequireToken {
    tokens: std::sync::Arc<Vec<(Vec<u8>, Scope)>>,
}

/// One entry of a `--tokens-file` (TOML, `[[token]]` tables).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    subject: String,
    token: String,
    tenants: Vec<String>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

impl RequireToken {
    /// Reads the one all-access token from a file (surrounding whitespace ignored); an empty
    /// token is refused.
    pub fn from_file(path: &std::path::Path) -> Result<RequireToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("invalid --auth-token-file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!(
                "invalid --auth-token-file {}: it is empty",
                path.display()
            ));
        }
        Ok(RequireToken {
            tokens: std::sync::Arc::new(vec![(token.as_bytes().to_vec(), Scope::all("token"))]),
        })
    }

    /// Scoped tokens from a `--tokens-file`: each names its subject, tenants and the location
    /// prefixes its jobs may read and write. Anything wrong in it is named, with the entry.
    pub fn from_tokens_file(path: &std::path::Path) -> Result<RequireToken, String> {
        let bad = |what: String| format!("invalid --tokens-file {}: {what}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if file.token.is_empty() {
            return Err(bad("no [[token]] entries".into()));
        }
        let mut tokens = Vec::new();
        for (i, e) in file.token.into_iter().enumerate() {
            let at = |what: String| bad(format!("[[token]] {} ({}): {what}", i + 1, e.subject));
            let token = e.token.trim();
            if token.len() < 16 {
                return Err(at("the token must have at least 16 characters".into()));
            }
            if tokens
                .iter()
                .any(|(t, _): &(Vec<u8>, Scope)| t == token.as_bytes())
            {
                return Err(at("the same token is listed twice".into()));
            }
            if e.subject.trim().is_empty() {
                return Err(at("subject is empty".into()));
            }
            if e.tenants.is_empty() {
                return Err(at("tenants is empty (\"*\" for every tenant)".into()));
            }
            let places = |field: &'static str, list: Option<Vec<String>>| {
                list.map(|l| {
                    l.iter()
                        .map(|s| {
                            if s.contains('{') {
                                return Err(at(format!("{field}: {s}: no placeholders here")));
                            }
                            let org = rewind_common::OrgId::parse("x").expect("valid");
                            let loc = rewind_common::Location::parse("--tokens-file", s, &org)
                                .map_err(|e| at(format!("{field}: {e}")))?;
                            if let rewind_common::Location::Local(p) = &loc
                                && !p.is_absolute()
                            {
                                return Err(at(format!("{field}: {s}: give an absolute path")));
                            }
                            Ok(loc)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
            };
            let scope = Scope {
                subject: e.subject.trim().to_string(),
                tenants: (!e.tenants.iter().any(|t| t == "*")).then(|| e.tenants.clone()),
                sources: places("sources", e.sources.clone())?,
                destinations: places("destinations", e.destinations.clone())?,
            };
            tokens.push((token.as_bytes().to_vec(), scope));
        }
        Ok(RequireToken {
            tokens: std::sync::Arc::new(tokens),
        })
    }

    /// Both kinds at once: the all-access token joins the scoped ones.
    pub fn merge(self, other: RequireToken) -> RequireToken {
        let mut all = (*self.tokens).clone();
        all.extend(other.tokens.iter().cloned());
        RequireToken {
            tokens: std::sync::Arc::new(all),
        }
    }
}

/// Equal in time independent of where the inputs differ (only their lengths leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RequireToken {
    /// The scope of the caller whose `authorization` header this is (`Bearer <token>`), or why
    /// it has none (unauthenticated). Every token is compared, so the time does not tell which
    /// one nearly matched. Shared by the gRPC interceptor and the HTTP API.
    pub fn scope_for(&self, authorization: Option<&str>) -> Result<Scope, tonic::Status> {
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let found = given.and_then(|t| {
            self.tokens
                .iter()
                .fold(None, |hit, (token, scope)| {
                    if constant_time_eq(t, token) {
                        Some(scope)
                    } else {
                        hit
                    }
                })
                .cloned()
        });
        match (given, found) {
            (Some(_), Some(scope)) => Ok(scope),
            (Some(_), None) => Err(tonic::Status::unauthenticated("invalid bearer token")),
            (None, _) => Err(tonic::Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            )),
        }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let scope = self.scope_for(header.as_deref())?;
        let mut req = req;
        req.extensions_mut().insert(scope);
        Ok(req)
    }
}

/// Server TLS from PEM files; with `client_ca`, clients must present a certificate it signed.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<tonic::transport::ServerTlsConfig, String> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("invalid {flag} {}: {e}", p.display()))
    };
    let identity =
        tonic::transport::Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "--tls-client-ca",
            ca,
        )?));
    }
    Ok(tls)
}

/// Chooses the TLS crypto provider once per process, explicitly: ring, which the gRPC stack and
/// the S3 client both use (rustls refuses to guess should a second provider ever be linked in).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_bytes_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
