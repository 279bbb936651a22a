//! The harness itself: real etcd 3.4 and 3.5 start with TLS and as a cluster.
use crate::common::*;

#[test]
fn etcd_34_tls_single_member_serves_puts() {
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_4,
        tls: true,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "a", "1"]);
    assert!(etcd.etcdctl_ok(&["get", "a"]).contains('1'));
}

#[test]
fn etcd_35_three_members_form_one_cluster() {
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        members: 3,
        ..Default::default()
    });
    let list = etcd.etcdctl_ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
}
