//! A remote whose etcd presents a certificate we refuse: the remote's status and the JSON
//! report (what `plexus clustermesh status` reads) say which side refused it and why, as a
//! message and as a kind.
//!
//! The certificate is the one from the bug report: made with `openssl x509 -req` without
//! extensions, so X.509 v1, which etcdctl accepts and rustls does not.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use plexus_clustermesh::failure::FailureKind;
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::DriverTiming;
use plexus_clustermesh::report::MeshReport;
use plexus_kvstore::{ErrorKind, TlsReason, TlsSide};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_pki::Ca;
use plexus_test_support::openssl::{self, CaFiles};
use plexus_test_support::{ClientCert, EtcdProcess, ServerTls};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_server_certificate_shows_in_the_remote_status_with_its_reason() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("c2-ca").unwrap();
    let (ca_cert, ca_key) = ca.pem().write_to(dir.path(), "ca").unwrap();
    let ca_files = CaFiles {
        cert_file: ca_cert.clone(),
        key_file: ca_key,
    };
    let (server_cert, server_key) =
        openssl::x509_req_v1_cert(dir.path(), "server", "127.0.0.1", &ca_files).unwrap();
    let (cert_file, key_file) = ca
        .issue_client("remote")
        .unwrap()
        .write_to(dir.path(), "remote")
        .unwrap();
    let remote = ClientCert {
        ca_file: ca_cert.clone(),
        cert_file,
        key_file,
    };
    let etcd = EtcdProcess::start_tls_with(ServerTls {
        cert_file: server_cert,
        key_file: server_key,
        client_ca_file: ca_cert,
        root: remote.clone(),
    })
    .unwrap();

    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        config_dir.path().join("c2"),
        format!(
            "endpoints:\n- {}\ntrusted-ca-file: {}\ncert-file: {}\nkey-file: {}\n",
            etcd.endpoint(),
            remote.ca_file.display(),
            remote.cert_file.display(),
            remote.key_file.display()
        ),
    )
    .unwrap();
    let timing = DriverTiming {
        protocol: Timing {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(500),
            ..Timing::default()
        },
        health_interval: Duration::from_millis(500),
        health_timeout: Duration::from_secs(2),
        canary_poll: Duration::from_millis(100),
        ..DriverTiming::default()
    };
    let (tx, _rx) = mpsc::channel(64);
    let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
    let mesh = ClusterMesh::spawn(
        config_dir.path(),
        c1,
        tx,
        timing,
        Duration::from_millis(100),
    );

    let expected = FailureKind::Kvstore(ErrorKind::Tls {
        side: TlsSide::WeRefused,
        reason: TlsReason::UnsupportedVersion,
    });
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(s) = mesh.status().remotes.get("c2")
                && s.protocol.last_failure_kind.is_some()
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a failure is reported");
    assert!(!status.protocol.connected);
    assert_eq!(
        status.protocol.last_failure_kind.as_ref(),
        Some(&expected),
        "{status:?}"
    );
    let message = status.protocol.last_failure.clone().unwrap();
    assert_eq!(
        message,
        format!(
            "connect: get cilium/.heartbeat on {}: tls: we refused the server's certificate: \
             unsupported certificate version: X.509 v1 (the certificate was made without \
             extensions)",
            etcd.endpoint()
        )
    );

    // The JSON report carries the message and the kind beside it.
    let report = MeshReport::from(&mesh.status());
    let json = serde_json::to_value(&report).unwrap();
    let c2 = &json["remote-clusters"][0];
    assert_eq!(c2["last-failure"], message.as_str());
    assert_eq!(
        c2["last-failure-kind"],
        serde_json::json!({"kvstore": {"tls": {"side": "we-refused", "reason": "unsupported-version"}}})
    );
    assert_eq!(c2["status"], format!("not connected: {message}").as_str());
    let back: MeshReport = serde_json::from_value(json).unwrap();
    assert_eq!(back.remote_clusters[0].last_failure_kind, Some(expected));
}
