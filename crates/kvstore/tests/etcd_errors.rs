//! Errors that say what broke, against real etcd processes: one test per way a connection
//! fails (a certificate refused by us or by the server and why, a refused connection, a
//! timeout), and the certificate shapes users bring (Cilium's Helm chart, `openssl x509 -req`
//! without extensions).
//!
//! Each test connects the way the daemons do ([`connect_with_retry`], which checks that etcd
//! answers) and asserts the error's kind and the words a user reads.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use plexus_kvstore::{
    Error, ErrorKind, EtcdBackend, EtcdConfig, KvBackend, Retry, TlsFiles, TlsReason, TlsSide,
    connect_with_retry,
};
use plexus_pki::Ca;
use plexus_test_support::openssl::{self, CaFiles};
use plexus_test_support::{ClientCert, EtcdProcess, ServerTls};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

fn tls(cert: &ClientCert) -> TlsFiles {
    TlsFiles {
        ca_file: cert.ca_file.clone(),
        cert_file: cert.cert_file.clone(),
        key_file: cert.key_file.clone(),
    }
}

/// Connects the way the daemons do, giving up after a few attempts.
async fn connect(endpoint: &str, files: TlsFiles) -> Result<EtcdBackend, Error> {
    let mut config = EtcdConfig::new(vec![endpoint.to_string()]).with_tls(files);
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(2);
    connect_with_retry(&config, &Retry::for_at_most(Duration::from_secs(1)), "etcd").await
}

fn refused_by_us(err: &Error) -> TlsReason {
    match err.kind() {
        ErrorKind::Tls {
            side: TlsSide::WeRefused,
            reason,
        } => reason,
        other => panic!("expected our refusal of the server's certificate, got {other:?}: {err}"),
    }
}

/// A CA (from `plexus-pki`) written to `dir` as `<name>.crt` and `<name>.key`.
fn pki_ca(dir: &Path, name: &str) -> (Ca, CaFiles) {
    let ca = Ca::generate(name).unwrap();
    let (cert_file, key_file) = ca.pem().write_to(dir, name).unwrap();
    (
        ca,
        CaFiles {
            cert_file,
            key_file,
        },
    )
}

/// A client certificate of `ca` for `cn`, trusting `trust` for the server.
fn client_of(ca: &Ca, dir: &Path, cn: &str, trust: &Path) -> ClientCert {
    let (cert_file, key_file) = ca
        .issue_client(cn)
        .unwrap()
        .write_to(dir, &format!("client-{cn}"))
        .unwrap();
    ClientCert {
        ca_file: trust.to_path_buf(),
        cert_file,
        key_file,
    }
}

