//! DNS queries to the cluster DNS server (`ClusterDns`) and to the zone-file server (`Zone`):
//! every question of a message that hickory decodes, answered from a fixed table.
#![no_main]
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use plexus_dns::{ClusterDns, ServiceRecords, Zone};
use plexus_loadbalancer::service::{Metadata, Service, ServiceSpec};

const ZONE: &str = "$ORIGIN example.test.
$TTL 60
@     IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 30
www   IN A 192.0.2.10
alias IN CNAME www
loop1 IN CNAME loop2
loop2 IN CNAME loop1
txt   IN TXT \"hello\"
";

fn service(namespace: &str, name: &str, ip: &str) -> Service {
    Service {
        metadata: Metadata {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        },
        spec: ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..ServiceSpec::default()
        },
    }
}

static SERVERS: LazyLock<(ClusterDns, Zone)> = LazyLock::new(|| {
    let mut records = ServiceRecords::new("cluster.local").unwrap_or_else(|e| panic!("{e}"));
    records.upsert(&service("default", "web", "10.96.0.20"));
    records.upsert(&service("kube-system", "kube-dns", "10.96.0.10"));
    records.set_synced();
    let cluster =
        ClusterDns::new(Arc::new(RwLock::new(records)), 30).unwrap_or_else(|e| panic!("{e}"));
    let zone = Zone::parse(ZONE, "example.test.", "fuzz.zone").unwrap_or_else(|e| panic!("{e}"));
    (cluster, zone)
});

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_vec(data) else {
        return;
    };
    let (cluster, zone) = &*SERVERS;
    for q in &msg.queries {
        let _ = cluster.respond(q.name(), q.query_type(), q.query_class());
        let _ = zone.respond(q.name(), q.query_type(), q.query_class());
    }
});
