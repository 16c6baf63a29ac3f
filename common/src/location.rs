//! Where a job reads and writes: a local directory or an S3 bucket and prefix, parsed from the
//! `--source` / `--dest` / `--failed-output` strings.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::ids::OrgId;
use crate::storage::check_key;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    Local(PathBuf),
    /// `prefix` is empty or ends with `/`; every key of the store sits below it.
    S3 {
        bucket: String,
        prefix: String,
    },
    /// Azure Blob Storage, `az://CONTAINER[/PREFIX]` (the account comes from the environment);
    /// `prefix` as for S3.
    Azure {
        container: String,
        prefix: String,
    },
    /// Google Cloud Storage, `gs://BUCKET[/PREFIX]` (credentials come from the environment:
    /// application default credentials); `prefix` as for S3.
    Gcs {
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX]` or a local path. A `{org}` placeholder anywhere is replaced
    /// with the lowercase org id (Pismo's buckets are `pismo-dataplatform-<org>`).
    pub fn parse(field: &'static str, value: &str, org: &OrgId) -> Result<Location, RequestError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(RequestError::new(field, "is required"));
        }
        let value = value.replace("{org}", &org.as_str().to_ascii_lowercase());
        if value.contains('{') || value.contains('}') {
            return Err(RequestError::new(
                field,
                format!("{value}: the only placeholder is {{org}}"),
            ));
        }
        if let Some(rest) = value.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_gcs_bucket(bucket)
                .map_err(|why| RequestError::new(field, format!("{value}: {why}")))?;
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                check_key(prefix).map_err(|e| RequestError::new(field, format!("{value}: {e}")))?;
            }
            return Ok(Location::Gcs {
                bucket: bucket.to_string(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
            });
        }
        if let Some(rest) = value.strip_prefix("az://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_container(container)
                .map_err(|why| RequestError::new(field, format!("{value}: {why}")))?;
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                check_key(prefix).map_err(|e| RequestError::new(field, format!("{value}: {e}")))?;
            }
            return Ok(Location::Azure {
                container: container.to_string(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
            });
        }
        let Some(rest) = value.strip_prefix("s3://") else {
            if value.contains("://") {
                return Err(RequestError::new(
                    field,
                    format!(
                        "{value}: only s3://, gs:// and az:// URLs and local paths are supported"
                    ),
                ));
            }
            return Ok(Location::Local(PathBuf::from(value)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|why| RequestError::new(field, format!("{value}: {why}")))?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            check_key(prefix).map_err(|e| RequestError::new(field, format!("{value}: {e}")))?;
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// A location below this one (`sub` is a relative key such as `_failed`).
    pub fn join(&self, sub: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(sub)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{}/", sub.trim_matches('/')),
            },
            Location::Azure { container, prefix } => Location::Azure {
                container: container.clone(),
                prefix: format!("{prefix}{}/", sub.trim_matches('/')),
            },
            Location::Gcs { bucket, prefix } => Location::Gcs {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{}/", sub.trim_matches('/')),
            },
        }
    }

    /// The same bucket (container) with another key prefix; a local directory stays as it is.
    pub fn with_prefix(&self, prefix: String) -> Location {
        match self {
            Location::Local(_) => self.clone(),
            Location::S3 { bucket, .. } => Location::S3 {
                bucket: bucket.clone(),
                prefix,
            },
            Location::Azure { container, .. } => Location::Azure {
                container: container.clone(),
                prefix,
            },
            Location::Gcs { bucket, .. } => Location::Gcs {
                bucket: bucket.clone(),
                prefix,
            },
        }
    }

    /// Whether both are in the same bucket (container) of the same kind of store.
    pub fn same_bucket(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::S3 { bucket: a, .. }, Location::S3 { bucket: b, .. })
            | (Location::Gcs { bucket: a, .. }, Location::Gcs { bucket: b, .. })
            | (Location::Azure { container: a, .. }, Location::Azure { container: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }

    /// The key prefix of an object-store location (empty or ending with `/`); none for a
    /// local directory.
    pub fn key_prefix(&self) -> Option<&str> {
        match self {
            Location::Local(_) => None,
            Location::S3 { prefix, .. }
            | Location::Azure { prefix, .. }
            | Location::Gcs { prefix, .. } => Some(prefix),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => {
                write!(f, "s3://{bucket}/{}", prefix.trim_end_matches('/'))
            }
            Location::Azure { container, prefix } => {
                write!(f, "az://{container}/{}", prefix.trim_end_matches('/'))
            }
            Location::Gcs { bucket, prefix } => {
                write!(f, "gs://{bucket}/{}", prefix.trim_end_matches('/'))
            }
        }
    }
}

/// Google Cloud Storage bucket naming rules (names without dots: 3-63 lowercase letters, digits,
/// `-` and `_`, starting and ending with a letter or digit; names with dots up to 222, each
/// dot-separated part up to 63).
fn check_gcs_bucket(b: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    };
    let edges_ok = b
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.bytes()
            .last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (3..=222).contains(&b.len())
        && (b.contains('.') || b.len() <= 63)
        && b.split('.').all(part_ok)
        && edges_ok
        && !b.starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bucket name {b:?} is not a valid Google Cloud Storage bucket (3-63 lowercase letters, \
             digits, '-' and '_', starting and ending with a letter or digit)"
        ))
    }
}

/// Azure container naming rules: 3-63 lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit.
fn check_container(c: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !c.starts_with('-')
        && !c.ends_with('-')
        && !c.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "container name {c:?} is not valid (3-63 lowercase letters, digits and single '-')"
        ))
    }
}

/// S3 bucket naming rules (the general-purpose bucket subset every S3-compatible store accepts).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let edges = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !edges(bucket.bytes().next())
        || !edges(bucket.bytes().last())
        || bucket.contains("..")
    {
        return Err(format!(
            "bucket name {bucket:?} is not valid (3-63 lowercase letters, digits, '-' and '.')"
        ));
    }
    Ok(())
}

/// How Rewind talks to S3, per job: the endpoint and the roles to assume for each side.
/// Credentials themselves come from the standard AWS chain of the process (environment, shared
/// profile, web identity / IRSA, container and instance metadata), never from the job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Options {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub source_role_arn: Option<String>,
    pub source_external_id: Option<String>,
    pub dest_role_arn: Option<String>,
    pub dest_external_id: Option<String>,
    pub role_session_name: Option<String>,
    /// Multipart upload part size in MiB (5..=5120); 0 means the default.
    pub part_size_mib: u32,
    /// Objects a shard opens ahead of the one it decodes (concurrent GETs); 0 means the default.
    pub read_ahead: u32,
}

/// Which side of a job a store serves: the source's role reads the archive, the destination's
/// role writes outputs and failed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSide {
    Source,
    Dest,
}

pub const DEFAULT_PART_SIZE_MIB: u32 = 8;
pub const DEFAULT_READ_AHEAD: u32 = 8;

impl S3Options {
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.part_size_mib != 0 && !(5..=5120).contains(&self.part_size_mib) {
            return Err(RequestError::new(
                "--s3-part-size-mib",
                "must be between 5 and 5120 (S3's multipart limits)",
            ));
        }
        if self.read_ahead > 256 {
            return Err(RequestError::new("--s3-read-ahead", "must be at most 256"));
        }
        for (field, arn) in [
            ("--source-role-arn", &self.source_role_arn),
            ("--dest-role-arn", &self.dest_role_arn),
        ] {
            if let Some(arn) = arn
                && !(arn.starts_with("arn:") && arn.contains(":role/"))
            {
                return Err(RequestError::new(
                    field,
                    format!("{arn:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
                ));
            }
        }
        for (field, id) in [
            ("--source-external-id", &self.source_external_id),
            ("--dest-external-id", &self.dest_external_id),
        ] {
            if let Some(id) = id
                && (id.starts_with("env:") || id.starts_with("file:"))
            {
                crate::secret::SecretRef::parse(id).map_err(|e| RequestError::new(field, e))?;
            }
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(RequestError::new(
                "--endpoint-url",
                format!("{url:?} must start with http:// or https://"),
            ));
        }
        if let Some(name) = &self.role_session_name
            && (name.len() < 2
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)))
        {
            return Err(RequestError::new(
                "--role-session-name",
                "must be 2-64 characters of letters, digits and +=,.@-_",
            ));
        }
        Ok(())
    }

    /// The role ARN and external id to assume for `side`, if any.
    pub fn role(&self, side: JobSide) -> (Option<&str>, Option<&str>) {
        match side {
            JobSide::Source => (
                self.source_role_arn.as_deref(),
                self.source_external_id.as_deref(),
            ),
            JobSide::Dest => (
                self.dest_role_arn.as_deref(),
                self.dest_external_id.as_deref(),
            ),
        }
    }

    pub fn part_size(&self) -> usize {
        let mib = if self.part_size_mib == 0 {
            DEFAULT_PART_SIZE_MIB
        } else {
            self.part_size_mib
        };
        mib as usize * 1024 * 1024
    }

    pub fn read_ahead(&self) -> usize {
        if self.read_ahead == 0 {
            DEFAULT_READ_AHEAD as usize
        } else {
            self.read_ahead as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId::parse("TN-Abc").unwrap()
    }

    #[test]
    fn s3_urls_and_placeholders() {
        let l = Location::parse("--source", "s3://pismo-dataplatform-{org}", &org()).unwrap();
        assert_eq!(
            l,
            Location::S3 {
                bucket: "pismo-dataplatform-tn-abc".into(),
                prefix: String::new()
            }
        );
        let l = Location::parse("--dest", "s3://out/a/{org}/b/", &org()).unwrap();
        assert_eq!(l.to_string(), "s3://out/a/tn-abc/b");
        assert_eq!(l.join("_failed").to_string(), "s3://out/a/tn-abc/b/_failed");
        assert_eq!(
            Location::parse("--dest", "/tmp/x", &org()).unwrap(),
            Location::Local("/tmp/x".into())
        );
    }

    #[test]
    fn gcs_urls() {
        let l = Location::parse("--source", "gs://archive_{org}/raw/", &org()).unwrap();
        assert_eq!(
            l,
            Location::Gcs {
                bucket: "archive_tn-abc".into(),
                prefix: "raw/".into()
            }
        );
        assert_eq!(l.to_string(), "gs://archive_tn-abc/raw");
        assert_eq!(
            l.join("_failed").to_string(),
            "gs://archive_tn-abc/raw/_failed"
        );
        assert_eq!(l.key_prefix(), Some("raw/"));
        assert!(Location::parse("--dest", "gs://my.bucket.example/x", &org()).is_ok());
        for bad in [
            "gs://",
            "gs://ab",
            "gs://Upper",
            "gs://-x-bucket",
            "gs://goog-bucket",
            "gs://ok-name/../x",
        ] {
            let e = Location::parse("--dest", bad, &org()).unwrap_err();
            assert_eq!(e.field, "--dest", "{bad}");
        }
    }

    #[test]
    fn azure_urls() {
        let l = Location::parse("--source", "az://archive-{org}/raw/", &org()).unwrap();
        assert_eq!(
            l,
            Location::Azure {
                container: "archive-tn-abc".into(),
                prefix: "raw/".into()
            }
        );
        assert_eq!(l.to_string(), "az://archive-tn-abc/raw");
        assert_eq!(
            l.join("_failed").to_string(),
            "az://archive-tn-abc/raw/_failed"
        );
        for bad in ["az://", "az://Ab", "az://a--b/x", "az://ok-name/../x"] {
            let e = Location::parse("--source", bad, &org()).unwrap_err();
            assert!(e.to_string().contains("--source"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_locations_name_the_field() {
        for bad in [
            "s3://",
            "s3://AB",
            "s3://bucket_x/p",
            "s3://b..c/p",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/{tenant}",
            "hdfs://bucket/x",
            "",
        ] {
            let e = Location::parse("--source", bad, &org()).unwrap_err();
            assert_eq!(e.field, "--source", "{bad}");
        }
    }

    #[test]
    fn options_are_checked() {
        assert!(S3Options::default().validate().is_ok());
        let bad = [
            S3Options {
                part_size_mib: 4,
                ..S3Options::default()
            },
            S3Options {
                source_role_arn: Some("role/x".into()),
                ..S3Options::default()
            },
            S3Options {
                endpoint_url: Some("localhost:9000".into()),
                ..S3Options::default()
            },
            S3Options {
                role_session_name: Some("has space".into()),
                ..S3Options::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
        assert_eq!(S3Options::default().part_size(), 8 << 20);
    }
}
