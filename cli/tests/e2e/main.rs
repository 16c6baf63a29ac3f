//! Rewind's end-to-end tests through its binaries, in one test binary: each module used to be a
//! binary of its own, and every one of them linked the whole dependency tree (AWS SDK,
//! librdkafka, Arrow, tonic) — 100 MB or more each, most of CI's disk and link time.

mod azure;
mod changes;
mod cluster;
mod common;
mod deploy_static;
mod distributed;
mod flows;
mod gcs;
mod guard;
mod ingest;
mod kafka;
mod kinesis;
mod pubsub;
mod run;
mod s3;
mod secure;
mod trace;
