//! Every integration test in one binary: the shared helpers are compiled and linked once, not
//! once per file (the 57 test crates took about 320 CPU s to build on 2 cores, this one about
//! 105; a clean `cargo test --no-run` went from 7:12 to 5:41). Each file under tests/ is a
//! module; run one with `cargo test --test integration <file>::` (e.g. `backup_cli::`).
//! Tests share the process: one that reads or changes process-wide state (the library's
//! metrics registry, the peak RSS) runs alone in a child process (`common::in_own_process`).
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
mod hostile_store;
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
