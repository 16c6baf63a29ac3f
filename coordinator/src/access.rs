//! Who may read and write where: the scope of a caller's token. A scoped token names its
//! tenants (org ids) and the location prefixes its jobs may read (sources) and write
//! (destinations, failed and unrecoverable outputs). A job outside them is refused
//! (`PERMISSION_DENIED`); jobs of other tenants are invisible to it (`NOT_FOUND`, left out of
//! listings). Without scoped tokens every caller has [`Scope::all`].

use std::path::{Component, Path};

use rewind_common::{JobSpec, Location};

/// What one caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Who the caller is (a name from the tokens file; never the token).
    pub subject: String,
    /// Org ids it may act on; `None`: every tenant.
    pub tenants: Option<Vec<String>>,
    /// Where its jobs may read; `None`: anywhere the workers can reach.
    pub sources: Option<Vec<Location>>,
    /// Where its jobs may write.
    pub destinations: Option<Vec<Location>>,
}

impl Scope {
    /// Everything (no scoped tokens configured, or the one `--auth-token-file` token).
    pub fn all(subject: &str) -> Scope {
        Scope {
            subject: subject.to_string(),
            tenants: None,
            sources: None,
            destinations: None,
        }
    }

    /// Whether jobs of `org` are this caller's to see and act on.
    pub fn sees(&self, org: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == "*" || x == org))
    }

    /// Whether this caller may run `spec`: its tenant, and every place it reads or writes.
    pub fn allows(&self, spec: &JobSpec) -> Result<(), String> {
        let org = spec.org.as_str();
        if !self.sees(org) {
            return Err(format!("{} may not act for org {org}", self.subject));
        }
        let p = &spec.places;
        let check = |what: &str, loc: &Location, allowed: &Option<Vec<Location>>| match allowed {
            None => Ok(()),
            Some(list) if list.iter().any(|a| within(loc, a)) => Ok(()),
            Some(_) => Err(format!("{} may not use {loc} as the {what}", self.subject)),
        };
        check("source", &p.source, &self.sources)?;
        check("destination", &p.dest, &self.destinations)?;
        check("failed output", &p.failed, &self.destinations)?;
        check("unrecoverable output", &p.unrecoverable, &self.destinations)?;
        // A distributed ingest publishes into the trusted zone and moves the landing zone's
        // objects: both are written.
        if let Some(t) = &spec.ingest_to {
            for (what, url) in [("trusted zone", &t.trusted), ("landing zone", &t.landing)] {
                let loc = Location::parse("--dest", url, &spec.org).map_err(|e| e.to_string())?;
                check(what, &loc, &self.destinations)?;
            }
        }
        // A guarded replay clears (moves and deletes) its dependent sinks: they are written.
        if let Some(g) = &spec.guard {
            for s in &g.guard.sources {
                if let Some(loc) = s.location() {
                    check("guarded sink", &loc, &self.destinations)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether `loc` lies below `allowed`. Local paths must be absolute and free of `..` (compared
/// by components, not by characters: `/data/a` does not contain `/data/ab`); S3, GCS and Azure
/// locations by bucket (container) and key prefix on `/` boundaries.
pub fn within(loc: &Location, allowed: &Location) -> bool {
    match (loc, allowed) {
        (Location::Local(p), Location::Local(a)) => {
            clean_absolute(p) && clean_absolute(a) && p.starts_with(a)
        }
        _ if loc.same_bucket(allowed) => match (loc.key_prefix(), allowed.key_prefix()) {
            (Some(prefix), Some(ap)) => prefix.starts_with(ap),
            _ => false,
        },
        _ => false,
    }
}

fn clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::{JobId, JobRequest};

    fn loc(s: &str) -> Location {
        Location::parse("--dest", s, &rewind_common::OrgId::parse("TN-a").unwrap()).unwrap()
    }

    #[test]
    fn prefixes_hold_by_component_and_boundary() {
        assert!(within(&loc("/data/a/out"), &loc("/data/a")));
        assert!(within(&loc("/data/a"), &loc("/data/a")));
        assert!(!within(&loc("/data/ab"), &loc("/data/a")));
        assert!(!within(&loc("/data/a/../b"), &loc("/data/a")));
        assert!(!within(&loc("data/a"), &loc("/data/a")), "relative paths");
        assert!(within(&loc("s3://lake/a/x"), &loc("s3://lake/a")));
        assert!(!within(&loc("s3://lake/ab"), &loc("s3://lake/a")));
        assert!(!within(&loc("s3://lake2/a"), &loc("s3://lake/a")));
        assert!(within(&loc("s3://lake/anything"), &loc("s3://lake")));
        assert!(!within(&loc("/lake/a"), &loc("s3://lake/a")));
    }

    #[test]
    fn a_scope_checks_tenant_and_every_place() {
        let scope = Scope {
            subject: "team-a".into(),
            tenants: Some(vec!["TN-a".into()]),
            sources: Some(vec![loc("/archive/a")]),
            destinations: Some(vec![loc("/out/a")]),
        };
        let spec = |org: &str, src: &str, dest: &str, failed: Option<&str>| {
            JobRequest {
                source: src.into(),
                org: org.into(),
                start: "2024-01-01".into(),
                end: "2024-01-01".into(),
                dest: dest.into(),
                failed_output: failed.map(String::from),
                ..JobRequest::default()
            }
            .validate(JobId::generate())
            .unwrap()
        };
        scope
            .allows(&spec("TN-a", "/archive/a/x", "/out/a/y", None))
            .unwrap();
        let e = scope
            .allows(&spec("TN-b", "/archive/a", "/out/a", None))
            .unwrap_err();
        assert!(e.contains("org TN-b"), "{e}");
        let e = scope
            .allows(&spec("TN-a", "/archive/b", "/out/a", None))
            .unwrap_err();
        assert!(e.contains("source"), "{e}");
        let e = scope
            .allows(&spec("TN-a", "/archive/a", "/out/a", Some("/tmp/f")))
            .unwrap_err();
        assert!(e.contains("failed output"), "{e}");
        assert!(scope.sees("TN-a") && !scope.sees("TN-b"));
        assert!(Scope::all("admin").sees("TN-b"));
    }

    /// A guarded replay clears its dependent sinks: each must lie in the token's destinations,
    /// or the job is refused before anything is touched.
    #[test]
    fn guarded_sinks_are_places_written() {
        use rewind_common::guard::{DEFAULT_DAY_LAYOUT, Dependent, Guard, GuardRequest};
        let scope = Scope {
            subject: "team-a".into(),
            tenants: None,
            sources: None,
            destinations: Some(vec![loc("/out/a"), loc("s3://lake/a")]),
        };
        let sink = |url: &str| {
            let whole = loc(url);
            let (root, prefix) = match &whole {
                Location::S3 { bucket, prefix } => (
                    Location::S3 {
                        bucket: bucket.clone(),
                        prefix: String::new(),
                    },
                    prefix.clone(),
                ),
                _ => (whole.clone(), String::new()),
            };
            Dependent::Store {
                name: whole.to_string(),
                root,
                prefix,
                layout: DEFAULT_DAY_LAYOUT.into(),
            }
        };
        let spec = |sinks: Vec<Dependent>| {
            let mut r = JobRequest {
                source: "/archive".into(),
                org: "TN-a".into(),
                start: "2024-01-01".into(),
                end: "2024-01-01".into(),
                dest: "/out/a/m".into(),
                sink: Some("kafka".into()),
                brokers: Some("127.0.0.1:9092".into()),
                topic: Some("t".into()),
                ..JobRequest::default()
            };
            r.guard = Some(GuardRequest {
                guard: Guard {
                    stream: "s".into(),
                    topic: "t".into(),
                    sources: sinks,
                },
                keep_backups: false,
                notify: vec![],
                notify_format: String::new(),
                druid_url: None,
                druid_auth: None,
            });
            r.validate(JobId::generate()).unwrap()
        };
        scope
            .allows(&spec(vec![sink("/out/a/raw"), sink("s3://lake/a/unique")]))
            .unwrap();
        let e = scope
            .allows(&spec(vec![sink("/out/a/raw"), sink("s3://lake/b/unique")]))
            .unwrap_err();
        assert!(
            e.contains("guarded sink") && e.contains("s3://lake/b/unique"),
            "{e}"
        );
    }
}
