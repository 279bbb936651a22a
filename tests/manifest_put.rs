//! The manifest is written last, and a failed manifest PUT never leaves a manifest without
//! data: when the store applied the PUT but its response was lost (a 500 after the write),
//! the backup is complete and kept; when the PUT never reached the store, the data object is
//! removed and the run fails. Real etcd and moto on loopback, faults injected by an HTTP proxy.
use crate::http_fault;

use crate::common::*;
use crate::http_fault::Fault;
use crate::s3h::S3Server;

#[test]
fn lost_manifest_response_keeps_the_backup_and_a_refused_put_leaves_nothing() {
    let s3 = S3Server::start_moto(false);
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "/registry/secrets/default/s1", "secret-value"]);
    let direct = s3.storage_config();

    // 1. Every manifest PUT is applied by the store, and answered with a 500.
    let lose = http_fault::start(&s3.endpoint, |method, path| {
        if method == "PUT" && path.split('?').next().unwrap().ends_with(".json") {
            Fault::LoseResponse(500)
        } else {
            Fault::Forward
        }
    });
    let mut storage = direct.clone();
    storage.s3.endpoint = Some(lose.url.clone());
    let cfg = etcd.config_file_with_storage(&storage);
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(lose.faults.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(stderr.contains("this manifest is stored"), "{stderr}");
    let keys = store_keys(&direct);
    assert_eq!(keys.len(), 2, "data and manifest both kept: {keys:?}");
    let direct_cfg = etcd.config_file_with_storage(&direct);
    lifeboat_ok(lifeboat().args(["--config", direct_cfg.to_str().unwrap(), "verify", "latest"]));

    // 2. Every manifest PUT is refused before it reaches the store: the run fails, the new
    //    data object is removed, the first backup is untouched.
    let refuse = http_fault::start(&s3.endpoint, |method, path| {
        if method == "PUT" && path.split('?').next().unwrap().ends_with(".json") {
            Fault::Refuse(500)
        } else {
            Fault::Forward
        }
    });
    storage.s3.endpoint = Some(refuse.url.clone());
    let cfg = etcd.config_file_with_storage(&storage);
    etcd.etcdctl_ok(&["put", "/registry/secrets/default/s2", "another"]);
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a backup without its manifest exited 0"
    );
    assert_eq!(
        store_keys(&direct),
        keys,
        "the failed run left objects behind"
    );
}
