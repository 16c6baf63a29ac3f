//! The API's security: bearer tokens, server TLS, the crypto provider.

/// Bearer-token check for the gRPC API: `authorization: Bearer <token>`, compared in constant
/// time. Health and reflection stay open (probes and tooling need no secret).
#[derive(Clone)]
pub struct RequireToken {
    token: std::sync::Arc<Vec<u8>>,
}

impl RequireToken {
    /// Reads the token from a file (surrounding whitespace ignored); an empty token is refused.
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
            token: std::sync::Arc::new(token.as_bytes().to_vec()),
        })
    }
}

/// Equal in time independent of where the inputs differ (only their lengths leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        match given {
            Some(t) if constant_time_eq(t, &self.token) => Ok(req),
            Some(_) => Err(tonic::Status::unauthenticated("invalid bearer token")),
            None => Err(tonic::Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            )),
        }
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