/// Starts etcd presenting `server` (a certificate and key), trusting client certificates of
/// `ca`; returns it with a client certificate of `ca` that trusts `ca` for the server.
fn etcd_presenting(
    dir: &Path,
    ca: &Ca,
    ca_files: &CaFiles,
    server: (&Path, &Path),
) -> (EtcdProcess, ClientCert) {
    let root = client_of(ca, dir, "root", &ca_files.cert_file);
    let etcd = EtcdProcess::start_tls_with(ServerTls {
        cert_file: server.0.to_path_buf(),
        key_file: server.1.to_path_buf(),
        client_ca_file: ca_files.cert_file.clone(),
        root: root.clone(),
    })
    .unwrap();
    (etcd, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_is_refused_by_us() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        let other = Ca::generate("someone-else").unwrap();
        let (cert, key) = other
            .issue_server("etcd", &["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap()
            .write_to(dir.path(), "server")
            .unwrap();
        let (etcd, client) = etcd_presenting(dir.path(), &ca, &ca_files, (&cert, &key));
        let err = connect(&etcd.endpoint(), tls(&client))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused_by_us(&err), TlsReason::UnknownIssuer);
        assert_eq!(
            err.to_string(),
            format!(
                "status on {}: tls: we refused the server's certificate: unknown issuer (CA)",
                etcd.endpoint()
            )
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_for_another_name_is_refused_by_us() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        let (cert, key) = ca
            .issue_server("etcd", &["etcd.elsewhere.example"], &[])
            .unwrap()
            .write_to(dir.path(), "server")
            .unwrap();
        let (etcd, client) = etcd_presenting(dir.path(), &ca, &ca_files, (&cert, &key));
        let err = connect(&etcd.endpoint(), tls(&client))
            .await
            .err()
            .expect("refused");
        match refused_by_us(&err) {
            TlsReason::NameMismatch {
                expected,
                presented,
            } => {
                assert_eq!(expected, "127.0.0.1");
                assert!(
                    presented
                        .iter()
                        .any(|n| n.contains("etcd.elsewhere.example")),
                    "{presented:?}"
                );
            }
            other => panic!("expected a name mismatch, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(
                "tls: we refused the server's certificate: name mismatch: the certificate is for"
            ) && text.ends_with("not 127.0.0.1"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused_by_us() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        // Valid for a day, years ago.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            ca.cert_pem(),
            rcgen::KeyPair::from_pem(&ca.pem().key_pem).unwrap(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_file = dir.path().join("expired.crt");
        let key_file = dir.path().join("expired.key");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let (etcd, client) = etcd_presenting(dir.path(), &ca, &ca_files, (&cert_file, &key_file));
        let err = connect(&etcd.endpoint(), tls(&client))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused_by_us(&err), TlsReason::Expired);
        assert!(
            err.to_string()
                .ends_with("tls: we refused the server's certificate: certificate expired"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_certificate_from_another_ca_is_refused_by_the_server() {
    with_timeout(async {
        let etcd = EtcdProcess::start_tls().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let other = Ca::generate("someone-else").unwrap();
        let intruder = client_of(&other, dir.path(), "root", etcd.ca_file().unwrap());
        let err = connect(&etcd.endpoint(), tls(&intruder))
            .await
            .err()
            .expect("refused");
        match err.kind() {
            ErrorKind::Tls {
                side: TlsSide::ServerRefused,
                reason,
            } => assert!(
                matches!(&reason, TlsReason::UnknownIssuer)
                    || reason == TlsReason::Certificate("bad certificate".into()),
                "{reason:?}"
            ),
            other => panic!("expected the server's refusal, got {other:?}: {err}"),
        }
        assert!(
            err.to_string()
                .contains("tls: the server refused our client certificate: "),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_a_refused_connection() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        let client = client_of(&ca, dir.path(), "root", &ca_files.cert_file);
        let port = plexus_test_support::free_port().unwrap(); // bound, noted, closed
        let endpoint = format!("https://127.0.0.1:{port}");
        let err = connect(&endpoint, tls(&client))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert_eq!(
            err.to_string(),
            format!("status on {endpoint}: connection refused")
        );
        let Error::Unavailable(failure) = &err else {
            panic!("{err:?}");
        };
        assert!(
            failure
                .causes
                .iter()
                .any(|c| c.to_lowercase().contains("refused")),
            "the cause chain is kept: {:?}",
            failure.causes
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        let client = client_of(&ca, dir.path(), "root", &ca_files.cert_file);
        // Accepts connections and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let err = connect(&endpoint, tls(&client))
            .await
            .err()
            .expect("no answer");
        silent.abort();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert_eq!(
            err.to_string(),
            format!("status on {endpoint}: timeout: no answer in time")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_as_ciliums_helm_chart_makes_them_are_accepted() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = openssl::helm_ca(dir.path(), "cilium-ca").unwrap();
        let (server_cert, server_key) = openssl::helm_signed_cert(
            dir.path(),
            "server",
            "clustermesh-apiserver.cilium.io",
            &[
                "DNS:clustermesh-apiserver.cilium.io",
                "DNS:localhost",
                "IP:127.0.0.1",
            ],
            &ca,
        )
        .unwrap();
        let (cert_file, key_file) =
            openssl::helm_signed_cert(dir.path(), "remote", "remote", &[], &ca).unwrap();
        let root = ClientCert {
            ca_file: ca.cert_file.clone(),
            cert_file,
            key_file,
        };
        let etcd = EtcdProcess::start_tls_with(ServerTls {
            cert_file: server_cert,
            key_file: server_key,
            client_ca_file: ca.cert_file.clone(),
            root: root.clone(),
        })
        .unwrap();
        let etcd_client = connect(&etcd.endpoint(), tls(&root)).await.unwrap();
        etcd_client.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(etcd_client.get("k").await.unwrap().unwrap().value, b"v");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_made_by_openssl_x509_req_without_extensions_is_refused_with_that_reason()
 {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = pki_ca(dir.path(), "ours");
        let (cert, key) =
            openssl::x509_req_v1_cert(dir.path(), "server", "127.0.0.1", &ca_files).unwrap();
        let (etcd, client) = etcd_presenting(dir.path(), &ca, &ca_files, (&cert, &key));
        // etcdctl (Go) accepts it: etcd started and answered its health check.
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        let err = connect(&etcd.endpoint(), tls(&client))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused_by_us(&err), TlsReason::UnsupportedVersion);
        assert!(
            err.to_string().ends_with(
                "tls: we refused the server's certificate: unsupported certificate version: \
                 X.509 v1 (the certificate was made without extensions)"
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_made_by_openssl_x509_req_without_extensions_is_refused_with_that_reason()
 {
    with_timeout(async {
        let etcd = EtcdProcess::start_tls().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = etcd.ca().unwrap().pem().write_to(dir.path(), "ca").unwrap();
        let ca = CaFiles {
            cert_file,
            key_file,
        };
        let (cert_file, key_file) =
            openssl::x509_req_v1_cert(dir.path(), "client", "root", &ca).unwrap();
        let client = ClientCert {
            ca_file: etcd.ca_file().unwrap().to_path_buf(),
            cert_file: cert_file.clone(),
            key_file,
        };
        // rustls will not even load it as our identity: the error names the file and why.
        let err = connect(&etcd.endpoint(), tls(&client))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "kvstore configuration: cannot use the client certificate {}: unsupported \
                 certificate version: X.509 v1 (the certificate was made without extensions)",
                cert_file.display()
            )
        );
    })
    .await;
}
