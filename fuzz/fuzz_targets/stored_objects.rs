//! Objects stored in a cluster's kvstore by the CLI and the agents and read back by the
//! agents, the apiserver and the DNS server: namespaces and pods (`plexus/objects/v1/...`),
//! Services and endpoint records. Key line, then the JSON value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_loadbalancer::endpoint::EndpointRecord;
use plexus_loadbalancer::service::Service;
use plexus_model::objects::{NamespaceObject, PodObject};

fuzz_target!(|data: &[u8]| {
    let (key, value) = plexus_fuzz::key_value(data);
    let _ = NamespaceObject::from_kv(&key, value);
    let _ = PodObject::from_kv(&key, value);
    let endpoint = serde_json::from_slice::<EndpointRecord>(value).ok();
    if let Ok(svc) = serde_json::from_slice::<Service>(value) {
        let _ = svc.key();
        let _ = svc.global_config();
        let _ = plexus_loadbalancer::cluster_service::cluster_service(
            "cluster1",
            1,
            &svc,
            endpoint.iter(),
        );
        if let Ok(mut records) = plexus_dns::ServiceRecords::new("cluster.local") {
            records.upsert(&svc);
            let name = format!(
                "{}.{}.svc.cluster.local",
                svc.metadata.name, svc.metadata.namespace
            );
            let _ = records.resolve(&name);
        }
    }
});
