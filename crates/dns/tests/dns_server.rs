//! The DNS server on loopback UDP and TCP, asked by a real DNS client (hickory's wire format
//! over plain sockets): fed from the in-memory kvstore, and, as the `plexus-dns` binary, from
//! a real etcd with mTLS; and the binary serving a zone file (`--zone-file`) that the test
//! rewrites.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use plexus_dns::{ClusterDns, DnsServer, ServiceRecords, spawn_follow_services};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, MemoryBackend, TlsFiles};
use plexus_test_support::{EtcdProcess, free_port, workspace_bin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

/// One UDP question; `None` when no answer comes within a second.
async fn try_ask_udp(server: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = query(name, t);
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, q.metadata.id);
    Some(answer)
}

async fn ask_udp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    try_ask_udp(server, name, t)
        .await
        .expect("no UDP answer within 1 s")
}

async fn ask_tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let q = query(name, t).to_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut len))
        .await
        .expect("no TCP answer within 2 s")
        .unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Asks over UDP until `name` resolves to `want` (an empty `want`: until NXDOMAIN).
async fn until_udp(server: SocketAddr, name: &str, want: &[Ipv4Addr]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = try_ask_udp(server, name, RecordType::A)
            .await
            .unwrap_or_else(|| Message::error_msg(0, OpCode::Query, ResponseCode::Unknown(0xfff)));
        let ok = if want.is_empty() {
            m.metadata.response_code == ResponseCode::NXDomain
        } else {
            m.metadata.response_code == ResponseCode::NoError && addresses(&m) == want
        };
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: last answer {:?} {:?}, want {want:?}",
            m.metadata.response_code,
            addresses(&m)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service_json(ns: &str, name: &str, ip: &str) -> Vec<u8> {
    format!(r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#)
        .into_bytes()
}

#[tokio::test]
async fn answers_a_nxdomain_nodata_and_refused_over_udp_and_tcp() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let backend = Arc::new(MemoryBackend::new());
        backend
            .put(
                "plexus/objects/v1/services/default/rebel-base",
                service_json("default", "rebel-base", "10.11.0.20"),
                None,
            )
            .await
            .unwrap();
        let records = Arc::new(RwLock::new(ServiceRecords::new("cluster.local").unwrap()));
        let follow = spawn_follow_services(backend.clone(), records.clone());
        let server = DnsServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            ClusterDns::new(records, 5).unwrap(),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let name = "rebel-base.default.svc.cluster.local.";
        let ip: Ipv4Addr = "10.11.0.20".parse().unwrap();
        until_udp(addr, name, &[ip]).await;

        let m = ask_udp(addr, name, RecordType::A).await;
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers[0].ttl, 5);
        let m = ask_tcp(addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![ip]);

        for m in [
            ask_udp(addr, "x-wing.default.svc.cluster.local.", RecordType::A).await,
            ask_tcp(addr, "x-wing.default.svc.cluster.local.", RecordType::A).await,
        ] {
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
            assert!(m.answers.is_empty());
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
        let m = ask_udp(addr, name, RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = ask_udp(addr, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        // A new service appears, a deleted one disappears.
        backend
            .put(
                "plexus/objects/v1/services/empire/death-star",
                service_json("empire", "death-star", "10.11.0.21"),
                None,
            )
            .await
            .unwrap();
        until_udp(
            addr,
            "DEATH-STAR.empire.svc.cluster.local",
            &["10.11.0.21".parse().unwrap()],
        )
        .await;
        backend
            .delete("plexus/objects/v1/services/default/rebel-base")
            .await
            .unwrap();
        until_udp(addr, name, &[]).await;

        follow.abort();
        server.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// Kills the child on drop (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_resolves_services_written_to_a_real_etcd_with_mtls() {
    plexus_kvstore::install_crypto_provider();
    let etcd = EtcdProcess::start_tls().unwrap();
    let client = etcd.root_client().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plexus-dns.log");
    let port = free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _dns = Child(
        std::process::Command::new(workspace_bin("plexus-dns"))
            .arg(format!("--etcd-endpoints={}", etcd.endpoint()))
            .arg(format!("--etcd-ca={}", client.ca_file.display()))
            .arg(format!("--etcd-cert={}", client.cert_file.display()))
            .arg(format!("--etcd-key={}", client.key_file.display()))
            .arg(format!("--listen={addr}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        let admin =
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]).with_tls(TlsFiles {
                ca_file: client.ca_file.clone(),
                cert_file: client.cert_file.clone(),
                key_file: client.key_file.clone(),
            }))
            .await
            .unwrap();
        // The server is up (it listens before it has synced) and answers once synced.
        let name = "web.shop.svc.cluster.local";
        until_udp(addr, name, &[]).await;
        admin
            .put(
                "plexus/objects/v1/services/shop/web",
                service_json("shop", "web", "10.11.0.40"),
                None,
            )
            .await
            .unwrap();
        until_udp(addr, name, &["10.11.0.40".parse().unwrap()]).await;
        let m = ask_tcp(addr, name, RecordType::A).await;
        assert_eq!(
            addresses(&m),
            vec!["10.11.0.40".parse::<Ipv4Addr>().unwrap()]
        );
        admin
            .delete("plexus/objects/v1/services/shop/web")
            .await
            .unwrap();
        until_udp(addr, name, &[]).await;
    })
    .await;
    if result.is_err() {
        panic!(
            "test timed out; plexus-dns log:\n{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_zone_file_and_follows_its_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("example.test.zone");
    std::fs::write(&zone, "$TTL 30\nwww IN A 192.0.2.10\nalias IN CNAME www\n").unwrap();
    let log = dir.path().join("plexus-dns.log");
    let port = free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _dns = Child(
        std::process::Command::new(workspace_bin("plexus-dns"))
            .arg(format!("--zone-file={}", zone.display()))
            .arg("--domain=example.test")
            .arg(format!("--listen={addr}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        until_udp(addr, "www.example.test.", &["192.0.2.10".parse().unwrap()]).await;
        let m = ask_tcp(addr, "alias.example.test.", RecordType::A).await;
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(
            addresses(&m),
            vec!["192.0.2.10".parse::<Ipv4Addr>().unwrap()]
        );
        let m = ask_udp(addr, "other.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // Rewritten through a temporary file: the next query sees it.
        let tmp = dir.path().join("zone.tmp");
        std::fs::write(&tmp, "$TTL 30\nwww IN A 192.0.2.11\n").unwrap();
        std::fs::rename(&tmp, &zone).unwrap();
        until_udp(addr, "www.example.test.", &["192.0.2.11".parse().unwrap()]).await;
        until_udp(addr, "alias.example.test.", &[]).await;
    })
    .await;
    if result.is_err() {
        panic!(
            "test timed out; plexus-dns log:\n{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
    }
}
