//! Every integration test in one binary: one link and one build of the shared helpers instead of
//! one per file (a clean `cargo test --no-run` on 2 cores spent about 160 s compiling and
//! linking the helpers once per test file). Each file under tests/ is a module; run one with
//! `cargo test --test integration <file>::` (e.g. `backup_cli::`).
//!
//! Shared helpers: [`common`] (etcd clusters, etcdctl/etcdutl, the binary, free ports),
//! [`daemon_support`], [`deploy_support`], [`restore_util`], [`s3h`] (moto and external S3),
//! [`proxy`] and [`http_fault`] (deliberate network faults).

mod common;
mod daemon_support;
mod deploy_support;
#[path = "common/http_fault.rs"]
mod http_fault;
#[path = "common/proxy.rs"]
mod proxy;
mod restore_util;
#[path = "common/s3.rs"]
mod s3h;

mod backup_cli;
mod backup_s3;
mod cli_completion;
mod cluster_id_select;
mod config_schema;
mod daemon_backups;
mod daemon_election;
mod daemon_fencing;
mod daemon_http;
mod daemon_integrity;
mod daemon_prometheus;
mod daemon_pushgateway;
mod daemon_recovery;
mod daemon_replicas;
mod daemon_shutdown;
mod delete;
mod deploy_config_examples;
mod deploy_dashboard;
mod deploy_docs;
mod deploy_manifests;
mod deploy_workloads_e2e;
mod encryption;
mod files_backup;
mod harness;
mod layering;
mod manifest_put;
mod metrics_names;
mod multi_cluster;
mod offline_backup;
mod pitr_capture;
mod pitr_capture_bench;
mod pitr_clusters;
mod pitr_failover;
mod pitr_restore;
mod pitr_restore_bench;
mod private_files;
mod private_modes;
mod pushgateway_auth;
mod restore_bench;
mod restore_bump;
mod restore_cluster;
mod restore_drill;
mod restore_errors;
mod restore_format;
mod restore_ha;
mod restore_kubeadm;
mod restore_modes;
mod restore_store;
mod s3_payload;
mod s3_proxy;
mod s3_ranged_get;
mod snapshot_bench;
mod snapshot_corrupt;
mod snapshot_rewrite;
mod snapshot_status;
mod store_conformance;
mod store_integrity;
mod store_memory;
