//! Identifiers. Each is validated on construction so it is always a safe path segment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::range::Hour;

/// Checks that `value` can be used as one path segment: non-empty, at most 128 bytes, only
/// ASCII letters, digits, `-`, `_` and `.`, and not made of dots only (`.`, `..`).
pub fn check_segment(field: &'static str, value: &str) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::new(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(RequestError::new(field, "must be at most 128 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(RequestError::new(
            field,
            format!("{value:?} contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"),
        ));
    }
    if value.chars().all(|c| c == '.') {
        return Err(RequestError::new(
            field,
            format!("{value:?} is not a valid path segment"),
        ));
    }
    Ok(())
}

/// A tenant (organisation) id, e.g. `TN-0a1b` or a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl OrgId {
    pub fn parse(value: &str) -> Result<OrgId, RequestError> {
        check_segment("--org", value)?;
        Ok(OrgId(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = RequestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        OrgId::parse(&value)
    }
}

impl From<OrgId> for String {
    fn from(value: OrgId) -> Self {
        value.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job (execution) id: `YYYYMMDD-HHMMSS-xxxx`, sortable by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A new id for a job created now. The suffix mixes the clock's nanoseconds, the process id
    /// and a process-wide counter, so two jobs created in the same second differ.
    pub fn generate() -> JobId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = chrono::Utc::now();
        let mut x = now.timestamp_subsec_nanos() as u64
            ^ ((std::process::id() as u64) << 32)
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64 finaliser: spread the bits.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        JobId(format!(
            "{}-{:04x}",
            now.format("%Y%m%d-%H%M%S"),
            x & 0xffff
        ))
    }

    pub fn parse(value: &str) -> Result<JobId, RequestError> {
        check_segment("job id", value)?;
        Ok(JobId(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = RequestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        JobId::parse(&value)
    }
}

impl From<JobId> for String {
    fn from(value: JobId) -> Self {
        value.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One shard: one hour of a job's source, named (and serialised as) `YYYYMMDDHH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardId(pub Hour);

impl ShardId {
    pub fn hour(&self) -> Hour {
        self.0
    }

    pub fn parse(s: &str) -> Result<ShardId, RequestError> {
        let bad = || RequestError::new("shard id", format!("{s:?} is not YYYYMMDDHH"));
        if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let t = chrono::NaiveDateTime::parse_from_str(&format!("{s}0000"), "%Y%m%d%H%M%S")
            .map_err(|_| bad())?;
        Ok(ShardId(Hour::from_datetime(t.and_utc())))
    }
}

impl TryFrom<String> for ShardId {
    type Error = RequestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ShardId::parse(&value)
    }
}

impl From<ShardId> for String {
    fn from(value: ShardId) -> Self {
        value.to_string()
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.compact())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_must_be_safe_segments() {
        assert!(OrgId::parse("TN-4f2a_9.x").is_ok());
        for bad in ["", "..", ".", "a/b", "../etc", "a\\b", "a b", "é"] {
            let err = OrgId::parse(bad).unwrap_err();
            assert_eq!(err.field, "--org", "{bad}");
        }
    }

    #[test]
    fn job_ids_are_unique_and_sortable() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), "20240401-120455-7f3a".len());
        assert!(JobId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn shard_ids_round_trip_as_text() {
        let id = ShardId::parse("2024022923").unwrap();
        assert_eq!(id.to_string(), "2024022923");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"2024022923\"");
        assert!(ShardId::parse("2023023012").is_err());
        assert!(ShardId::parse("20230230").is_err());
    }
}
